r"""A whole BERT train step with tf_lamb.Lamb vs keras.optimizers.Lamb.

Tells whether the optimizer still matters in real training: the project's
BERT (`train.model.bert.BertPretrainer`: Google's architecture, tanh gelu,
dropout 0.1 with a fixed seed) of the size the flags give is trained on
random tokens (15 % of the positions masked, random next-sentence labels)
with the pretraining loss (masked LM + next sentence, as `train.loop.trainer`
takes it) in one `tf.function(jit_compile=True)` step (forward + backward +
apply), timed for

  fwd_bwd     forward + backward only: the loss and the gradients, whose
              squared global norm is returned so that XLA cannot drop them
  tf_lamb     the same plus tf_lamb.Lamb().apply_gradients
  keras_lamb  the same plus keras.optimizers.Lamb().apply_gradients

with their steps interleaved in one process (or, with --isolation=process,
each in its own subprocess). The optimizer's share of a step is estimated as
(step - fwd_bwd) / step.

  python -m benchmarks.train_step --json_out=/tmp/train_step.json
  python -m benchmarks.train_step --layers=12 --hidden=768 --heads=12 \
      --intermediate=3072 --seq_len=128 --batch=8       # BERT-base sized
"""

import argparse
import math
import sys

import keras
import numpy as np
import tensorflow as tf

import tf_lamb
from benchmarks import _common
from train.model import bert

CANDIDATES = ("fwd_bwd", "tf_lamb", "keras_lamb")


def bert_config(args):
    """The model the flags describe, as a `train.model.bert.BertConfig`."""
    return bert.BertConfig(
        vocab_size=args.vocab, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        max_position_embeddings=max(512, args.seq_len)).validated()


def predictions_per_sequence(seq_len):
    return max(1, int(math.ceil(0.15 * seq_len)))


def make_data(args):
    """One batch of random pretraining features (the input pipeline's
    names and dtypes)."""
    rng = np.random.default_rng(args.seed)
    predictions = predictions_per_sequence(args.seq_len)
    shape = (args.batch, args.seq_len)
    positions = np.stack([np.sort(rng.choice(args.seq_len, predictions,
                                             replace=False))
                          for _ in range(args.batch)])
    features = {
        "input_ids": rng.integers(0, args.vocab, shape),
        "input_mask": np.ones(shape),
        "segment_ids": np.repeat(
            (np.arange(args.seq_len) >= args.seq_len // 2)[None].astype(int),
            args.batch, axis=0),
        "masked_lm_positions": positions,
        "masked_lm_ids": rng.integers(0, args.vocab,
                                      (args.batch, predictions)),
        "masked_lm_weights": np.ones((args.batch, predictions)),
        "next_sentence_labels": rng.integers(0, 2, (args.batch, 1)),
    }
    return {name: tf.constant(value, tf.float32 if name == "masked_lm_weights"
                              else tf.int32)
            for name, value in features.items()}


def pretraining_loss(features, mlm_logits, nsp_logits):
    """Mean masked-LM loss plus mean next-sentence loss."""
    stats = bert.pretraining_losses(features, mlm_logits, nsp_logits)
    return (stats["mlm_loss_sum"] / (stats["mlm_weight"] + 1e-5)
            + stats["nsp_loss_sum"] / stats["nsp_count"])


def setup_candidate(args, name):
    """A callable that runs (and waits for) one train step of `name`, the
    parameter count, and the list the losses are appended to."""
    keras.utils.set_random_seed(args.seed)
    model = bert.BertPretrainer(bert_config(args))
    model.build_for(args.seq_len, predictions_per_sequence(args.seq_len))
    features = make_data(args)
    dropout_seed = tf.constant([args.seed, 0], tf.int64)
    variables = model.trainable_variables
    params = sum(int(math.prod(v.shape)) for v in variables)

    optimizer = None
    if name == "tf_lamb":
        optimizer = tf_lamb.Lamb(learning_rate=args.learning_rate)
    elif name == "keras_lamb":
        optimizer = keras.optimizers.Lamb(learning_rate=args.learning_rate)
    elif name != "fwd_bwd":
        raise ValueError(f"Unknown candidate {name!r}")
    if optimizer is not None:
        optimizer.build(variables)

    def loss_and_grads():
        with tf.GradientTape() as tape:
            mlm_logits, nsp_logits = model(features, training=True,
                                           seed=dropout_seed)
            loss = pretraining_loss(features, mlm_logits, nsp_logits)
        return loss, tape.gradient(loss, variables)

    if optimizer is None:
        def step():
            loss, grads = loss_and_grads()
            grads = [tf.convert_to_tensor(g) for g in grads]
            norm_sq = tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
            return loss, norm_sq
    else:
        def step():
            loss, grads = loss_and_grads()
            optimizer.apply_gradients(zip(grads, variables))
            return loss, tf.constant(0.0)

    compiled = tf.function(step, jit_compile=True)
    losses = []

    def call():
        loss, _ = compiled()
        losses.append(float(loss))  # also waits for the step

    return call, params, losses


def _result(name, times, params, losses):
    result = {"candidate": name, "times_s": times, "parameters": params,
              "first_loss": losses[0], "last_loss": losses[-1],
              "finite": all(math.isfinite(x) for x in losses)}
    result.update(_common.summarize(times))
    return result


def run_candidate(args):
    """One candidate alone (a worker subprocess)."""
    call, params, losses = setup_candidate(args, args.worker)
    times = _common.time_steps(call, args.steps, args.warmup)
    return _result(args.worker, times, params, losses)


def run_interleaved(args):
    """All candidates in this process, their steps taken in turn, so that
    the load of a shared machine weighs on all of them alike."""
    setups = {}
    for name in args.candidate_list:
        print(f"[train_step] building and compiling {name} ...",
              file=sys.stderr, flush=True)
        setups[name] = setup_candidate(args, name)
        for _ in range(args.warmup):
            setups[name][0]()
    times = {name: [] for name in setups}
    for _ in range(args.steps):
        for name, (call, _, _) in setups.items():
            times[name] += _common.time_steps(call, 1, 0)
    return {name: _result(name, times[name], params, losses)
            for name, (_, params, losses) in setups.items()}


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.train_step",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--intermediate", type=int, default=None,
                        help="default: 4 * hidden")
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--candidates", default=",".join(CANDIDATES),
                        help="comma-separated, from: " + ", ".join(CANDIDATES))
    parser.add_argument("--isolation", choices=("none", "process"),
                        default="none",
                        help="none: all candidates in this process, steps "
                        "interleaved (default); process: one subprocess each, "
                        "one after the other")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--json_out", default=None)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.intermediate is None:
        args.intermediate = 4 * args.hidden
    if args.hidden % args.heads:
        parser.error("--hidden must be a multiple of --heads")
    if args.seq_len < 2:
        parser.error("--seq_len must be >= 2 (two segments)")
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    names = [c.strip() for c in args.candidates.split(",") if c.strip()]
    if not names or any(c not in CANDIDATES for c in names):
        parser.error(f"--candidates: choose from {list(CANDIDATES)}")
    args.candidate_list = names
    return args


