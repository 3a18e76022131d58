r"""What a GPU's or a TPU's own compiler makes of a program, without the device.

The accelerators' compilers run on a CPU machine through jax: libtpu for
Cloud TPUs and jax's CUDA plugin (XLA:GPU and ptxas) for NVIDIA GPUs, each
given a description of a chip that is not there. This compiles the XLA
programs that `benchmarks.export_hlo` writes (any program in its manifest, or
any serialized HloModuleProto) for such a chip, and reports for each:

  kernels       the fusions and library calls the optimized program launches
                (its entry computation and the loops and branches it calls)
  bytes/param   TPU: "bytes accessed" of the compiler's cost analysis, per
                parameter of the model; `x * 2` is 8 B per element. It counts
                every staging copy into and out of the TPU's vector memory
                (16 B per element for each) besides the fusions' own reads
                and writes. XLA:GPU has no cost analysis.
  HBM bytes     from the optimized program, the bytes its kernels read from
                and write to device memory, and each staging copy once (the
                traffic the device's bandwidth limits; an estimate)
  to floor      bytes/param against the exact-LAMB floor, 44 B/param
  flops, temp   the cost analysis' flops (TPU); the scratch memory the
                program needs beside its arguments and outputs
  compile       seconds the compiler took
  unstaged      TPU, with `--unstaged`: bytes/param of the same program
                compiled with libtpu's memory-space assignment off
                (LIBTPU_INIT_ARGS=--xla_msa_enable=false, in a child
                process): nothing is staged into vector memory, so the
                cost analysis counts only the kernels' reads and writes of
                device memory. What the staging adds is the difference.

With `--optax`, optax.lamb on the same variable shapes (jax.jit, donated
state) is compiled beside them as the JAX anchor.

  python -m benchmarks.export_hlo --model=base --device_kind=tpu --out_dir=hlo/tpu
  python -m benchmarks.compile_for --target=tpu-v5e hlo/tpu --optax
  python -m benchmarks.export_hlo --model=base --device_kind=gpu --out_dir=hlo/gpu
  python -m benchmarks.compile_for --target=h100 hlo/gpu --json_out=h100.json

It needs jax and the target's compiler, neither of them a dependency of
tf_lamb (libtpu is ~480 MB, jax's CUDA plugin ~5.5 GB); when one is missing it
says which command installs it. It imports no TensorFlow.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import _common
from train.plan.accelerators import (EXACT_FLOOR_BYTES_PER_PARAM, TARGETS,
                                CompilerMissing, compile_proto, measure,
                                target_device)

def optax_lamb_program(jax, device, model):
    """(executable, seconds) of optax.lamb's update on `model`'s BERT
    variable shapes, jitted for `device` with its state donated."""
    try:
        import optax
    except ImportError:
        raise CompilerMissing("optax is not installed: pip install optax")
    import jax.numpy as jnp
    from benchmarks import optimizer_step
    shapes = [shape for _, shape in optimizer_step.bert_shapes(
        **optimizer_step.MODELS[model])]
    optimizer = optax.lamb(1e-3)

    def step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    sharding = jax.sharding.SingleDeviceSharding(device)

    def spec(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    params = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding)
              for s in shapes]
    state = jax.tree.map(spec, jax.eval_shape(optimizer.init, params))
    started = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).trace(
        params, state, params).lower(lowering_platforms=(
            "cuda" if device.platform in ("gpu", "cuda") else "tpu",))
    executable = lowered.compile()
    return executable, time.perf_counter() - started


# -- the command -------------------------------------------------------------

def programs_of(path):
    """[(name, proto path, manifest or {})] of an export_hlo directory or of
    one .hlo.pb file."""
    if os.path.isdir(path):
        manifest_path = os.path.join(path, "manifest.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        return [(name, os.path.join(path, entry["hlo"]), manifest)
                for name, entry in manifest["candidates"].items()]
    return [(os.path.basename(path).split(".")[0], path, {})]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compile_for",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="*",
                        help="export_hlo --out_dir directories or .hlo.pb "
                        "files")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS),
                        help="the chip to compile for")
    parser.add_argument("--optax", action="store_true",
                        help="also compile optax.lamb on the programs' "
                        "BERT shapes (the JAX anchor)")
    parser.add_argument("--optax_model", default=None,
                        choices=("tiny", "base", "large"),
                        help="the shapes for --optax without programs")
    parser.add_argument("--parameters", type=int, default=None,
                        help="the model's parameter count, for the per-"
                        "parameter figures of .hlo.pb files named alone "
                        "(an export directory's manifest has it)")
    parser.add_argument("--dump_dir", default=None,
                        help="write each optimized program here (text)")
    parser.add_argument("--json_out", default=None,
                        help="write the results here as JSON")
    parser.add_argument("--unstaged", action="store_true",
                        help="TPU: also compile each program with libtpu's "
                        "memory-space assignment off (no staging into "
                        "vector memory) and report its bytes/param beside")
    args = parser.parse_args(argv)
    if args.unstaged and TARGETS[args.target]["platform"] != "tpu":
        parser.error("--unstaged is for TPU targets (libtpu's staging)")
    if not args.programs and not (args.optax and args.optax_model):
        parser.error("name at least one program (or --optax with "
                     "--optax_model)")
    for path in args.programs:
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "manifest.json")):
                parser.error(f"{path}: no manifest.json; write it with "
                             "python -m benchmarks.export_hlo --out_dir=...")
        elif not os.path.isfile(path):
            parser.error(f"{path}: no such file or directory")
    return args


def run(args):
    spec = TARGETS[args.target]
    device = target_device(args.target)
    result = {"benchmark": "compile_for", "target": args.target,
              "chip": spec["chip"], "programs": {},
              "exact_floor_bytes_per_param": EXACT_FLOOR_BYTES_PER_PARAM,
              "machine": _common.machine_info()}
    import jax
    result["jax"] = jax.__version__
    models = set()
    for path in args.programs:
        for name, proto_path, manifest in programs_of(path):
            with open(proto_path, "rb") as f:
                proto = f.read()
            print(f"[compile_for] {args.target}: compiling {name} "
                  f"({proto_path}) ...", file=sys.stderr, flush=True)
            executable, seconds = compile_proto(device, proto)
            parameters = manifest.get("parameters", args.parameters)
            measured, optimized = measure(executable, seconds, parameters)
            measured["source"] = proto_path
            for key in ("model", "dtype", "device_kind", "config",
                        "parameters", "variables", "tf_lamb_source"):
                if key in manifest:
                    measured[key] = manifest[key]
            if "model" in manifest:
                models.add(manifest["model"])
            # Where several are named, the export's directory tells them
            # apart.
            label = name if len(args.programs) == 1 else (
                os.path.basename(os.path.dirname(os.path.abspath(
                    proto_path))) + "/" + name)
            result["programs"][label] = measured
            _dump(args, label, optimized)
    if args.optax:
        from benchmarks import optimizer_step
        for model in sorted(models or {args.optax_model}):
            executable, seconds = optax_lamb_program(jax, device, model)
            parameters = optimizer_step.parameter_count(
                optimizer_step.bert_shapes(**optimizer_step.MODELS[model]))
            measured, optimized = measure(executable, seconds, parameters)
            measured.update(model=model, parameters=parameters)
            label = f"optax_lamb ({model})"
            result["programs"][label] = measured
            _dump(args, label, optimized)
    result["vmem_staging"] = not staging_off()
    if args.unstaged:
        for label, measured in unstaged(args).items():
            if label in result["programs"]:
                result["programs"][label]["unstaged"] = measured
    return result


MSA_OFF = "--xla_msa_enable=false"


def staging_off():
    """Whether this process's libtpu was told to stage nothing."""
    return MSA_OFF in os.environ.get("LIBTPU_INIT_ARGS", "").split()


