r"""Times the XLA programs of `benchmarks.export_hlo` on any XLA device.

Needs jax and jaxlib (no TensorFlow): it compiles each program that
`export_hlo` wrote with jaxlib's XLA for the default JAX device, and times a
step as `optimizer_step` does (median over --steps after --warmup), with the
updated variables of each step fed back as the next step's inputs (the
program's input/output aliases, as TensorFlow runs it). In the same run it
measures the device's copy bandwidth for the memory-traffic floors (the
exact-LAMB and the copy floor, as `optimizer_step` defines them). Each
candidate runs in its own process (--isolation=process), so that the device
memory its step adds above its inputs (where the device reports memory
statistics) is its own.

When the export holds values (`export_hlo --values`), every candidate first
runs one step from TensorFlow's inputs and its results are compared with
TensorFlow's own (largest relative error over all inputs of the program).

  python -m benchmarks.run_hlo /tmp/hlo/base --json_out=/tmp/base_gpu.json
"""

import argparse
import gzip
import json
import os
import sys
import time

from benchmarks import _common
from benchmarks import optimizer_step


def _require_jax():
    try:
        import jax
        import jax.extend  # noqa: F401  (jax.extend.backend)
    except ImportError:
        sys.exit("benchmarks.run_hlo needs jax and jaxlib "
                 "(pip install jax, or jax[cuda13] for NVIDIA GPUs)")
    # The programs keep TensorFlow's int64 step counters.
    jax.config.update("jax_enable_x64", True)
    return jax


class Program:
    """One exported program, compiled for one device."""

    def __init__(self, jax, proto, device):
        from jax._src import compiler
        from jax._src.interpreters import mlir
        from jax._src.lib import _jax
        from jax._src.lib import xla_client
        from jax._src.lib.mlir import ir

        context = mlir.make_ir_context()
        with context:
            module = ir.Module.parse(_jax.mlir.hlo_to_stablehlo(proto))
            attributes = module.operation.attributes
            # output index -> the input it updates in place.
            self.aliases = {}
            if "mhlo.input_output_alias" in attributes:
                for alias in attributes["mhlo.input_output_alias"]:
                    output = list(ir.DenseI64ArrayAttr(alias["output_index"]))
                    number = ir.DictAttr(alias["alias"])["parameter_number"]
                    self.aliases[output[0]] = ir.IntegerAttr(number).value
            main = next(op for op in module.body.operations
                        if ir.StringAttr(op.attributes["sym_name"]).value
                        == "main")
            function_type = ir.FunctionType(
                ir.TypeAttr(main.attributes["function_type"]).value)
            self.input_types = [
                (tuple(ir.RankedTensorType(t).shape),
                 str(ir.RankedTensorType(t).element_type))
                for t in function_type.inputs]
            options = compiler.get_compile_options(num_replicas=1,
                                                   num_partitions=1)
            started = time.perf_counter()
            self.executable = jax.extend.backend.get_backend(
                device.platform).compile_and_load(
                    module,
                    executable_devices=xla_client.DeviceList((device,)),
                    compile_options=options)
            self.compile_s = time.perf_counter() - started

    def step(self, inputs):
        """Runs once; (inputs of the next step, all outputs)."""
        outputs = [
            o[0] for o in self.executable.execute_sharded(
                inputs).disassemble_into_single_device_arrays()]
        following = list(inputs)
        for output, number in self.aliases.items():
            following[number] = outputs[output]
        return following, outputs

    def optimized_hlo(self):
        return "\n".join(m.to_string()
                         for m in self.executable.hlo_modules())


def numpy_dtype(element_type):
    """The NumPy dtype of an MLIR element type such as f32 or bf16."""
    import ml_dtypes
    import numpy as np
    types = {"f32": np.float32, "f16": np.float16, "f64": np.float64,
             "bf16": ml_dtypes.bfloat16, "i64": np.int64, "i32": np.int32,
             "i1": np.bool_, "ui8": np.uint8}
    return np.dtype(types[element_type])


def synthetic_inputs(jax, types, device, seed):
    """Inputs of the right shapes: floats in [0, 0.01) (so that second
    moments are non-negative), integers 1."""
    import numpy as np
    rng = np.random.default_rng(seed)
    inputs = []
    for shape, element in types:
        dtype = numpy_dtype(element)
        if element.startswith(("f", "bf")):
            value = (rng.random(shape, np.float32) * 0.01).astype(dtype)
        else:
            value = np.ones(shape, dtype)
        inputs.append(jax.device_put(value, device))
    return inputs


def check_values(jax, program, values_path, device):
    """One step from TensorFlow's inputs; the largest relative error of the
    results against TensorFlow's."""
    import numpy as np
    values = np.load(values_path)
    # export_hlo stores bfloat16 as float32 (npz has no bfloat16).
    inputs = [jax.device_put(values[f"before_{i}"].astype(
        numpy_dtype(element)), device)
        for i, (_, element) in enumerate(program.input_types)]
    following, _ = program.step(inputs)
    worst = 0.0
    for i in range(len(inputs)):
        got = np.asarray(following[i], np.float64)
        want = np.asarray(values[f"after_{i}"], np.float64)
        scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-30)
        worst = max(worst, float(np.max(np.abs(got - want), initial=0.0))
                    / scale)
    return worst


