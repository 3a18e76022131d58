r"""Batch-size scaling study: tf_lamb.Lamb vs keras AdamW vs keras Lamb.

LAMB's reason to exist is that it keeps accuracy as the batch grows (You et
al., ICLR 2020). This study pretrains the same small BERT on the same
examples, for the same number of training examples, at each batch size, with
each optimizer, and reports the held-out masked-LM loss:

  - updates = examples / batch size, so a 4x larger batch makes 4x fewer
    updates; a batch larger than --max_micro_batch runs as several
    micro-batches of gradient accumulation (one update each);
  - each (optimizer, batch size) tries a small learning-rate grid around the
    square-root scaling rule, lr = base_lr * sqrt(batch / base_batch) times
    each of --lr_multipliers, with linear warmup over --warmup_share of its
    updates, then linear decay to 0; the best by held-out MLM loss is kept,
    so that no optimizer is judged on one unlucky learning rate;
  - every run is evaluated on examples made from documents that training
    never sees (train.evaluation, as Google BERT's --do_eval); the largest
    batch is also evaluated along the way, for the curve of loss against
    examples seen.

Outputs, under --output_dir, written as they happen:

  data/          the study's examples (train and held-out), vocabulary and
                 BERT config, made once and reused by every run and rerun
  study.json     the settings that make runs comparable; a rerun with other
                 settings stops with an error instead of mixing results
  results.jsonl  one JSON line per finished run; a rerun skips the runs found
                 here, so an interrupted study loses at most the run it was in
  runs/          each run's model directory (checkpoint, TensorBoard logs)
  table.md       the best run per (optimizer, batch size), also printed
  batch_scaling.png   (with matplotlib, `pip install tf_lamb[study]`) held-out
                 MLM loss against batch size, and loss against examples seen
                 for the largest batch

  python -m benchmarks.batch_scaling --output_dir=/tmp/study          # 36 runs
  python -m benchmarks.batch_scaling --quick --output_dir=/tmp/quick  # < 2 min

On an accelerator, the same command with a strategy and a bigger model:

  python -m benchmarks.batch_scaling --output_dir=gs://b/study \
      --strategy=tpu --tpu=$TPU_NAME --layers=4 --hidden=256 --heads=4 \
      --intermediate=1024 --seq_length=128 --max_predictions=20 \
      --batch_sizes=256,1024,4096,16384,65536 --examples=8388608 \
      --max_micro_batch=16384 --steps_per_loop=100

It is a benchmark, not a test of the outcome: which optimizer wins depends on
the model, the data and the budget, and is whatever the run measured.
"""

import argparse
import gc
import json
import math
import os
import shutil
import sys
import time

from benchmarks import _common

OPTIMIZERS = ("tf_lamb", "keras_adamw", "keras_lamb")
LABELS = {"tf_lamb": "tf_lamb.Lamb", "keras_adamw": "keras AdamW",
          "keras_lamb": "keras Lamb"}
DEFAULT_BATCH_SIZES = (64, 256, 1024, 4096)
DEFAULT_LR_MULTIPLIERS = (0.5, 1.0, 2.0)
# Peak learning rates at --base_batch_size, from which the square-root rule
# scales. LAMB's step is lr times each layer's weight norm, and BERT's
# weights start at std 0.02, so LAMB takes ~10x Adam's rate. Chosen by a probe
# on this CPU (batch 256, 8192 examples, default model: held-out MLM loss
# best at 8e-3 for AdamW among 5e-4..1.6e-2 and flat over 4e-2..1.6e-1 for
# both LAMBs), one notch lower since the default study trains on 4x the
# examples.
DEFAULT_BASE_LEARNING_RATES = {"tf_lamb": 4e-2, "keras_adamw": 4e-3,
                               "keras_lamb": 4e-2}
# What makes two runs comparable: a rerun must agree on these.
STUDY_KEYS = ("examples", "base_batch_size", "warmup_share", "layers",
              "hidden", "heads", "intermediate", "seq_length",
              "max_predictions", "vocab_size", "dropout", "max_documents",
              "eval_share", "dupe_factor", "eval_dupe_factor", "weight_decay",
              "global_clipnorm", "seed", "mixed_precision", "input_file")
