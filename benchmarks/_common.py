"""Helpers shared by the benchmarks: timing, memory, worker subprocesses.

Nothing here imports TensorFlow, so that a parent process that only
dispatches candidates to subprocesses stays small and starts fast.
"""

import argparse
import hashlib
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

RESULT_PREFIX = "BENCHMARK_RESULT "


# -- memory ------------------------------------------------------------------

def _status_kib(field):
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_bytes():
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes():
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


def reset_peak_rss():
    """Resets VmHWM to the current RSS (Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


# -- timing ------------------------------------------------------------------

def time_steps(step, steps, warmup, sync=None):
    """Calls `step` warmup + steps times; the per-step seconds of the last
    `steps` calls. `sync` (if given) is called inside the timed region to wait
    for the step's results."""
    for _ in range(warmup):
        step()
        if sync is not None:
            sync()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return times


def summarize(times):
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "steps": len(times),
    }


def load_average():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def machine_info():
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": load_average(),
    }


def _python_files(package):
    """The .py files under `package`, as sorted paths relative to it (a
    top-level module's path is its name)."""
    names = []
    for folder, subfolders, files in os.walk(package):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        relative = os.path.relpath(folder, package)
        names += [name if relative == "." else os.path.join(relative, name)
                  for name in files if name.endswith(".py")]
    return sorted(names)


def tf_lamb_source():
    """Which tf_lamb was measured: the git commit and a hash of the
    package's modules, its subpackages' included (the optimizer may be
    edited in the working tree between runs)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package = os.path.join(root, "tf_lamb")
    info = {}
    try:
        digest = hashlib.sha256()
        for name in _python_files(package):
            with open(os.path.join(package, name), "rb") as f:
                digest.update(name.encode() + b"\0" + f.read())
        info["tf_lamb_sha256"] = digest.hexdigest()[:16]
    except OSError:
        pass
    try:
        info["git_head"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root,
            capture_output=True, text=True, timeout=10).stdout.strip()
        info["tf_lamb_modified"] = bool(subprocess.run(
            ["git", "status", "--porcelain", "--", "tf_lamb"],
            cwd=root, capture_output=True, text=True,
            timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# -- workers -----------------------------------------------------------------

def add_run_flags(parser, steps, bandwidth_mb, bandwidth_repeats, timeout):
    """The flags every step benchmark takes: timing, the bandwidth test of
    the floor, one subprocess per candidate, the JSON line."""
    parser.add_argument("--steps", type=int, default=steps,
                        help="timed steps per candidate")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed steps first (compilation)")
    parser.add_argument("--bandwidth_mb", type=float, default=bandwidth_mb,
                        help="size of each array of the bandwidth test")
    parser.add_argument("--bandwidth_repeats", type=int,
                        default=bandwidth_repeats)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--isolation", choices=("process", "none"),
                        default="process",
                        help="one subprocess per candidate (memory figures "
                        "of its own), or all in this process")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help="seconds per candidate subprocess")
    parser.add_argument("--json_out", default=None,
                        help="also write the JSON line to this file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


def emit_result(result):
    """Prints a worker's result as the line the parent looks for."""
    sys.stdout.write(RESULT_PREFIX + json.dumps(result) + "\n")
    sys.stdout.flush()


def run_worker(module, argv, timeout, verbose=False):
    """Runs `python -m module *argv` and returns the dict it emitted."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # The worker imports `module` from wherever this package was imported
    # (a checkout need not be installed).
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH")) if p)
    command = [sys.executable, "-m", module] + list(argv)
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout,
            env=env)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(
            f"{' '.join(command)} ran past {timeout} s:\n"
            f"{_tail(error.stderr)}") from None
    if verbose:
        sys.stderr.write(completed.stderr)
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result["process_wall_s"] = time.perf_counter() - started
            return result
    raise RuntimeError(
        f"{' '.join(command)} exited with {completed.returncode} and no "
        f"result:\n{_tail(completed.stdout)}\n{_tail(completed.stderr)}")


def _tail(text, lines=40):
    if not text:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


# -- output ------------------------------------------------------------------

def fmt_seconds(value):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value >= 1.0:
        return f"{value:.3f} s"
    return f"{value * 1e3:.2f} ms"


def fmt_bytes(value):
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return (f"{sign}{value:.0f} {unit}" if unit == "B"
                    else f"{sign}{value:.1f} {unit}")
        value /= 1024.0
    return f"{sign}{value}"


def fmt_ratio(value):
    if value is None:
        return "-"
    return f"{value:.2f}x"


def floor_line(result):
    """The measured copy bandwidths and the memory-traffic floors of a step
    benchmark's result: the exact-LAMB floor and the copy floor."""
    bandwidths = ", ".join(f"{k} {v / 1e9:.1f}"
                           for k, v in result["bandwidth_bytes_per_s"].items())
    bandwidth = f"{result['bandwidth_gb_per_s']:.1f} GB/s"
    return (f"copy bandwidth GB/s (read+written): {bandwidths}; floors at "
            f"{bandwidth}: exact LAMB "
            f"{result['exact_floor_bytes_per_param']} B/param = "
            f"{fmt_seconds(result['exact_floor_s'])}, copy "
            f"{result['floor_bytes_per_param']} B/param = "
            f"{fmt_seconds(result['floor_s'])}")


def floor_rows(result, base_time, trailing):
    """The table rows of the two floors: name, time, min, speed-up, ratio to
    each floor, then `trailing` empty cells."""
    rows = []
    for label, key in (("exact LAMB", "exact_floor"), ("copy", "floor")):
        seconds = result[f"{key}_s"]
        rows.append(
            [f"memory-traffic floor, {label} "
             f"({result[f'{key}_bytes_per_param']} B/param)",
             fmt_seconds(seconds), "-",
             fmt_ratio(base_time / seconds) if base_time else "-",
             fmt_ratio(seconds / result["exact_floor_s"]),
             fmt_ratio(seconds / result["floor_s"])] + ["-"] * trailing)
    return rows


def print_load(machine):
    """The load average at the end of a run: timings are only as good."""
    load = machine["load_average"]
    if load:
        print(f"load average (1/5/15 min) at the end: "
              f"{' '.join(f'{x:.2f}' for x in load)} on "
              f"{machine['cpus']} CPUs")


def print_table(header, rows, out=None):
    out = out or sys.stdout
    widths = [max(len(str(cell)) for cell in column)
              for column in zip(header, *rows)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(header, widths))
    out.write(line.rstrip() + "\n")
    out.write("  ".join("-" * w for w in widths) + "\n")
    for row in rows:
        out.write("  ".join(str(c).ljust(w) for c, w in zip(row, widths))
                  .rstrip() + "\n")
    out.flush()


def run_main(argv, parse_args, run_worker_args, benchmark, report):
    """A benchmark module's `main`: as a worker (--worker), emit that
    worker's result; otherwise run the benchmark, print its report and JSON
    line (also to --json_out) and return the result."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.worker:
        emit_result(run_worker_args(args))
        return None
    result = benchmark(args)
    report(result)
    write_json(result, args.json_out)
    return result


def write_json(result, path):
    line = json.dumps(result, sort_keys=True)
    print(line, flush=True)
    if path:
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        with open(path, "w") as f:
            f.write(line + "\n")
