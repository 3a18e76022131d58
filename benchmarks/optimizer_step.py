r"""Step time of tf_lamb.Lamb on BERT's variable shapes.

Builds the variables of BERT-base (110 M parameters) or BERT-large (335 M)
as keras.Variables with one fixed set of random gradients, and measures the
median time of `optimizer.apply_gradients(zip(grads, variables))` for

  tf_lamb_eager        tf_lamb.Lamb() called eagerly (it runs its own XLA
                       program)
  tf_lamb_function     the same call inside a tf.function
  keras_lamb_function  keras.optimizers.Lamb() inside a tf.function
  keras_lamb_xla       the same inside a tf.function(jit_compile=True)
  keras_lamb_eager     keras.optimizers.Lamb() eagerly (slow; only when
                       named in --candidates)
  tf_lamb_graph        tf_lamb.Lamb(jit_compile=False) inside a tf.function:
                       plain TF graph ops, no XLA (only when named)

against two memory-traffic floors, each a number of bytes per parameter
divided by the best copy bandwidth measured in the same run:

  exact LAMB  44 B per float32 parameter, what any exact LAMB must move on
              variables larger than the cache: the trust ratio needs ||r||
              before w is written, and a step with an inf/NaN gradient
              anywhere must change nothing, so g is read once for the check
              (4), then g, m, v, w for the moments and both norms, writing
              m, v (24), then w, m, v to write w (16)
  copy        28 B per float32 parameter, one read of w, g, m, v and one
              write of w, m, v: a lower bound no exact LAMB reaches

The faster tf_lamb_* is "tf_lamb", the faster of keras_lamb_function and
keras_lamb_xla is the baseline.

Every candidate runs in its own subprocess (--isolation=process), so that
neither its memory nor its compiled programs mix with another's. The peak
RSS added is VmHWM after the timed steps minus VmRSS once the variables and
gradients exist (the peak is reset there): the optimizer's slots and
temporaries.

With --gradient_accumulation_steps=K every optimizer is built with that
argument and a timed step is one cycle of K calls (K - 1 that accumulate, one
that updates); the floors of a cycle are then K - 1 accumulations (read g and
the accumulator a, write a: 12 B/param) and one update that also reads a
(once for the copy floor; with each of its two reads of g for the exact one).

  python -m benchmarks.optimizer_step --model=base --json_out=/tmp/base.json
  python -m benchmarks.optimizer_step --model=tiny --steps=3 --warmup=1
"""

import argparse
import gc
import sys

from benchmarks import _common

MODELS = {
    # hidden, layers, intermediate, vocab, max positions, token types
    "tiny": dict(hidden=64, layers=2, intermediate=256, vocab=1000,
                 max_positions=128, type_vocab=2),
    "base": dict(hidden=768, layers=12, intermediate=3072, vocab=30522,
                 max_positions=512, type_vocab=2),
    "large": dict(hidden=1024, layers=24, intermediate=4096, vocab=30522,
                  max_positions=512, type_vocab=2),
}

TF_LAMB = ("tf_lamb_eager", "tf_lamb_function")
KERAS_LAMB = ("keras_lamb_function", "keras_lamb_xla")
OPTIONAL = ("keras_lamb_eager", "tf_lamb_graph")
DEFAULT_CANDIDATES = TF_LAMB + KERAS_LAMB
ALL_CANDIDATES = DEFAULT_CANDIDATES + OPTIONAL

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SLOT_BYTES = 4  # tf_lamb keeps m and v in float32 for every dtype