RESULTS_FILE = "results.jsonl"
STUDY_FILE = "study.json"
TABLE_FILE = "table.md"
PLOT_FILE = "batch_scaling.png"


class StudyError(ValueError):
    """Settings that cannot make a study; the message names the problem."""


# -- settings -----------------------------------------------------------------

def _ints(text):
    return tuple(int(x) for x in text.split(",") if x.strip())


def _floats(text):
    return tuple(float(x) for x in text.split(",") if x.strip())


def _names(text):
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _base_rates(text):
    """'tf_lamb=1e-2,keras_adamw=1e-3' -> dict, over the defaults."""
    rates = dict(DEFAULT_BASE_LEARNING_RATES)
    for item in _names(text):
        name, sep, value = item.partition("=")
        if not sep or name not in OPTIMIZERS:
            raise argparse.ArgumentTypeError(
                f"--base_learning_rates takes optimizer=rate pairs with "
                f"optimizers among {list(OPTIMIZERS)}, got {item!r}")
        rates[name] = float(value)
    return rates


# --quick: 2 batch sizes, 1 learning rate, a few hundred examples of a
# smaller model; the settings a flag given explicitly does not override.
QUICK = dict(batch_sizes=(8, 32), lr_multipliers=(1.0,), examples=256,
             base_batch_size=8, max_documents=300, seq_length=32,
             max_predictions=5, vocab_size=600, hidden=32, intermediate=128,
             dupe_factor=2, eval_dupe_factor=1, max_micro_batch=16,
             curve_points=2)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True,
        help="where the data, runs, results.jsonl, table and plot go; a "
        "rerun into the same directory skips the finished runs")
    add("--quick", action="store_true",
        help="a smoke run: " + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + " (flags given explicitly win)")
    # -- the grid
    add("--optimizers", type=_names, default=OPTIMIZERS,
        help=f"comma-separated, among {','.join(OPTIMIZERS)}")
    add("--batch_sizes", type=_ints, default=DEFAULT_BATCH_SIZES)
    add("--lr_multipliers", type=_floats, default=DEFAULT_LR_MULTIPLIERS,
        help="the grid around the square-root rule")
    add("--base_learning_rates", type=_base_rates,
        default=dict(DEFAULT_BASE_LEARNING_RATES),
        help="optimizer=peak rate at --base_batch_size; defaults "
        + ",".join(f"{k}={v:g}" for k, v in
                   DEFAULT_BASE_LEARNING_RATES.items()))
    add("--base_batch_size", type=int, default=256,
        help="the batch the base learning rates are for")
    # 32768 = 8 updates of the largest default batch; 36 runs of it take
    # 35-55 min on the 2-core CPU this project is developed on.
    add("--examples", type=int, default=32768,
        help="training examples per run (updates = examples / batch size)")
    add("--warmup_share", type=float, default=0.1,
        help="share of each run's updates spent warming up")
    add("--max_micro_batch", type=int, default=1024,
        help="larger batches run as micro-batches of at most this many "
        "examples (gradient accumulation), to bound the memory")
    add("--curve_points", type=int, default=8,
        help="held-out evaluations along the largest batch's runs")
    # -- optimizer settings shared by all three
    add("--weight_decay", type=float, default=0.01)
    add("--global_clipnorm", type=float, default=1.0,
        help="gradient clipping by global norm (0: none), for all three")
    # -- model and data
    add("--layers", type=int, default=2)
    add("--hidden", type=int, default=64)
    add("--heads", type=int, default=2)
    add("--intermediate", type=int, default=256)
    add("--dropout", type=float, default=0.1)
    add("--seq_length", type=int, default=64)
    add("--max_predictions", type=int, default=10)
    add("--vocab_size", type=int, default=2000,
        help="vocabulary to learn from the training documents")
    add("--input_file", type=_names, default=None,
        help="comma-separated text files or patterns (one sentence per "
        "line, a blank line between documents, as "
        "train.create_pretraining_data reads); default: Python's "
        "docstrings (about 150 k words, too few for a big model)")
    add("--max_documents", type=int, default=0,
        help="documents to use (the first ones); 0: all")
    add("--eval_share", type=float, default=0.1,
        help="share of the documents held out for evaluation")
    add("--dupe_factor", type=int, default=5,
        help="maskings of each training document")
    add("--eval_dupe_factor", type=int, default=2)
    add("--eval_batch_size", type=int, default=256)
    add("--seed", type=int, default=42)
    # -- where it runs
    add("--strategy", default="one_device",
        help="one_device, mirrored, multi_worker or tpu, as train.pretrain")
    add("--tpu", default=None)
    add("--num_gpus", type=int, default=None)
    add("--mixed_precision", default="float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    add("--jit_compile", action="store_true")
    add("--steps_per_loop", type=int, default=50,
        help="updates per call of the compiled loop")
    add("--no_plot", action="store_true", help="skip the figure")
    add("--report_only", action="store_true",
        help="print the table and draw the figure from results.jsonl; run "
        "nothing")
    args = parser.parse_args(argv)
    if args.quick:
        given = {a.split("=")[0].lstrip("-") for a in argv
                 if a.startswith("--")}
        for name, value in QUICK.items():
            if name not in given:
                setattr(args, name, value)
    try:
        check_args(args)
    except StudyError as error:
        parser.error(str(error))
    return args


def check_args(args):
    """StudyError for settings that make no study."""
    unknown = [o for o in args.optimizers if o not in OPTIMIZERS]
    if unknown or not args.optimizers:
        raise StudyError(f"--optimizers must be among {list(OPTIMIZERS)}, "
                         f"got {list(args.optimizers)}")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise StudyError(f"--batch_sizes must be positive, got "
                         f"{list(args.batch_sizes)}")
    if not args.lr_multipliers or min(args.lr_multipliers) <= 0:
        raise StudyError(f"--lr_multipliers must be > 0, got "
                         f"{list(args.lr_multipliers)}")
    for name in ("examples", "base_batch_size", "max_micro_batch",
                 "curve_points", "eval_batch_size", "steps_per_loop",
                 "dupe_factor", "eval_dupe_factor"):
        if getattr(args, name) < 1:
            raise StudyError(f"--{name} must be >= 1, got "
                             f"{getattr(args, name)}")
    for batch in args.batch_sizes:
        if args.examples % batch:
            raise StudyError(
                f"--examples={args.examples} is not a multiple of batch size "
                f"{batch}: every batch size must see the same examples")
        micro = micro_batch(batch, args.max_micro_batch)
        if batch % micro:
            raise StudyError(f"batch size {batch} is not a multiple of its "
                             f"micro-batch {micro}")
    if not 0 <= args.warmup_share < 1:
        raise StudyError(f"--warmup_share must be in [0, 1), got "
                         f"{args.warmup_share}")
    if not 0 < args.eval_share < 1:
        raise StudyError(f"--eval_share must be in (0, 1), got "
                         f"{args.eval_share}")
    for name, rate in args.base_learning_rates.items():
        if not rate > 0:
            raise StudyError(f"--base_learning_rates: {name} must be > 0")


def micro_batch(batch, cap):
    """The largest micro-batch <= cap that divides `batch`."""
    if batch <= cap:
        return batch
    for size in range(cap, 0, -1):
        if batch % size == 0:
            return size
    return 1


def learning_rate(args, optimizer, batch, multiplier):
    """The square-root rule from the base batch, times `multiplier`."""
    base = args.base_learning_rates[optimizer]
    rate = base * math.sqrt(batch / args.base_batch_size) * multiplier
    return float(f"{rate:.6g}")  # 6 digits: the same key in the JSON


def warmup_steps(updates, share):
    return int(round(updates * share))


def plan(args):
    """Every run of the study: dicts of optimizer, batch_size, lr_multiplier,
    learning_rate, updates, micro_batch_size, accumulation, warmup_steps."""
    runs = []
    for batch in sorted(args.batch_sizes):
        updates = args.examples // batch
        micro = micro_batch(batch, args.max_micro_batch)
        for optimizer in args.optimizers:
            for multiplier in args.lr_multipliers:
                runs.append(dict(
                    optimizer=optimizer, batch_size=batch,
                    lr_multiplier=multiplier,
                    learning_rate=learning_rate(args, optimizer, batch,
                                                multiplier),
                    updates=updates, examples=updates * batch,
                    micro_batch_size=micro,
                    gradient_accumulation_steps=batch // micro,
                    warmup_steps=warmup_steps(updates, args.warmup_share)))
    return runs


def run_key(run):
    return (run["optimizer"], int(run["batch_size"]),
            float(f"{run['learning_rate']:.6g}"))


def run_name(run):
    return (f"{run['optimizer']}_b{run['batch_size']}_"
            f"lr{run['learning_rate']:.6g}")


def study_settings(args):
    return {key: getattr(args, key) for key in STUDY_KEYS}


def check_study_file(output_dir, settings):
    """Writes study.json, or checks a rerun agrees with the one there."""
    path = os.path.join(output_dir, STUDY_FILE)
    if os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(settings)
                         if saved.get(k) != settings.get(k))
        if changed:
            raise StudyError(
                f"{output_dir} holds a study with other settings ("
                + ", ".join(f"{k}: {saved.get(k)!r} there, "
                            f"{settings.get(k)!r} now" for k in changed)
                + "); its results would not be comparable: use another "
                "--output_dir, or the same settings")
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(settings, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


# -- results ------------------------------------------------------------------

def read_results(path):
    """The complete JSON lines of results.jsonl; an incomplete line (a study
    killed while writing) is dropped and the file rewritten without it."""
    if not os.path.exists(path):
        return []
    records, dropped = [], 0
    with open(path) as f:
        lines = f.read().split("\n")
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            dropped += 1
            continue
        if isinstance(record, dict) and "optimizer" in record:
            records.append(record)
        else:
            dropped += 1
    if dropped:
        print(f"{path}: dropped {dropped} incomplete line(s); their runs are "
              f"redone", flush=True)
        _rewrite(path, records)
    return records


def _rewrite(path, records):
    with open(path + ".tmp", "w") as f:
        for record in records:
            f.write(json.dumps(record, sort_keys=True) + "\n")
    os.replace(path + ".tmp", path)


def append_result(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _finite(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def best_runs(records):
    """{(optimizer, batch_size): the record of lowest held-out MLM loss};
    a diverged run (no finite loss) is never best, but a pair whose runs
    all diverged keeps one, so the table shows it."""
    best = {}
    for record in records:
        key = (record["optimizer"], record["batch_size"])
        loss = record.get("eval_masked_lm_loss")
        current = best.get(key)
        if current is None:
            best[key] = record
            continue
        current_loss = current.get("eval_masked_lm_loss")
        if _finite(loss) and (not _finite(current_loss)
                              or loss < current_loss):
            best[key] = record
    return best


def _fmt(value, digits=4):
    return f"{value:.{digits}f}" if _finite(value) else "diverged"


def table_rows(records):
    """Rows of the table of best runs, by batch size then optimizer."""
    best = best_runs(records)
    grid = {}
    for record in records:
        grid.setdefault((record["optimizer"], record["batch_size"]),
                        set()).add(record["lr_multiplier"])
    order = {name: i for i, name in enumerate(OPTIMIZERS)}
    rows = []
    for (optimizer, batch), record in sorted(
            best.items(), key=lambda kv: (kv[0][1], order.get(kv[0][0], 99))):
        tried = sorted(grid[(optimizer, batch)])
        multiplier = record["lr_multiplier"]
        # A best rate at the edge of the grid may not be the optimum.
        edge = len(tried) > 1 and multiplier in (tried[0], tried[-1])
        rows.append([
            batch, LABELS.get(optimizer, optimizer),
            f"{record['learning_rate']:.3g} ({multiplier:g}x)"
            + (" edge" if edge else ""),
            f"{record['updates']}"
            + (f" ({record['gradient_accumulation_steps']}x"
               f"{record['micro_batch_size']})"
               if record["gradient_accumulation_steps"] > 1 else ""),
            _fmt(record.get("eval_masked_lm_loss")),
            _fmt(record.get("eval_masked_lm_accuracy")),
            _fmt(record.get("eval_next_sentence_accuracy")),
            f"{record['wall_s']:.0f}"])
    return rows


TABLE_HEADER = ["batch", "optimizer", "best lr", "updates",
                "held-out MLM loss", "MLM acc", "NSP acc", "wall s"]


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_HEADER) + " |",
             "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot(records, path):
    """Draws the two panels into `path`; returns the matplotlib Figure."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    best = best_runs(records)
    optimizers = [o for o in OPTIMIZERS if any(k[0] == o for k in best)]
    figure, (by_batch, by_examples) = plt.subplots(1, 2, figsize=(10, 4))
    for optimizer in optimizers:
        points = sorted((batch, record["eval_masked_lm_loss"])
                        for (name, batch), record in best.items()
                        if name == optimizer
                        and _finite(record.get("eval_masked_lm_loss")))
        if points:
            by_batch.plot([p[0] for p in points], [p[1] for p in points],
                          marker="o", label=LABELS[optimizer])
    by_batch.set_xscale("log", base=2)
    batches = sorted({k[1] for k in best})
    by_batch.set_xticks(batches, [str(b) for b in batches])
    by_batch.minorticks_off()
    by_batch.set_xlabel("batch size (same examples: fewer updates)")
    by_batch.set_ylabel("held-out MLM loss (best lr)")
    by_batch.set_title("Loss after the same training examples")
    by_batch.legend()
    by_batch.grid(True, alpha=0.3)

    largest = max((k[1] for k in best), default=None)
    for optimizer in optimizers:
        record = best.get((optimizer, largest))
        if not record or not record.get("curve"):
            continue
        curve = [p for p in record["curve"] if _finite(p[1])]
        by_examples.plot([p[0] for p in curve], [p[1] for p in curve],
                         marker=".", label=LABELS[optimizer])
    by_examples.set_xlabel("training examples seen")
    by_examples.set_ylabel("held-out MLM loss")
    by_examples.set_title(f"Batch {largest} (best lr of each)")
    by_examples.legend()
    by_examples.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return figure


def report(output_dir, records, draw=True, out=None):
    """Prints the table of best runs, writes table.md and the figure; returns
    the figure's path, or None when there is none."""
    out = out or sys.stdout
    rows = table_rows(records)
    if not rows:
        out.write("No finished run yet.\n")
        return None
    out.write("\nBest run per (optimizer, batch size), by held-out MLM "
              "loss:\n")
    _common.print_table(TABLE_HEADER, rows, out)
    with open(os.path.join(output_dir, TABLE_FILE), "w") as f:
        f.write(markdown_table(rows))
    if not draw:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out.write("matplotlib is not installed: no figure (pip install "
                  "'tf_lamb[study]')\n")
        return None
    path = os.path.join(output_dir, PLOT_FILE)
    plot(records, path)
    out.write(f"Figure: {path}\n")
    return path


# -- data and runs ------------------------------------------------------------

def make_data(args, data_dir):
    """Train and held-out TFRecords, vocabulary and BERT config, made once:
    every `1 / eval_share`-th document is held out, so that evaluation sees
    text training never does. Returns a dict of their paths."""
    paths = dict(train=os.path.join(data_dir, "train.tfrecord"),
                 eval=os.path.join(data_dir, "eval.tfrecord"),
                 vocab=os.path.join(data_dir, "vocab.txt"),
                 bert_config=os.path.join(data_dir, "bert_config.json"))
    done = os.path.join(data_dir, "data.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)["paths"]
    from train import corpus
    from train import create_pretraining_data as cpd
    from train import modeling
    started = time.time()
    if os.path.isdir(data_dir):
        shutil.rmtree(data_dir)  # a half-made one
    os.makedirs(data_dir)
    if args.input_file:
        try:
            documents = cpd.read_documents(list(args.input_file))
        except ValueError as error:
            raise StudyError(f"--input_file: {error}") from None
        documents = documents[:args.max_documents or None]
    else:
        documents = corpus.stdlib_documents(args.max_documents or None)
    every = max(2, int(round(1 / args.eval_share)))
    held_out = documents[::every]
    training = [d for i, d in enumerate(documents) if i % every]
    if len(held_out) < 2 or len(training) < 2:
        raise StudyError(f"{len(documents)} documents are too few to hold "
                         f"out {args.eval_share:g} of them")
    _, train_count = cpd.create_pretraining_data(
        training, [paths["train"]], output_vocab_file=paths["vocab"],
        max_seq_length=args.seq_length, max_predictions=args.max_predictions,
        dupe_factor=args.dupe_factor, vocab_size=args.vocab_size,
        seed=args.seed)
    _, eval_count = cpd.create_pretraining_data(
        held_out, [paths["eval"]], vocab_file=paths["vocab"],
        max_seq_length=args.seq_length, max_predictions=args.max_predictions,
        dupe_factor=args.eval_dupe_factor, seed=args.seed + 1)
    vocab = len(cpd.read_vocab(paths["vocab"]))
    bert_config = modeling.BertConfig(
        vocab_size=vocab, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        max_position_embeddings=args.seq_length).validated("the study")
    with open(paths["bert_config"], "w") as f:
        f.write(bert_config.to_json_string())
    info = dict(paths=paths, train_documents=len(training),
                eval_documents=len(held_out), train_examples=train_count,
                eval_examples=eval_count, vocab_size=vocab,
                seconds=time.time() - started)
    with open(done + ".tmp", "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(done + ".tmp", done)
    print(f"Data: {len(training)} training documents -> {train_count} "
          f"examples; {len(held_out)} held-out documents -> {eval_count} "
          f"examples; vocabulary {vocab} ({time.time() - started:.0f} s)",
          flush=True)
    return paths


def optimizer_factory(name, run, args):
    """A function from the learning-rate schedule to the optimizer `name`,
    with the settings all three share: weight decay (not of LayerNorm and
    biases), global-norm clipping, and gradient accumulation of the run;
    None for tf_lamb.Lamb, which run_pretraining builds from the config."""
    if name == "tf_lamb":
        return None
    import keras
    excluded = ["LayerNorm", "layer_norm", "bias"]
    common = dict(
        weight_decay=args.weight_decay or None,
        global_clipnorm=args.global_clipnorm or None,
        gradient_accumulation_steps=(
            run["gradient_accumulation_steps"]
            if run["gradient_accumulation_steps"] > 1 else None))

    def make(schedule):
        if name == "keras_adamw":
            # BERT's Adam: beta_2 0.999, epsilon 1e-6.
            optimizer = keras.optimizers.AdamW(
                learning_rate=schedule, beta_1=0.9, beta_2=0.999,
                epsilon=1e-6, **common)
        else:
            optimizer = keras.optimizers.Lamb(
                learning_rate=schedule, beta_1=0.9, beta_2=0.999,
                epsilon=1e-6, **common)
        if common["weight_decay"]:
            optimizer.exclude_from_weight_decay(var_names=excluded)
        return optimizer
    return make


def run_config(args, run, paths, model_dir, eval_every):
    from train import PretrainConfig
    return PretrainConfig(
        strategy=args.strategy, tpu=args.tpu, num_gpus=args.num_gpus,
        bert_config_file=paths["bert_config"], vocab_file=paths["vocab"],
        train_files=(paths["train"],), max_seq_length=args.seq_length,
        max_predictions_per_seq=args.max_predictions,
        train_batch_size=run["batch_size"],
        gradient_accumulation_steps=run["gradient_accumulation_steps"],
        num_train_steps=run["updates"], learning_rate=run["learning_rate"],
        warmup_steps=run["warmup_steps"], end_learning_rate=0.0,
        weight_decay=args.weight_decay,
        global_clipnorm=args.global_clipnorm,
        mixed_precision=args.mixed_precision, jit_compile=args.jit_compile,
        steps_per_loop=args.steps_per_loop, mode="train_and_eval",
        eval_files=(paths["eval"],), eval_batch_size=args.eval_batch_size,
        eval_every_steps=eval_every, model_dir=model_dir,
        # One checkpoint, at the end; logs at the evaluations only.
        save_checkpoints_steps=run["updates"],
        log_steps=eval_every or run["updates"], export_dir="none",
        seed=args.seed)


def eval_curve(model_dir):
    """[(update, held-out MLM loss)] from the run's TensorBoard eval log."""
    import tensorflow as tf
    from train import evaluation
    points = {}
    logdir = os.path.join(model_dir, evaluation.EVAL_SUBDIR)
    for path in sorted(tf.io.gfile.glob(os.path.join(logdir, "events.*"))):
        for data in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(data)
            for value in event.summary.value:
                if value.tag == "masked_lm_loss":
                    points[int(event.step)] = float(
                        tf.make_ndarray(value.tensor)
                        if value.HasField("tensor") else value.simple_value)
    return sorted(points.items())


def execute(args, run, paths, strategy, largest):
    """Trains and evaluates one run; returns its JSON record."""
    import keras
    from train import run_pretraining
    model_dir = os.path.join(args.output_dir, "runs", run_name(run))
    if os.path.isdir(model_dir):
        shutil.rmtree(model_dir)  # left by an interrupted study
    eval_every = None
    if run["batch_size"] == largest and args.curve_points > 1:
        eval_every = max(1, run["updates"] // args.curve_points)
    config = run_config(args, run, paths, model_dir, eval_every)
    started = time.time()
    result = run_pretraining(config, strategy=strategy,
                             optimizer_fn=optimizer_factory(
                                 run["optimizer"], run, args))
    wall = time.time() - started
    metrics = result["eval"] or {}
    curve = [[update * run["batch_size"], _finite_or_none(loss)]
             for update, loss in eval_curve(model_dir)]
    record = dict(run)
    record.update(
        eval_masked_lm_loss=_finite_or_none(metrics.get("masked_lm_loss")),
        eval_masked_lm_accuracy=_finite_or_none(
            metrics.get("masked_lm_accuracy")),
        eval_next_sentence_accuracy=_finite_or_none(
            metrics.get("next_sentence_accuracy")),
        eval_next_sentence_loss=_finite_or_none(
            metrics.get("next_sentence_loss")),
        eval_examples=metrics.get("examples"),
        train_mlm_loss=_finite_or_none(result["mlm_loss"]),
        examples_per_second=result["examples_per_second"],
        wall_s=wall, curve=curve, strategy=args.strategy,
        replicas=result["trainer"].replicas, model_dir=model_dir,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    del result
    keras.backend.clear_session()
    gc.collect()
    return record


def _finite_or_none(value):
    return float(value) if _finite(value) else None


def run_study(args):
    """Runs the runs of the plan not yet in results.jsonl; returns all
    records of the plan's runs, in the plan's order."""
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, RESULTS_FILE)
    if args.report_only:
        return read_results(results_path)
    check_study_file(args.output_dir, study_settings(args))
    records = read_results(results_path)
    done = {run_key(r): r for r in records}
    runs = plan(args)
    todo = [r for r in runs if run_key(r) not in done]
    print(f"{len(runs)} runs in the plan, {len(runs) - len(todo)} already in "
          f"{results_path}, {len(todo)} to run", flush=True)
    if todo:
        from train.pretrain_lib import make_strategy
        from train import PretrainConfig
        # One strategy for every run (a TPU is initialised once); bad
        # strategy flags fail here, before the data is made.
        strategy = make_strategy(PretrainConfig(
            strategy=args.strategy, tpu=args.tpu, num_gpus=args.num_gpus))
        paths = make_data(args, os.path.join(args.output_dir, "data"))
        largest = max(args.batch_sizes)
        study_started = time.time()
        for i, run in enumerate(todo):
            print(f"[{i + 1}/{len(todo)}] {run_name(run)}: {run['updates']} "
                  f"updates of {run['batch_size']} ("
                  f"{run['gradient_accumulation_steps']} x "
                  f"{run['micro_batch_size']}), warmup "
                  f"{run['warmup_steps']}", flush=True)
            record = execute(args, run, paths, strategy, largest)
            append_result(results_path, record)
            done[run_key(record)] = record
            print(f"[{i + 1}/{len(todo)}] {run_name(run)}: held-out MLM loss "
                  f"{_fmt(record['eval_masked_lm_loss'])} in "
                  f"{record['wall_s']:.0f} s (study "
                  f"{time.time() - study_started:.0f} s)", flush=True)
    return [done[run_key(r)] for r in runs if run_key(r) in done]


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    from train import InputError
    try:
        records = run_study(args)
    except (StudyError, InputError) as error:
        sys.exit(f"error: {error}")
    report(args.output_dir, records, draw=not args.no_plot)
    load = _common.load_average()
    print(f"wall time {time.time() - started:.0f} s; load average "
          f"(1/5/15 min) {' '.join(f'{x:.2f}' for x in load or [])} on "
          f"{os.cpu_count()} CPUs", flush=True)
    return records


if __name__ == "__main__":
    main()
