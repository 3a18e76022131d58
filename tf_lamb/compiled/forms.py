"""Which form of the update a program takes: by the kind of device it runs
on (`FORMS`, `update_form`), and the pass of each form (`PASSES`).

  "chained"    each variable's norms and update one after the other
               (`chained`); a CPU's, with matvec norms
               (`numerics.sums_of_squares`)
  "grouped"    all norms first, in few kernels, then one writing pass per
               variable (`grouped`); a GPU's
  "sequenced"  chained with each variable finished before the next one
               starts, after an inf/NaN check of a kernel per shape
               (`sequenced`); a TPU's

Measured with each target's compiler (benchmarks.compile_for,
docs/optimizer_performance.md): grouped launches a third of keras Lamb's
kernels on an H100; on a TPU, whose compiler stages operands through its vector
memory, the stacks it builds cost traffic, and the sequence keeps the
staging lowest.
"""

import contextlib

import tensorflow as tf

from tf_lamb import framework
from tf_lamb.compiled import chained, grouped, sequenced

FORMS = {"cpu": "chained", "gpu": "grouped", "tpu": "sequenced"}

# update(grads, hyperparameters, update_count, state, settings) -> finite,
# by form (Settings.form).
PASSES = {"chained": chained.update, "grouped": grouped.update,
          "sequenced": sequenced.update}

# XLA:CPU fuses the squares into the norms' matvec from TensorFlow 2.21 on;
# 2.16's does not (2.17-2.20 unmeasured): plain reductions there.
MATVEC_NORMS_ON_CPU = framework.major_minor(tf.__version__) >= (2, 21)

_traced_for = []  # kinds given to `traced_for`, innermost last


@contextlib.contextmanager
def traced_for(kind):
    """Programs traced inside take the form of `kind` ("cpu", "gpu" or
    "tpu") wherever their variables are: for a program exported here and
    compiled for another device (benchmarks.export_hlo, --compile_for)."""
    if kind not in FORMS:
        raise ValueError(f"Unknown device kind {kind!r}; expected one of "
                         f"{sorted(FORMS)}")
    _traced_for.append(kind)
    try:
        yield
    finally:
        _traced_for.pop()


def device_kind(device):
    """"cpu", "gpu" or "tpu": the kind of device a variable placed on
    `device` (a device string) lives on, or the one `traced_for` names."""
    if _traced_for:
        return _traced_for[-1]
    device_type = (tf.DeviceSpec.from_string(device or "").device_type
                   or "").upper()
    if not device_type:
        for kind in ("TPU", "GPU"):
            if tf.config.list_logical_devices(kind):
                device_type = kind
                break
    return {"TPU": "tpu", "GPU": "gpu"}.get(device_type, "cpu")


def norms_as_matvec(device, jit_compile):
    """The form of the norms for a program on `device` (sums_of_squares)."""
    return (jit_compile and device_kind(device) == "cpu"
            and MATVEC_NORMS_ON_CPU)


def update_form(device, jit_compile, dtypes=()):
    """The form of the update for a program on `device` (FORMS) for
    variables of `dtypes`; outside XLA, "chained", whose tf.cond skips a
    non-finite step, and so with float64 variables, which the grouped
    form's float32 stacks would not hold."""
    if not jit_compile or any(tf.as_dtype(d) == tf.float64 for d in dtypes):
        return "chained"
    return FORMS[device_kind(device)]