def measure_bandwidth(jax, device, megabytes, repeats):
    """Bytes read + written per second of a few XLA kernels over
    `megabytes`-sized float32 arrays on `device`; the floor uses the best."""
    import jax.numpy as jnp
    n = int(megabytes * 2**20) // 4
    x = jax.device_put(jnp.arange(n, dtype=jnp.float32), device)
    y = jax.device_put(jnp.ones(n, jnp.float32), device)
    kernels = {
        # read x, write a new array
        "xla_scale": (2, jax.jit(lambda a: a * 1.5), (x,)),
        # read a, b; write a new array
        "xla_axpy": (3, jax.jit(lambda a, b: a * 0.5 + b), (x, y)),
    }
    results = {}
    for name, (streams, kernel, args) in kernels.items():
        jax.block_until_ready(kernel(*args))
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            jax.block_until_ready(kernel(*args))
            best = min(best, time.perf_counter() - started)
        results[name] = streams * n * 4 / best
    # In place, as an optimizer writes its variables: read v and a, write v.
    update = jax.jit(lambda v, a: v * 0.5 + a, donate_argnums=0)
    v = jax.device_put(jnp.zeros(n, jnp.float32), device)
    v = jax.block_until_ready(update(v, x))
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        v = jax.block_until_ready(update(v, x))
        best = min(best, time.perf_counter() - started)
    results["xla_inplace_axpy"] = 3 * n * 4 / best
    return results


def _memory_in_use(device):
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    return stats or {}


def run_candidate(jax, directory, name, entry, device, args):
    with open(os.path.join(directory, entry["hlo"]), "rb") as f:
        program = Program(jax, f.read(), device)
    result = {"compile_s": program.compile_s,
              "program_inputs": len(program.input_types)}
    if entry.get("values") and not args.no_check:
        result["max_relative_error_vs_tensorflow"] = check_values(
            jax, program, os.path.join(directory, entry["values"]), device)
    optimized_hlo = program.optimized_hlo()
    if args.dump_dir:
        os.makedirs(args.dump_dir, exist_ok=True)
        path = os.path.join(args.dump_dir, f"{name}.optimized.hlo.txt.gz")
        with gzip.open(path, "wt") as f:
            f.write(optimized_hlo)
        result["optimized_hlo"] = path
    result["kernels"] = count_kernels(optimized_hlo)

    inputs = synthetic_inputs(jax, program.input_types, device, args.seed)
    # This process holds only the program and its inputs now: what the
    # peak adds is the step's temporaries and unaliased outputs.
    memory_before = _memory_in_use(device).get("bytes_in_use")
    state = {"inputs": inputs, "outputs": None}

    def step():
        state["inputs"], state["outputs"] = program.step(state["inputs"])

    def sync():
        jax.block_until_ready(state["outputs"])

    times = _common.time_steps(step, args.steps, args.warmup, sync)
    result.update(_common.summarize(times))
    result["times_s"] = times
    peak = _memory_in_use(device).get("peak_bytes_in_use")
    if peak is not None and memory_before is not None:
        result["device_peak_bytes_above_inputs"] = peak - memory_before
    return result