def bert_shapes(hidden, layers, intermediate, vocab, max_positions,
                type_vocab):
    """(name, shape) of every trainable variable of BERT pretraining."""
    h, i = hidden, intermediate
    shapes = [
        ("embeddings/word_embeddings", (vocab, h)),
        ("embeddings/position_embeddings", (max_positions, h)),
        ("embeddings/token_type_embeddings", (type_vocab, h)),
        ("embeddings/LayerNorm/gamma", (h,)),
        ("embeddings/LayerNorm/beta", (h,)),
    ]
    for layer in range(layers):
        prefix = f"encoder/layer_{layer}"
        for part in ("query", "key", "value"):
            shapes += [(f"{prefix}/attention/self/{part}/kernel", (h, h)),
                       (f"{prefix}/attention/self/{part}/bias", (h,))]
        shapes += [
            (f"{prefix}/attention/output/dense/kernel", (h, h)),
            (f"{prefix}/attention/output/dense/bias", (h,)),
            (f"{prefix}/attention/output/LayerNorm/gamma", (h,)),
            (f"{prefix}/attention/output/LayerNorm/beta", (h,)),
            (f"{prefix}/intermediate/dense/kernel", (h, i)),
            (f"{prefix}/intermediate/dense/bias", (i,)),
            (f"{prefix}/output/dense/kernel", (i, h)),
            (f"{prefix}/output/dense/bias", (h,)),
            (f"{prefix}/output/LayerNorm/gamma", (h,)),
            (f"{prefix}/output/LayerNorm/beta", (h,)),
        ]
    shapes += [
        ("pooler/dense/kernel", (h, h)),
        ("pooler/dense/bias", (h,)),
        ("cls/predictions/transform/dense/kernel", (h, h)),
        ("cls/predictions/transform/dense/bias", (h,)),
        ("cls/predictions/transform/LayerNorm/gamma", (h,)),
        ("cls/predictions/transform/LayerNorm/beta", (h,)),
        ("cls/predictions/output_bias", (vocab,)),
    ]
    return shapes


def parameter_count(shapes):
    count = 0
    for _, shape in shapes:
        size = 1
        for dim in shape:
            size *= dim
        count += size
    return count


def floor_bytes_per_param(dtype, accumulation_steps=1):
    """The copy floor: read w, g, m, v and write w, m, v once each.

    With accumulation, per cycle of `accumulation_steps` calls: each call
    but the last reads g and the float32 accumulator and writes the
    accumulator; the last also reads it for the update.
    """
    w = DTYPE_BYTES[dtype]
    update = 3 * w + 4 * SLOT_BYTES
    if accumulation_steps == 1:
        return update
    return (accumulation_steps - 1) * (w + 2 * SLOT_BYTES) + update + SLOT_BYTES


def exact_floor_bytes_per_param(dtype, accumulation_steps=1):
    """The exact-LAMB floor: g read for the inf/NaN check; g, m, v, w read
    and m, v written for the moments and the norms; w, m, v read and w
    written for the update (44 B for float32).

    With accumulation, the K - 1 accumulating calls as in
    `floor_bytes_per_param`, and the update's two reads of g each read the
    accumulator too.
    """
    w = DTYPE_BYTES[dtype]
    check = w
    norms = 2 * w + 4 * SLOT_BYTES
    update = 2 * w + 2 * SLOT_BYTES
    exact = check + norms + update
    if accumulation_steps == 1:
        return exact
    return ((accumulation_steps - 1) * (w + 2 * SLOT_BYTES) + exact
            + 2 * SLOT_BYTES)


# -- worker side (imports TensorFlow) ----------------------------------------

def make_variables_and_gradients(shapes, dtype, seed):
    """keras.Variables and constant gradients, the same for every seed."""
    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    variables, grads = [], []
    for name, shape in shapes:
        if name.endswith(("gamma",)):
            value = np.ones(shape, np.float32)
        elif name.endswith(("beta", "bias")):
            value = np.zeros(shape, np.float32)
        else:
            value = rng.standard_normal(shape, np.float32)
            value *= 0.02
        variables.append(keras.Variable(
            value, dtype=dtype, name=name.replace("/", "_")))
        del value
        gradient = rng.standard_normal(shape, np.float32)
        gradient *= 1e-3
        grads.append(tf.cast(tf.constant(gradient), dtype))
        del gradient
    gc.collect()
    return variables, grads


