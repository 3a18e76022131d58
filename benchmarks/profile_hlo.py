r"""Device time of the exported optimizer steps, from a profiler trace.

`benchmarks.run_hlo` times a step from the host: one call, then a wait for
its results. On a GPU that time is mostly the host's: a call hands jaxlib
over 800 buffers (every variable, slot and gradient of BERT-base), which
took 13-21 ms on an H200 machine, while the GPU's kernels for the same step
ran for 2.5-7.6 ms. This measures the device's side separately:

  call     one call and a wait, as run_hlo times it
  chained  --steps calls queued back to back, one wait at the end, per step
           (whichever of host and device is slower)
  kernels  the summed duration of the device kernels per step, from a jax
           profiler trace (CUPTI on NVIDIA GPUs); none on a CPU
  floor    the exact-LAMB floor, 44 B/param over the copy bandwidth
           measured in the same run (benchmarks.run_hlo.measure_bandwidth)

  python -m benchmarks.export_hlo --model=base --out_dir=hlo/base  # with TF
  python -m benchmarks.profile_hlo hlo/base hlo/large              # jax only
"""

import argparse
import glob
import gzip
import json
import os
import shutil
import sys
import tempfile
import time

from benchmarks import _common
from benchmarks import run_hlo

EXACT_FLOOR_BYTES_PER_PARAM = 44


def device_kernel_seconds(trace_path, steps):
    """(summed kernel seconds per step, kernels per step) of the device
    processes of a perfetto trace; (None, 0) when it has none."""
    with gzip.open(trace_path, "rt") as f:
        trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    device_pids = {e["pid"] for e in events
                   if e.get("ph") == "M" and e.get("name") == "process_name"
                   and "/device:" in e["args"]["name"]}
    kernels = [e for e in events
               if e.get("ph") == "X" and e.get("pid") in device_pids]
    if not kernels:
        return None, 0
    return (sum(e["dur"] for e in kernels) / 1e6 / steps,
            len(kernels) / steps)


def profile_candidate(jax, directory, entry, device, steps):
    with open(os.path.join(directory, entry["hlo"]), "rb") as f:
        program = run_hlo.Program(jax, f.read(), device)
    state = run_hlo.synthetic_inputs(jax, program.input_types, device, 0)
    outputs = None
    for _ in range(3):
        state, outputs = program.step(state)
    jax.block_until_ready(outputs)

    started = time.perf_counter()
    state, outputs = program.step(state)
    jax.block_until_ready(outputs)
    call_s = time.perf_counter() - started

    started = time.perf_counter()
    for _ in range(steps):
        state, outputs = program.step(state)
    jax.block_until_ready(outputs)
    chained_s = (time.perf_counter() - started) / steps

    trace_dir = tempfile.mkdtemp(prefix="profile_hlo_")
    try:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(steps):
            state, outputs = program.step(state)
        jax.block_until_ready(outputs)
        jax.profiler.stop_trace()
        traces = glob.glob(os.path.join(trace_dir, "**",
                                        "perfetto_trace.json.gz"),
                           recursive=True)
        kernel_s, kernels = (device_kernel_seconds(traces[0], steps)
                             if traces else (None, 0))
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    return {"call_s": call_s, "chained_s": chained_s,
            "kernel_s": kernel_s, "kernels_per_step": kernels}


def profile(directory, steps, jax, device, bandwidth):
    with open(os.path.join(directory, "manifest.json")) as f:
        manifest = json.load(f)
    floor_s = (EXACT_FLOOR_BYTES_PER_PARAM * manifest["parameters"]
               / bandwidth)
    candidates = {
        name: profile_candidate(jax, directory, entry, device, steps)
        for name, entry in manifest["candidates"].items()}
    return {"model": manifest["model"], "parameters": manifest["parameters"],
            "floor_s": floor_s, "candidates": candidates}


def report(result):
    print(f"\nLAMB optimizer steps on {result['device']} (jax "
          f"{result['jax']}), copy bandwidth "
          f"{result['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s, exact floor "
          f"{EXACT_FLOOR_BYTES_PER_PARAM} B/param")
    rows = []
    for model in result["models"]:
        keras = model["candidates"].get("keras_lamb_xla", {}).get("kernel_s")
        for name, c in model["candidates"].items():
            kernel_s = c["kernel_s"]
            rows.append([
                model["model"], name, _common.fmt_seconds(c["call_s"]),
                _common.fmt_seconds(c["chained_s"]),
                _common.fmt_seconds(kernel_s), f"{c['kernels_per_step']:.0f}",
                _common.fmt_ratio(keras / kernel_s)
                if keras and kernel_s else "-",
                _common.fmt_ratio(kernel_s / model["floor_s"])
                if kernel_s else "-"])
    _common.print_table(["model", "candidate", "call", "chained",
                         "kernels", "kernels/step", "kernel speed-up vs keras",
                         "kernels / floor"], rows)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.profile_hlo",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("directories", nargs="+",
                        help="export_hlo --out_dir folders")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--bandwidth_mb", type=float, default=1024.0,
                        help="size of the arrays the copy bandwidth is "
                        "measured on")
    parser.add_argument("--json_out", default=None)
    args = parser.parse_args(argv)
    for directory in args.directories:
        if not os.path.isfile(os.path.join(directory, "manifest.json")):
            parser.error(f"{directory}/manifest.json not found: write it "
                         "with python -m benchmarks.export_hlo")
    jax = run_hlo._require_jax()
    device = jax.devices()[0]
    bandwidths = run_hlo.measure_bandwidth(jax, device, args.bandwidth_mb, 10)
    bandwidth = max(bandwidths.values())
    result = {"device": device.device_kind, "jax": jax.__version__,
              "bandwidth_bytes_per_s": bandwidth,
              "models": [profile(d, args.steps, jax, device, bandwidth)
                         for d in args.directories]}
    report(result)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