def unstaged(args):
    """{label: the cost figures of each program} compiled again with the
    memory-space assignment off. libtpu reads its flags once, when it
    starts, so the compile runs in a child process."""
    with tempfile.TemporaryDirectory() as scratch:
        out = os.path.join(scratch, "unstaged.json")
        argv = [sys.executable, "-m", "benchmarks.compile_for",
                f"--target={args.target}", f"--json_out={out}",
                *args.programs]
        if args.optax:
            argv.append("--optax")
        for flag in ("optax_model", "parameters"):
            if getattr(args, flag) is not None:
                argv.append(f"--{flag}={getattr(args, flag)}")
        env = dict(os.environ, LIBTPU_INIT_ARGS=(
            os.environ.get("LIBTPU_INIT_ARGS", "") + " " + MSA_OFF).strip())
        print(f"[compile_for] {args.target}: compiling again with "
              f"{MSA_OFF} ...", file=sys.stderr, flush=True)
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        with open(out) as f:
            programs = json.load(f)["programs"]
    keys = ("bytes_accessed", "bytes_per_param", "ratio_to_floor",
            "temp_bytes", "kernels")
    return {label: {k: p[k] for k in keys if k in p}
            for label, p in programs.items()}


def _dump(args, label, optimized):
    if not args.dump_dir:
        return
    os.makedirs(args.dump_dir, exist_ok=True)
    name = re.sub(r"[^\w.\-]+", "_", label) + f".{args.target}.hlo.txt"
    with open(os.path.join(args.dump_dir, name), "w") as f:
        f.write(optimized)


def report(result, out=None):
    out = out or sys.stdout
    print(f"\nCompiled for {result['chip']} ({result['target']}, jax "
          f"{result['jax']}), without the device. bytes/param: the "
          "compiler's cost analysis"
          + ("" if result.get("vmem_staging", True) else
             " (memory-space assignment off: nothing staged)")
          + "; HBM B/param: an estimate from the "
          f"optimized program; floor: exact LAMB, "
          f"{result['exact_floor_bytes_per_param']} B/param.", file=out)

    def number(value, form):
        return "-" if value is None else form.format(value)

    with_unstaged = any("unstaged" in p for p in result["programs"].values())
    rows = []
    for label, p in result["programs"].items():
        rows.append([
            label, str(p["kernels"]),
            number(p.get("bytes_per_param"), "{:.1f}"),
            number(p.get("ratio_to_floor"), "{:.2f}x"),
            number(p.get("device_memory_bytes_per_param"), "{:.1f}"),
            number(p.get("flops"), "{:.3g}"),
            _common.fmt_bytes(p["temp_bytes"]),
            f"{p['compile_s']:.1f} s"])
        if with_unstaged:
            staged_off = p.get("unstaged", {})
            rows[-1] += [number(staged_off.get("bytes_per_param"), "{:.1f}"),
                         _common.fmt_bytes(staged_off["temp_bytes"])
                         if "temp_bytes" in staged_off else "-"]
    header = ["program", "kernels", "bytes/param", "to floor",
              "HBM B/param", "flops", "temp", "compile"]
    if with_unstaged:
        header += ["unstaged B/param", "unstaged temp"]
    _common.print_table(header, rows, out=out)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args)
    except CompilerMissing as error:
        print(f"compile_for: {error}", file=sys.stderr)
        sys.exit(3)
    report(result)
    _common.write_json(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
