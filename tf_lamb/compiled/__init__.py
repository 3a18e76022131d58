"""LAMB's step for all variables at once, as one program per device.

`tf_lamb.algorithm` says what a step computes; this package says how it
runs fast and correctly:

- across replicas: gradients are summed before any norm is taken, then one
  `strategy.extended.update` runs the program on each device's copy
  (`apply`);
- as one XLA program (or one graph) for all variables, in the form the
  device's compiler makes fast (`forms.FORMS`): a CPU streams each variable
  once per norm with matvec norms (`chained`); a GPU launches a kernel per
  fusion, so there every norm of every variable is taken in one pass that
  writes nothing, small variables stacked, before one writing pass per
  variable (`grouped`); a TPU's compiler stages operands through its
  vector memory, so there the gradients are checked a shape at a time and
  each variable is updated in turn, fenced from the next (`sequenced`);
- with the all-or-nothing rule for inf/NaN gradients, gradient
  accumulation and EMA, each written so that XLA updates variables in place.

Modules:

  state      Settings, StepState, VariableState: what a program bakes in,
             what it reads and writes
  forms      the form of each kind of device and the pass of each form
  apply      the replica sum, the program, accumulation and EMA
  shared     what every form shares: casts, step values, clipping, the
             inf/NaN selects, the trust ratios kept
  chained    the CPU's form (and every program outside XLA)
  grouped    the GPU's form
  sequenced  the TPU's form
  numerics   overflow-safe sums of squares, norms, the optimization barrier

Public (`__all__`), for `tf_lamb.lamb`, `train/` and `benchmarks/`:

  apply_on_every_device(strategy, grads, hyperparameters, anchor,
                        run_program)      one call of the optimizer
  program(state_of_device, settings)      the step as a tf.function
  Settings, StepState, VariableState      its inputs
  FORMS                                   {device kind: form}
  traced_for(kind)                        a context: programs traced inside
                                          take the form of `kind` ("cpu",
                                          "gpu", "tpu"), for export and
                                          compilation for another device
  device_kind(device), norms_as_matvec(device, jit_compile),
  update_form(device, jit_compile, dtypes)   the choices a program bakes in
  sums_of_squares, gradient_sums, grouped_sums, gradient_sums_by_shape
                                          the forms' sums, for tests
  RATIOS_PER_STACK, SMALL_VARIABLE_ELEMENTS, PARTIAL_SUMS,
  MATVEC_NORMS_ON_CPU                     the forms' constants (read them
                                          here; to change one, set it in its
                                          module: `grouped`, `sequenced`,
                                          `forms`)

Measurements behind each choice: docs/optimizer_performance.md.
"""

from tf_lamb.compiled.apply import apply_on_every_device, program
from tf_lamb.compiled.forms import (FORMS, MATVEC_NORMS_ON_CPU, device_kind,
                                    norms_as_matvec, traced_for, update_form)
from tf_lamb.compiled.grouped import (PARTIAL_SUMS, SMALL_VARIABLE_ELEMENTS,
                                      grouped_sums)
from tf_lamb.compiled.numerics import gradient_sums, sums_of_squares
from tf_lamb.compiled.sequenced import (RATIOS_PER_STACK,
                                        gradient_sums_by_shape)
from tf_lamb.compiled.state import Settings, StepState, VariableState

__all__ = [
    "FORMS", "MATVEC_NORMS_ON_CPU", "PARTIAL_SUMS", "RATIOS_PER_STACK",
    "SMALL_VARIABLE_ELEMENTS", "Settings", "StepState", "VariableState",
    "apply_on_every_device", "device_kind", "gradient_sums",
    "gradient_sums_by_shape", "grouped_sums", "norms_as_matvec", "program",
    "sums_of_squares", "traced_for", "update_form",
]