def count_kernels(optimized_hlo):
    """Fusions and library calls in the entry computation: the kernels one
    step launches, each at least one pass over its operands."""
    entry, kernels = False, 0
    for line in optimized_hlo.splitlines():
        if line.startswith("ENTRY"):
            entry = True
        elif entry and line.startswith("}"):
            break
        elif entry and (" fusion(" in line or " custom-call(" in line):
            kernels += 1
    return kernels


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_hlo",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="an export_hlo --out_dir")
    parser.add_argument("--no_check", action="store_true",
                        help="skip the comparison with TensorFlow's values")
    parser.add_argument("--dump_dir", default=None,
                        help="write each optimized program here (gzip text)")
    _common.add_run_flags(parser, steps=20, bandwidth_mb=1024.0,
                          bandwidth_repeats=10, timeout=1800.0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    manifest = os.path.join(args.directory, "manifest.json")
    if not os.path.isfile(manifest):
        parser.error(f"{manifest} not found: write it with "
                     "python -m benchmarks.export_hlo --out_dir=...")
    return args


def _worker_argv(args, worker):
    argv = [args.directory, "--steps", str(args.steps), "--warmup",
            str(args.warmup), "--bandwidth_mb", str(args.bandwidth_mb),
            "--bandwidth_repeats", str(args.bandwidth_repeats), "--seed",
            str(args.seed), "--worker", worker]
    if args.no_check:
        argv.append("--no_check")
    if args.dump_dir:
        argv += ["--dump_dir", args.dump_dir]
    return argv


def run_worker(args, manifest):
    """The result of one worker (a candidate or "bandwidth") in this
    process."""
    jax = _require_jax()
    device = jax.devices()[0]
    if args.worker == "bandwidth":
        result = {"bandwidth_bytes_per_s": measure_bandwidth(
            jax, device, args.bandwidth_mb, args.bandwidth_repeats)}
    else:
        result = run_candidate(jax, args.directory, args.worker,
                               manifest["candidates"][args.worker], device,
                               args)
    result["device"] = {"platform": device.platform,
                        "kind": device.device_kind}
    result["jax"] = jax.__version__
    return result


def _run(args, manifest, worker):
    if args.isolation == "process":
        return _common.run_worker("benchmarks.run_hlo",
                                  _worker_argv(args, worker), args.timeout)
    worker_args = argparse.Namespace(**vars(args))
    worker_args.worker = worker
    return run_worker(worker_args, manifest)


def _load_manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        return json.load(f)


def benchmark(args):
    manifest = _load_manifest(args.directory)
    measured = _run(args, manifest, "bandwidth")
    bandwidths = measured["bandwidth_bytes_per_s"]
    device = measured["device"]
    best = max(bandwidths, key=bandwidths.get)
    params = manifest["parameters"]
    floor_s = manifest["floor_bytes_per_param"] * params / bandwidths[best]
    # Exports written before the exact-LAMB floor was recorded lack it.
    exact_bytes_per_param = manifest.get(
        "exact_floor_bytes_per_param",
        optimizer_step.exact_floor_bytes_per_param(manifest["dtype"]))
    exact_floor_s = exact_bytes_per_param * params / bandwidths[best]
    candidates = {}
    for name in manifest["candidates"]:
        print(f"[run_hlo] {manifest['model']}: running {name} on "
              f"{device['kind']} ...", file=sys.stderr, flush=True)
        candidates[name] = _run(args, manifest, name)
    result = {
        "benchmark": "run_hlo",
        "export": {k: manifest[k] for k in (
            "model", "dtype", "device_kind", "tensorflow", "tf_lamb_source")},
        "parameters": params,
        "variables": manifest["variables"],
        "device": device,
        "jax": measured["jax"],
        "steps": args.steps,
        "warmup": args.warmup,
        # floor_*: the copy floor; exact_floor_*: the exact-LAMB floor.
        "floor_bytes_per_param": manifest["floor_bytes_per_param"],
        "exact_floor_bytes_per_param": exact_bytes_per_param,
        "bandwidth_bytes_per_s": bandwidths,
        "bandwidth_best_method": best,
        "bandwidth_gb_per_s": bandwidths[best] / 1e9,
        "floor_s": floor_s,
        "exact_floor_s": exact_floor_s,
        "candidates": candidates,
        "machine": _common.machine_info(),
    }
    baseline = manifest.get("baseline")
    if "tf_lamb" in candidates:
        result["tf_lamb_median_s"] = candidates["tf_lamb"]["median_s"]
        result["ratio_to_floor"] = result["tf_lamb_median_s"] / floor_s
        result["ratio_to_exact_floor"] = (result["tf_lamb_median_s"]
                                          / exact_floor_s)
        if baseline in candidates:
            result["baseline"] = baseline
            result["baseline_median_s"] = candidates[baseline]["median_s"]
            result["speedup_vs_keras"] = (result["baseline_median_s"]
                                          / result["tf_lamb_median_s"])
    return result


def report(result):
    export = result["export"]
    print(f"\nLAMB optimizer step as exported XLA programs, BERT-"
          f"{export['model']} shapes: {result['parameters']:,} parameters, "
          f"{export['dtype']}; on {result['device']['kind']} "
          f"({result['device']['platform']}, jax {result['jax']}); "
          f"median of {result['steps']} steps after {result['warmup']}")
    print(_common.floor_line(result))
    base_time = result.get("baseline_median_s")
    rows = []
    for name, c in result["candidates"].items():
        error = c.get("max_relative_error_vs_tensorflow")
        rows.append([
            name, _common.fmt_seconds(c["median_s"]),
            _common.fmt_seconds(c["min_s"]),
            _common.fmt_ratio(base_time / c["median_s"]) if base_time else "-",
            _common.fmt_ratio(c["median_s"] / result["exact_floor_s"]),
            _common.fmt_ratio(c["median_s"] / result["floor_s"]),
            str(c["kernels"]), f"{c['compile_s']:.1f} s",
            _common.fmt_bytes(c.get("device_peak_bytes_above_inputs")),
            "-" if error is None else f"{error:.1e}"])
    rows += _common.floor_rows(result, base_time, 4)
    _common.print_table(["candidate", "median", "min", "speed-up vs keras",
                         "to exact floor", "to copy floor", "kernels",
                         "compile", "device memory added", "error vs TF"],
                        rows)
    if "speedup_vs_keras" in result:
        print(f"tf_lamb {_common.fmt_seconds(result['tf_lamb_median_s'])}: "
              f"{result['speedup_vs_keras']:.2f}x faster than keras Lamb, "
              f"{result['ratio_to_exact_floor']:.2f}x the exact-LAMB floor "
              f"({result['ratio_to_floor']:.2f}x the copy floor)")


def main(argv=None):
    return _common.run_main(
        argv, parse_args,
        lambda args: run_worker(args, _load_manifest(args.directory)),
        benchmark, report)


if __name__ == "__main__":
    main()