def _worker_argv(args, worker):
    argv = []
    for flag in ("layers", "hidden", "heads", "intermediate", "vocab",
                 "seq_len", "batch", "steps", "warmup", "learning_rate",
                 "seed"):
        argv += [f"--{flag}", str(getattr(args, flag))]
    return argv + ["--worker", worker]


def benchmark(args):
    load_before = _common.load_average()
    if args.isolation == "none":
        candidates = run_interleaved(args)
    else:
        candidates = {}
        for name in args.candidate_list:
            print(f"[train_step] running {name} ...", file=sys.stderr,
                  flush=True)
            candidates[name] = _common.run_worker(
                "benchmarks.train_step", _worker_argv(args, name),
                args.timeout, args.verbose)
    first = next(iter(candidates.values()))
    result = {
        "benchmark": "train_step",
        "model_config": {k: getattr(args, k) for k in (
            "layers", "hidden", "heads", "intermediate", "vocab", "seq_len",
            "batch")},
        "parameters": first["parameters"],
        "steps": args.steps,
        "warmup": args.warmup,
        "isolation": args.isolation,
        "tf_lamb_source": _common.tf_lamb_source(),
        "candidates": {
            name: {k: r[k] for k in ("median_s", "min_s", "max_s", "times_s",
                                     "first_loss", "last_loss", "finite")}
            for name, r in candidates.items()},
        "machine": _common.machine_info(),
    }
    result["machine"]["load_average_before"] = load_before
    fwd_bwd = candidates.get("fwd_bwd")
    for name in ("tf_lamb", "keras_lamb"):
        if name not in candidates:
            continue
        step = candidates[name]["median_s"]
        result[f"{name}_step_s"] = step
        if fwd_bwd:
            optimizer_s = step - fwd_bwd["median_s"]
            result[f"{name}_optimizer_s"] = optimizer_s
            result[f"{name}_optimizer_fraction"] = optimizer_s / step
    if fwd_bwd:
        result["fwd_bwd_s"] = fwd_bwd["median_s"]
    if "tf_lamb" in candidates and "keras_lamb" in candidates:
        result["step_speedup_vs_keras"] = (
            candidates["keras_lamb"]["median_s"]
            / candidates["tf_lamb"]["median_s"])
    return result


def report(result):
    config = result["model_config"]
    print(f"\nBERT train step (forward + backward + apply, one XLA "
          f"program): {result['parameters']:,} parameters, "
          f"{config['layers']} layers, hidden {config['hidden']}, "
          f"batch {config['batch']} x {config['seq_len']} tokens; median of "
          f"{result['steps']} steps after {result['warmup']} warm-up")
    rows = []
    for name, c in result["candidates"].items():
        optimizer_s = result.get(f"{name}_optimizer_s")
        fraction = result.get(f"{name}_optimizer_fraction")
        rows.append([
            name, _common.fmt_seconds(c["median_s"]),
            _common.fmt_seconds(c["min_s"]),
            _common.fmt_seconds(optimizer_s) if optimizer_s is not None
            else "-",
            f"{100 * fraction:.1f} %" if fraction is not None else "-",
            f"{c['first_loss']:.3f} -> {c['last_loss']:.3f}"])
    _common.print_table(["step", "median", "min", "optimizer (est.)",
                         "optimizer share", "loss"], rows)
    if "step_speedup_vs_keras" in result:
        print(f"train step with tf_lamb is "
              f"{result['step_speedup_vs_keras']:.2f}x as fast as with "
              f"keras Lamb")
    _common.print_load(result["machine"])


def main(argv=None):
    return _common.run_main(argv, parse_args, run_candidate, benchmark,
                            report)


if __name__ == "__main__":
    main()
