r"""Writes the optimizer steps that `optimizer_step` times as XLA programs.

A machine may have an accelerator but no TensorFlow for it (the GPU build
and its CUDA libraries are gigabytes; the device may have no network). The
programs XLA compiles for the step are independent of TensorFlow's runtime,
though, so this writes them as serialized HloModuleProtos and
`benchmarks.run_hlo` compiles and times them with any XLA runtime at hand
(jaxlib's), on whatever device it has.

Each candidate is `apply_gradients` inside `tf.function(jit_compile=True)`,
as in a compiled train step, over BERT's variable shapes (the same variables
and gradients as `optimizer_step`):

  tf_lamb         tf_lamb.Lamb(), its step inlined into the program
  keras_lamb_xla  keras.optimizers.Lamb(), the baseline of optimizer_step

both with their default arguments, or with `--config=pretraining` with
those train.pretrain uses (weight decay 0.01, LayerNorm and biases
excluded, global_clipnorm=1.0).

`--device_kind` says where the programs will run: tf_lamb picks the form of
its step by device (`tf_lamb.compiled.FORMS`: matvec norms on a CPU, all
sums first in few kernels on a GPU), and the export runs on this machine's
CPU. `benchmarks.compile_for` compiles the programs for a GPU or TPU that
is not here.

With `--values` (small models only) the program's inputs and TensorFlow's
own results after one step are written too, so that `run_hlo` can check
that the device computes what TensorFlow computes here.

  python -m benchmarks.export_hlo --model=base --out_dir=/tmp/hlo/base
  python -m benchmarks.run_hlo /tmp/hlo/base
"""

import argparse
import gc
import json
import os
import sys

from benchmarks import _common
from benchmarks import optimizer_step
from train.plan.accelerators import without_copies

CANDIDATES = ("tf_lamb", "keras_lamb_xla")
MANIFEST = "manifest.json"
# Inputs and results of a step travel as float32/int64 arrays: small models.
MAX_VALUES_PARAMETERS = 5_000_000


def _compiled_step(name, variables, grads, config):
    import tensorflow as tf
    kind = "tf_lamb_eager" if name == "tf_lamb" else name
    optimizer, _ = optimizer_step.make_candidate(kind, variables, grads,
                                                 config=config)
    return tf.function(
        lambda: optimizer.apply_gradients(zip(grads, variables)),
        jit_compile=True, autograph=False)


def _parameter_values(concrete):
    """The current value of every input of the program, in HLO order: the
    function takes no arguments, so its inputs are its captures, and a
    captured resource is the handle of one of its variables."""
    variables = {id(v.handle): v for v in concrete.variables}
    values = []
    for captured in concrete.captured_inputs:
        variable = variables.get(id(captured))
        value = captured if variable is None else variable.read_value()
        value = value.numpy()
        if value.dtype.kind == "V" or value.dtype.name == "bfloat16":
            value = value.astype("float32")  # npz has no bfloat16; exact
        values.append(value)
    return values


def export(name, variables, grads, out_dir, device_kind, with_values,
           config="default"):
    """Writes `name`'s program (and, with_values, its check values);
    returns the manifest entry."""
    import numpy as np
    from tf_lamb import compiled

    # Lamb decides its form when it traces its program, from the device of
    # the variables; here they live on the CPU whatever the target.
    with compiled.traced_for(device_kind):
        step = _compiled_step(name, variables, grads, config)
        concrete = step.get_concrete_function()
        proto = without_copies(
            step.experimental_get_compiler_ir()(stage="hlo_serialized"))
        hlo_file = f"{name}.hlo.pb"
        with open(os.path.join(out_dir, hlo_file), "wb") as f:
            f.write(proto)
        entry = {"hlo": hlo_file, "hlo_bytes": len(proto),
                 "program_inputs": len(concrete.captured_inputs)}
        if with_values:
            before = _parameter_values(concrete)
            step()
            after = _parameter_values(concrete)
            arrays = {f"before_{i}": v for i, v in enumerate(before)}
            arrays.update({f"after_{i}": v for i, v in enumerate(after)})
            entry["values"] = f"{name}.values.npz"
            np.savez_compressed(os.path.join(out_dir, entry["values"]),
                                **arrays)
    return entry


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.export_hlo",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(optimizer_step.MODELS),
                        default="base")
    parser.add_argument("--dtype", choices=sorted(optimizer_step.DTYPE_BYTES),
                        default="float32", help="dtype of variables/grads")
    parser.add_argument("--device_kind", choices=("gpu", "tpu", "cpu"),
                        default="gpu", help="where the programs will run")
    parser.add_argument("--config", choices=sorted(optimizer_step.CONFIGS),
                        default="default",
                        help="the optimizers' arguments: their defaults, or "
                        "pretraining (weight decay 0.01 with LayerNorm and "
                        "biases excluded, global_clipnorm=1.0)")
    parser.add_argument("--out_dir", required=True,
                        help="directory for the programs and manifest.json")
    parser.add_argument("--values", action="store_true",
                        help="also write inputs and TensorFlow's results of "
                        f"one step (models up to {MAX_VALUES_PARAMETERS:,} "
                        "parameters)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.shapes = optimizer_step.bert_shapes(
        **optimizer_step.MODELS[args.model])
    args.parameters = optimizer_step.parameter_count(args.shapes)
    if args.values and args.parameters > MAX_VALUES_PARAMETERS:
        parser.error(f"--values: the {args.model} model has "
                     f"{args.parameters:,} parameters; values are written "
                     f"for at most {MAX_VALUES_PARAMETERS:,}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    shapes, params = args.shapes, args.parameters
    os.makedirs(args.out_dir, exist_ok=True)

    import tensorflow as tf
    manifest = {
        "benchmark": "optimizer_step",
        "model": args.model,
        "dtype": args.dtype,
        "device_kind": args.device_kind,
        "config": args.config,
        "parameters": params,
        "variables": len(shapes),
        "floor_bytes_per_param": optimizer_step.floor_bytes_per_param(
            args.dtype),
        "exact_floor_bytes_per_param":
            optimizer_step.exact_floor_bytes_per_param(args.dtype),
        "tensorflow": tf.__version__,
        "tf_lamb_source": _common.tf_lamb_source(),
        "baseline": "keras_lamb_xla",
        "candidates": {},
    }
    for name in CANDIDATES:
        # Each candidate starts from the same variables; the previous ones
        # go first (BERT-large's take 5 GiB with their slots).
        variables, grads = optimizer_step.make_variables_and_gradients(
            shapes, args.dtype, args.seed)
        manifest["candidates"][name] = export(
            name, variables, grads, args.out_dir, args.device_kind,
            args.values, args.config)
        del variables, grads
        gc.collect()
        print(f"[export_hlo] {args.model}: wrote {name}", file=sys.stderr)
    with open(os.path.join(args.out_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    return manifest


if __name__ == "__main__":
    main()