# The optimizers' arguments besides the defaults: "pretraining" is how
# train.pretrain runs LAMB (BERT's decay, LayerNorm and biases excluded,
# clipping to a global norm of 1).
PRETRAINING_EXCLUSIONS = ["LayerNorm", "bias"]
CONFIGS = {
    "default": {},
    "pretraining": {"weight_decay": 0.01, "global_clipnorm": 1.0},
}


def make_candidate(name, variables, grads, accumulation_steps=1,
                   config="default"):
    """(optimizer, step callable) of a candidate, made with the arguments of
    `config` (a key of CONFIGS).

    With `accumulation_steps` > 1 the step is one cycle of that many calls.
    """
    import keras
    import tensorflow as tf
    import tf_lamb

    kwargs = dict(CONFIGS[config])
    kwargs["gradient_accumulation_steps"] = (
        accumulation_steps if accumulation_steps > 1 else None)
    if config == "pretraining" and name.startswith("tf_lamb"):
        # As TF Addons and train.pretrain take it: excluded from decay and
        # from the trust ratio.
        kwargs["exclude_from_weight_decay"] = PRETRAINING_EXCLUSIONS
    if name == "tf_lamb_graph":
        optimizer = tf_lamb.Lamb(jit_compile=False, **kwargs)
    elif name.startswith("tf_lamb"):
        optimizer = tf_lamb.Lamb(**kwargs)
    else:
        optimizer = keras.optimizers.Lamb(**kwargs)
        if config == "pretraining":
            optimizer.exclude_from_weight_decay(
                var_names=PRETRAINING_EXCLUSIONS)
    # Slots are created here, eagerly, so that no tf.function creates them.
    optimizer.build(variables)

    def apply():
        optimizer.apply_gradients(zip(grads, variables))

    if name in ("tf_lamb_eager", "keras_lamb_eager"):
        step = apply
    elif name in ("tf_lamb_function", "tf_lamb_graph",
                  "keras_lamb_function"):
        step = tf.function(apply, autograph=False)
    elif name == "keras_lamb_xla":
        step = tf.function(apply, autograph=False, jit_compile=True)
    else:
        raise ValueError(f"Unknown candidate {name!r}")
    if accumulation_steps == 1:
        return optimizer, step

    def cycle():
        # One call at a time, as a training loop makes them.
        for _ in range(accumulation_steps):
            step()
    return optimizer, cycle


def run_candidate(args, shapes):
    import tensorflow as tf  # noqa: F401  (imported before the baseline RSS)

    rss_start = _common.rss_bytes()
    variables, grads = make_variables_and_gradients(shapes, args.dtype,
                                                    args.seed)
    rss_before = _common.rss_bytes()
    peak_reset = _common.reset_peak_rss()
    optimizer, step = make_candidate(args.worker, variables, grads,
                                     args.gradient_accumulation_steps)

    def sync():
        # Waits for the step and checks it counted (Keras counts updates).
        return int(optimizer.iterations.numpy())

    times = _common.time_steps(step, args.steps, args.warmup, sync)
    iterations = sync()
    if iterations != args.steps + args.warmup:
        raise RuntimeError(f"{args.worker}: {iterations} iterations after "
                           f"{args.steps + args.warmup} steps")
    finite = all(bool(tf.reduce_all(tf.math.is_finite(
        tf.cast(v.value, tf.float32)))) for v in variables[:4])
    peak = _common.peak_rss_bytes()
    rss_after = _common.rss_bytes()
    result = {"candidate": args.worker, "times_s": times,
              "finite": finite, "peak_reset": peak_reset}
    result.update(_common.summarize(times))
    result["vars_and_grads_rss_bytes"] = rss_before - rss_start
    result["rss_added_bytes"] = rss_after - rss_before
    result["peak_rss_added_bytes"] = (peak - rss_before) if peak_reset else None
    return result


def measure_bandwidth(megabytes, repeats):
    """Copy bandwidths (bytes read + written per second) of a few kernels
    over `megabytes`-sized float32 arrays; the floor uses the best."""
    import time

    import numpy as np
    import tensorflow as tf

    n = int(megabytes * 2**20) // 4
    results = {}

    def best_time(fn):
        fn()  # touch the pages / compile
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    src = np.random.default_rng(0).standard_normal(n, np.float32)
    dst = np.empty_like(src)
    other = np.ones_like(src)
    results["numpy_copyto"] = 2 * n * 4 / best_time(
        lambda: np.copyto(dst, src))
    # dst = src + other: two reads, one write.
    results["numpy_add_out"] = 3 * n * 4 / best_time(
        lambda: np.add(src, other, out=dst))
    del dst, other

    x = tf.constant(src)
    y = tf.constant(src)
    del src
    # An XLA axpy into a variable (the shape of an optimizer's update):
    # read v and x, write v.
    v = tf.Variable(tf.zeros([n]))
    @tf.function(jit_compile=True, autograph=False)
    def axpy():
        v.assign(v * 0.5 + x)

    results["tf_xla_variable_axpy"] = 3 * n * 4 / best_time(axpy)
    # An XLA out-of-place axpy: read x, y; write a new tensor.
    xla_add = tf.function(lambda a, b: a * 0.5 + b, jit_compile=True,
                          autograph=False)
    results["tf_xla_axpy"] = 3 * n * 4 / best_time(lambda: xla_add(x, y))
    # TF's own (non-XLA) kernel.
    results["tf_add"] = 3 * n * 4 / best_time(lambda: tf.add(x, y))
    return results


def run_bandwidth(args):
    bandwidths = measure_bandwidth(args.bandwidth_mb, args.bandwidth_repeats)
    best = max(bandwidths, key=bandwidths.get)
    return {"candidate": "bandwidth", "bandwidth_bytes_per_s": bandwidths,
            "best_method": best, "best_bytes_per_s": bandwidths[best],
            "array_mb": args.bandwidth_mb}


# -- parent side ---------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.optimizer_step",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="base")
    parser.add_argument("--dtype", choices=sorted(DTYPE_BYTES),
                        default="float32", help="dtype of variables/grads")
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES),
                        help="comma-separated, from: "
                        + ", ".join(ALL_CANDIDATES))
    parser.add_argument("--rounds", type=int, default=1,
                        help="run the candidates this many times in turn and "
                        "pool their steps (evens out load drift)")
    parser.add_argument("--verbose", action="store_true",
                        help="pass the workers' stderr through")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1,
                        help="build every optimizer with this argument and "
                        "time cycles of this many calls")
    _common.add_run_flags(parser, steps=10, bandwidth_mb=400.0,
                          bandwidth_repeats=5, timeout=3600.0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0 or args.rounds < 1:
        parser.error("--steps and --rounds must be >= 1, --warmup >= 0")
    if args.gradient_accumulation_steps < 1:
        parser.error("--gradient_accumulation_steps must be >= 1")
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    unknown = [c for c in names if c not in ALL_CANDIDATES]
    if unknown or not names:
        parser.error(f"unknown candidates {unknown}; choose from "
                     f"{list(ALL_CANDIDATES)}")
    args.candidate_list = names
    return args


def _worker_argv(args, worker):
    return ["--model", args.model, "--steps", str(args.steps),
            "--warmup", str(args.warmup), "--dtype", args.dtype,
            "--seed", str(args.seed), "--bandwidth_mb", str(args.bandwidth_mb),
            "--gradient_accumulation_steps",
            str(args.gradient_accumulation_steps),
            "--bandwidth_repeats", str(args.bandwidth_repeats),
            "--worker", worker]


def _run(args, worker, shapes):
    if args.isolation == "process":
        return _common.run_worker(__name__ if __name__ != "__main__"
                                  else "benchmarks.optimizer_step",
                                  _worker_argv(args, worker), args.timeout,
                                  args.verbose)
    worker_args = argparse.Namespace(**vars(args))
    worker_args.worker = worker
    if worker == "bandwidth":
        return run_bandwidth(worker_args)
    return run_candidate(worker_args, shapes)


def _best(results, names):
    present = [n for n in names if n in results]
    if not present:
        return None
    return min(present, key=lambda n: results[n]["median_s"])


def _run_rounds(args, shapes):
    """Every candidate, --rounds times in turn; their results, pooled."""
    candidates = {}
    for round_ in range(args.rounds):
        for name in args.candidate_list:
            print(f"[optimizer_step] {args.model}: running {name} (round "
                  f"{round_ + 1}/{args.rounds}) ...", file=sys.stderr,
                  flush=True)
            run = _run(args, name, shapes)
            if name not in candidates:
                candidates[name] = run
                continue
            # Rounds pool their steps (load drift on a shared machine
            # spreads over all candidates alike); memory: the largest.
            pooled = candidates[name]
            pooled["times_s"] = pooled["times_s"] + run["times_s"]
            pooled.update(_common.summarize(pooled["times_s"]))
            pooled["finite"] = pooled["finite"] and run["finite"]
            for key in ("rss_added_bytes", "peak_rss_added_bytes",
                        "vars_and_grads_rss_bytes"):
                if run[key] is not None and (pooled[key] is None
                                             or run[key] > pooled[key]):
                    pooled[key] = run[key]
    return candidates


def benchmark(args):
    """Runs every candidate; the result dict (also printed)."""
    config = MODELS[args.model]
    shapes = bert_shapes(**config)
    params = parameter_count(shapes)
    load_before = _common.load_average()

    bandwidth = _run(args, "bandwidth", shapes)
    bytes_per_param = floor_bytes_per_param(args.dtype,
                                            args.gradient_accumulation_steps)
    floor_s = bytes_per_param * params / bandwidth["best_bytes_per_s"]
    exact_bytes_per_param = exact_floor_bytes_per_param(
        args.dtype, args.gradient_accumulation_steps)
    exact_floor_s = (exact_bytes_per_param * params
                     / bandwidth["best_bytes_per_s"])

    candidates = _run_rounds(args, shapes)
    # The headline figures compare the default configurations (XLA); the
    # optional candidates stand in only when those were not run.
    tf_lamb_name = _best(candidates, TF_LAMB) or _best(
        candidates, [n for n in OPTIONAL if n.startswith("tf_lamb")])
    baseline_name = _best(candidates, KERAS_LAMB) or _best(
        candidates, [n for n in OPTIONAL if n.startswith("keras_lamb")])
    result = {
        "benchmark": "optimizer_step",
        "model": args.model,
        "model_config": config,
        "dtype": args.dtype,
        "parameters": params,
        "variables": len(shapes),
        "steps": args.steps,
        "warmup": args.warmup,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "rounds": args.rounds,
        "isolation": args.isolation,
        "tf_lamb_source": _common.tf_lamb_source(),
        # floor_*: the copy floor; exact_floor_*: the exact-LAMB floor.
        "floor_bytes_per_param": bytes_per_param,
        "exact_floor_bytes_per_param": exact_bytes_per_param,
        "bandwidth_bytes_per_s": bandwidth["bandwidth_bytes_per_s"],
        "bandwidth_best_method": bandwidth["best_method"],
        "bandwidth_gb_per_s": bandwidth["best_bytes_per_s"] / 1e9,
        "floor_s": floor_s,
        "exact_floor_s": exact_floor_s,
        # The floor at each measured bandwidth (numpy_copyto: one thread).
        "floor_s_by_method": {
            k: bytes_per_param * params / v
            for k, v in bandwidth["bandwidth_bytes_per_s"].items()},
        "candidates": {
            name: {k: r[k] for k in (
                "median_s", "min_s", "max_s", "times_s", "rss_added_bytes",
                "peak_rss_added_bytes", "vars_and_grads_rss_bytes", "finite")}
            for name, r in candidates.items()},
        "tf_lamb": tf_lamb_name,
        "baseline": baseline_name,
        "machine": _common.machine_info(),
    }
    result["machine"]["load_average_before"] = load_before
    if tf_lamb_name:
        tf_lamb = candidates[tf_lamb_name]
        result["tf_lamb_median_s"] = tf_lamb["median_s"]
        result["tf_lamb_min_s"] = tf_lamb["min_s"]
        result["ratio_to_floor"] = tf_lamb["median_s"] / floor_s
        result["ratio_to_exact_floor"] = tf_lamb["median_s"] / exact_floor_s
        result["ratio_to_numpy_copyto_floor"] = (
            tf_lamb["median_s"]
            / result["floor_s_by_method"]["numpy_copyto"])
        result["tf_lamb_peak_rss_added_bytes"] = tf_lamb[
            "peak_rss_added_bytes"]
        result["tf_lamb_rss_added_bytes"] = tf_lamb["rss_added_bytes"]
    if baseline_name:
        result["baseline_median_s"] = candidates[baseline_name]["median_s"]
        result["baseline_min_s"] = candidates[baseline_name]["min_s"]
    if tf_lamb_name and baseline_name:
        result["speedup_vs_keras"] = (result["baseline_median_s"]
                                      / result["tf_lamb_median_s"])
    return result


def _step_noun(result):
    k = result.get("gradient_accumulation_steps", 1)
    return "steps" if k == 1 else f"cycles of {k} calls (accumulation)"


def report(result):
    baseline = result.get("baseline")
    base_time = result.get("baseline_median_s")
    print(f"\nLAMB optimizer step, BERT-{result['model']} shapes: "
          f"{result['parameters']:,} parameters in {result['variables']} "
          f"variables, {result['dtype']}; median of {result['steps']} "
          f"{_step_noun(result)} "
          f"x {result['rounds']} round(s) "
          f"after {result['warmup']} warm-up")
    print(f"{_common.floor_line(result)} (copy floor at numpy_copyto's "
          f"bandwidth: "
          f"{_common.fmt_seconds(result['floor_s_by_method']['numpy_copyto'])})")
    rows = []
    for name, c in result["candidates"].items():
        marks = []
        if name == result.get("tf_lamb"):
            marks.append("tf_lamb")
        if name == baseline:
            marks.append("baseline")
        rows.append([
            name + (f" [{', '.join(marks)}]" if marks else ""),
            _common.fmt_seconds(c["median_s"]),
            _common.fmt_seconds(c["min_s"]),
            _common.fmt_ratio(base_time / c["median_s"]) if base_time else "-",
            _common.fmt_ratio(c["median_s"] / result["exact_floor_s"]),
            _common.fmt_ratio(c["median_s"] / result["floor_s"]),
            _common.fmt_bytes(c["peak_rss_added_bytes"]),
            _common.fmt_bytes(c["rss_added_bytes"]),
        ])
    rows += _common.floor_rows(result, base_time, 2)
    _common.print_table(["candidate", "median", "min", "speed-up vs keras",
                         "to exact floor", "to copy floor", "peak RSS added",
                         "RSS added (end)"], rows)
    if "speedup_vs_keras" in result:
        print(f"tf_lamb ({result['tf_lamb']}) "
              f"{_common.fmt_seconds(result['tf_lamb_median_s'])}: "
              f"{result['speedup_vs_keras']:.2f}x faster than keras Lamb "
              f"({baseline}), {result['ratio_to_exact_floor']:.2f}x the "
              f"exact-LAMB floor ({result['ratio_to_floor']:.2f}x the copy "
              f"floor)")
    _common.print_load(result["machine"])


def main(argv=None):
    return _common.run_main(argv, parse_args, _run_worker, benchmark, report)


def _run_worker(args):
    if args.worker == "bandwidth":
        return run_bandwidth(args)
    return run_candidate(args, bert_shapes(**MODELS[args.model]))


if __name__ == "__main__":
    main()
