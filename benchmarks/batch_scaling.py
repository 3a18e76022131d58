r"""Batch-size scaling study: updates to a held-out loss target, per batch.

Measured as Shallue et al. (2018) measure data parallelism: for each
optimizer (tf_lamb.Lamb in two settings, keras AdamW, keras Lamb) and
batch size, how many
updates does training need to reach a fixed held-out masked-LM loss, with the
learning rate tuned at every batch size?

  1. Targets, fixed before the sweep: a reference run (--reference optimizer
     at --reference_batch, its square-root-rule rate, seed 0) is evaluated
     after --reference_examples / 2, x 1 and x 2 training examples; its
     held-out MLM losses there are the loose, main and tight targets
     (targets.json).
  2. Tuning, per (optimizer, batch): seed 0 at each rate of the grid
     lr = base_lr * sqrt(batch / base_batch) * m, m in --lr_multipliers
     (2x apart), ranked by updates to the main target; while the best rate
     sits at an edge of the grid, the grid grows by one rate 2x beyond it
     (at most --max_widenings times).
  3. Seeds: --seeds - 1 more seeds at the best rate (seed 0 is the tuning
     run); the report gives the median and range over the seeds.

Every run has the same schedule rule: linear warmup over --warmup_share of
its cap, then linear decay to 0 at the cap. The cap is in examples,
--cap_factor times the examples the reference takes to the tight target,
whatever the batch: a run's cost is its examples, and a batch that needs
that many more examples than the reference is far past perfect scaling. A
run stops at its first held-out evaluation at or below the tight target, or
at the cap; a target never reached is censored (null updates_to_target),
never dropped. A tuning run also stops once it has run --relative_cap times
the updates of the best rate so far without reaching the main target: it
cannot be the best (it is recorded as censored at that cap). Evaluations
happen every --eval_growth factor of updates (every update at first), once
the training loss is within --eval_gate of the loose target.

Outputs, under --output_dir, written as they happen:

  data/           examples (train and held-out documents), vocabulary, BERT
                  config; made once
  study.json      the settings; a rerun with other settings is refused
  targets.json    the reference run and the three targets
  results.jsonl   one JSON line per run; a rerun skips the runs found there
  table.md, batch_scaling.png   the report (benchmarks.batch_scaling_report)

  python -m benchmarks.batch_scaling --output_dir=/tmp/study  # 64 min, 2 CPUs at load 8
  python -m benchmarks.batch_scaling --quick --output_dir=/tmp/q  # < 2 min

Which optimizer wins is whatever the run measured.
"""

import argparse
import json
import math
import os
import sys
import time

from benchmarks import _common
from benchmarks import batch_scaling_report as report

# tf_lamb: the exclusions from weight decay, with TF Addons' meaning, also
# exclude LayerNorm and biases from the trust ratio; tf_lamb_trust_all: the
# same decay exclusions, the trust ratio on every variable (keras Lamb's
# choice), which is the ablation of that one difference.
OPTIMIZERS = ("tf_lamb", "keras_adamw", "keras_lamb", "tf_lamb_trust_all")
DEFAULT_BATCH_SIZES = (16, 64, 256, 1024)
DEFAULT_LR_MULTIPLIERS = (0.5, 1.0, 2.0, 4.0)
# Peak rates at --base_batch_size, from which the square-root rule scales:
# probes on this CPU (batch 64, default model) put AdamW's best near 8e-3;
# LAMB's step is lr times each layer's weight norm, so it takes ~5-10x.
DEFAULT_BASE_LEARNING_RATES = {"tf_lamb": 4e-2, "keras_adamw": 8e-3,
                               "keras_lamb": 4e-2, "tf_lamb_trust_all": 4e-2}
TARGET_NAMES = ("loose", "main", "tight")
STUDY_KEYS = (
    "base_batch_size", "base_learning_rates", "reference",
    "reference_batch", "reference_examples", "cap_factor", "relative_cap",
    "warmup_share", "eval_examples", "eval_growth", "eval_gate",
    "weight_decay", "global_clipnorm", "layers", "hidden", "heads",
    "intermediate", "dropout", "seq_length", "max_predictions",
    "vocab_size", "input_file", "max_documents", "eval_share",
    "dupe_factor", "eval_dupe_factor", "seed", "mixed_precision")
RESULTS_FILE = "results.jsonl"
STUDY_FILE = "study.json"
TARGETS_FILE = "targets.json"


class StudyError(ValueError):
    """Settings that cannot make a study; the message names the problem."""


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


# --quick: two batch sizes, two seeds, two rates, a tiny model on a few
# hundred documents; flags given explicitly win.
QUICK = dict(batch_sizes=(8, 32), seeds=2, lr_multipliers=(1.0, 2.0),
             max_widenings=1, base_batch_size=8, reference_batch=8,
             reference_examples=256, cap_factor=2, max_documents=300,
             vocab_size=600, hidden=16, intermediate=64, dupe_factor=2,
             eval_examples=128, eval_batch_size=64, eval_growth=1.25)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True,
        help="data, results.jsonl, targets, table and figure; a rerun into "
        "the same directory skips the finished runs")
    add("--quick", action="store_true",
        help="a smoke study: " + ", ".join(f"{k}={v}" for k, v in
                                           QUICK.items()))
    add("--optimizers", type=_names, default=OPTIMIZERS,
        help=f"comma-separated, among {','.join(OPTIMIZERS)}")
    add("--batch_sizes", type=_ints, default=DEFAULT_BATCH_SIZES)
    add("--seeds", type=int, default=3, help="seeds at the best rate")
    add("--lr_multipliers", type=_floats, default=DEFAULT_LR_MULTIPLIERS,
        help="the tuning grid around the square-root rule, 2x apart")
    add("--max_widenings", type=int, default=2,
        help="rates added beyond an edge of the grid that is best, at most")
    add("--base_learning_rates", type=_base_rates,
        default=dict(DEFAULT_BASE_LEARNING_RATES),
        help="optimizer=peak rate at --base_batch_size; defaults "
        + ",".join(f"{k}={v:g}" for k, v in
                   DEFAULT_BASE_LEARNING_RATES.items()))
    add("--base_batch_size", type=int, default=64)
    add("--reference", default="keras_adamw", choices=OPTIMIZERS,
        help="the optimizer of the run that fixes the targets")
    add("--reference_batch", type=int, default=64)
    add("--reference_examples", type=int, default=8192,
        help="the main target is the reference's held-out loss after this "
        "many examples; loose and tight after half and twice as many")
    add("--cap_factor", type=float, default=4.0,
        help="each run is capped at this many times the examples of the "
        "reference to the tight target")
    add("--relative_cap", type=float, default=1.5,
        help="a tuning run stops after this many times the updates of the "
        "best rate so far")
    add("--warmup_share", type=float, default=0.025,
        help="linear warmup over this share of the cap")
    add("--eval_examples", type=int, default=512,
        help="held-out examples per evaluation (the first ones)")
    add("--eval_growth", type=float, default=1.1,
        help="evaluate every this factor of updates")
    add("--eval_gate", type=float, default=0.15,
        help="evaluate once the training loss is this close to the loose "
        "target")
    _add_model_flags(add)
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


def _add_model_flags(add):
    """The optimizers' shared settings, the model, data and devices."""
    add("--weight_decay", type=float, default=0.01)
    add("--global_clipnorm", type=float, default=1.0,
        help="gradient clipping by global norm (0: none), for all three")
    add("--layers", type=int, default=2)
    add("--hidden", type=int, default=32)
    add("--heads", type=int, default=2)
    add("--intermediate", type=int, default=128)
    add("--dropout", type=float, default=0.0,
        help="0: runs see each example a few times at most, and dropout "
        "would slow every optimizer alike")
    add("--seq_length", type=int, default=32)
    add("--max_predictions", type=int, default=5)
    add("--vocab_size", type=int, default=1000)
    add("--input_file", type=_names, default=None,
        help="comma-separated text files or patterns (a sentence per line, "
        "a blank line between documents); default: Python's docstrings")
    add("--max_documents", type=int, default=0, help="0: all")
    add("--eval_share", type=float, default=0.1,
        help="share of the documents held out for evaluation")
    add("--dupe_factor", type=int, default=3)
    add("--eval_dupe_factor", type=int, default=1)
    add("--eval_batch_size", type=int, default=512)
    add("--seed", type=int, default=42, help="of the data")
    add("--strategy", default="one_device",
        help="one_device, mirrored, multi_worker or tpu, as train.pretrain")
    add("--tpu", default=None)
    add("--num_gpus", type=int, default=None)
    add("--mixed_precision", default="float32",
        choices=("float32", "mixed_float16", "mixed_bfloat16"))
    add("--jit_compile", action="store_true")
    add("--max_micro_batch", type=int, default=1024,
        help="larger batches run as micro-batches (gradient accumulation)")
    add("--steps_per_loop", type=int, default=100)
    add("--no_plot", action="store_true", help="skip the figure")
    add("--report_only", action="store_true",
        help="the table and figure from results.jsonl; run nothing")


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
    for name in ("seeds", "base_batch_size", "reference_batch",
                 "eval_examples", "eval_batch_size", "steps_per_loop",
                 "max_micro_batch", "dupe_factor", "eval_dupe_factor"):
        if getattr(args, name) < 1:
            raise StudyError(f"--{name} must be >= 1, got "
                             f"{getattr(args, name)}")
    if args.reference_examples < 2 * args.reference_batch:
        raise StudyError(
            f"--reference_examples={args.reference_examples} must be at "
            f"least two batches of --reference_batch={args.reference_batch}")
    for name, low in (("cap_factor", 1.0), ("relative_cap", 1.0),
                      ("eval_growth", 1.0)):
        if not getattr(args, name) > low:
            raise StudyError(f"--{name} must be > {low:g}, got "
                             f"{getattr(args, name)}")
    if args.max_widenings < 0 or args.eval_gate < 0:
        raise StudyError("--max_widenings and --eval_gate must be >= 0")
    if not 0 <= args.warmup_share < 1:
        raise StudyError(f"--warmup_share must be in [0, 1), got "
                         f"{args.warmup_share}")
    if not 0 < args.eval_share < 1:
        raise StudyError(f"--eval_share must be in (0, 1), got "
                         f"{args.eval_share}")
    for name, rate in args.base_learning_rates.items():
        if not rate > 0:
            raise StudyError(f"--base_learning_rates: {name} must be > 0")


# -- the plan -----------------------------------------------------------------

def learning_rate(args, optimizer, batch, multiplier):
    """The square-root rule from the base batch, times `multiplier`."""
    base = args.base_learning_rates[optimizer]
    rate = base * math.sqrt(batch / args.base_batch_size) * multiplier
    return float(f"{rate:.6g}")  # 6 digits: the same key in the JSON


def schedule(args, batch):
    """(cap, warmup, horizon) in updates at `batch`: the same rule for every
    optimizer and rate."""
    cap_examples = args.cap_factor * 2 * args.reference_examples
    cap = max(2, int(math.ceil(cap_examples / batch)))
    return cap, int(round(args.warmup_share * cap)), cap


def make_run(args, optimizer, batch, multiplier, seed, stage, cap=None):
    full_cap, warmup, horizon = schedule(args, batch)
    return dict(optimizer=optimizer, batch=batch,
                lr_multiplier=float(multiplier),
                lr=learning_rate(args, optimizer, batch, multiplier),
                seed=seed, stage=stage, cap_updates=min(cap or full_cap,
                                                        full_cap),
                warmup_updates=warmup, horizon_updates=horizon)


def run_key(run):
    return (run["optimizer"], int(run["batch"]),
            float(f"{run['lr_multiplier']:.6g}"), int(run["seed"]))


def grid_order(multipliers):
    """The rates nearest the square-root rule first, so that the relative
    cap has a good run to compare with early."""
    return sorted(multipliers, key=lambda m: (abs(math.log2(m)), -m))


def tune(args, optimizer, batch, execute):
    """The runs of one (optimizer, batch): the grid at seed 0, widened while
    its best rate sits at an edge, then the other seeds at the best rate.
    `execute(run)` returns the run's record (run or found). Returns the
    records."""
    tried = {}
    best = None

    def one(multiplier):
        nonlocal best
        cap = None
        if best is not None:
            cap = int(math.ceil(args.relative_cap * best["stopped_at"]))
        record = execute(make_run(args, optimizer, batch, multiplier, 0,
                                  "tune", cap))
        tried[float(multiplier)] = record
        if best is None or report.rank(record) < report.rank(best):
            best = record

    for multiplier in grid_order(args.lr_multipliers):
        one(multiplier)
    for _ in range(args.max_widenings):
        edges = sorted(tried)
        chosen = best["lr_multiplier"]
        if len(edges) > 1 and chosen == edges[0]:
            one(edges[0] / 2)
        elif len(edges) > 1 and chosen == edges[-1]:
            one(edges[-1] * 2)
        else:
            break
    records = list(tried.values())
    for seed in range(1, args.seeds):
        records.append(execute(make_run(args, optimizer, batch,
                                        best["lr_multiplier"], seed,
                                        "seed")))
    return records


def pairs(args):
    """(optimizer, batch) in the order they run: by batch, so that a partial
    study covers every optimizer; the reference's own pair first at its
    batch (its compiled model is reused when that batch is the smallest)."""
    order = []
    for batch in sorted(args.batch_sizes):
        names = sorted(args.optimizers,
                       key=lambda o: (batch != args.reference_batch
                                      or o != args.reference,
                                      OPTIMIZERS.index(o)))
        order += [(o, batch) for o in names]
    return order


# -- targets and records ----------------------------------------------------

def reference_points(args):
    """Updates of the reference after half, one and two times
    --reference_examples."""
    return [max(1, int(round(args.reference_examples * f
                             / args.reference_batch)))
            for f in (0.5, 1.0, 2.0)]


def targets_from_losses(losses):
    """{loose, main, tight} from the reference's losses at its three points,
    rounded up to 3 decimals; StudyError unless they fall."""
    finite = all(report.finite(x) for x in losses)
    rounded = [math.ceil(x * 1000) / 1000 if finite else x for x in losses]
    if not finite or not rounded[0] > rounded[1] > rounded[2]:
        raise StudyError(
            f"The reference's held-out losses {losses} do not fall from "
            f"half to twice --reference_examples: no loose/main/tight "
            f"targets; choose another --reference or --reference_examples")
    return dict(zip(TARGET_NAMES, rounded))


def make_record(run, outcome, targets, wall_seconds, replicas=1):
    """The JSON line of one run."""
    record = dict(run)
    batch = run["batch"]
    for name in TARGET_NAMES:
        updates = outcome.reached.get(targets[name])
        record[f"{name}_target_loss"] = targets[name]
        record[f"{name}_updates_to_target"] = updates
        record[f"{name}_examples_to_target"] = (
            None if updates is None else updates * batch)
    record.update(
        target_loss=targets["main"],
        updates_to_target=record["main_updates_to_target"],
        examples_to_target=record["main_examples_to_target"],
        censored=record["main_updates_to_target"] is None,
        final_loss=outcome.final_loss, stopped_at=outcome.stopped_at,
        diverged=outcome.diverged, evals=outcome.evals,
        eval_count=len(outcome.evals),
        train_seconds=round(outcome.train_seconds, 3),
        eval_seconds=round(outcome.eval_seconds, 3),
        wall_seconds=round(wall_seconds, 3), replicas=replicas,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return record


# -- files --------------------------------------------------------------------

def _write_json(path, value):
    with open(path + ".tmp", "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def study_settings(args):
    return {key: (list(v) if isinstance(v, tuple) else v)
            for key in STUDY_KEYS for v in [getattr(args, key)]}


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
    _write_json(path, settings)


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
            record = None
        if isinstance(record, dict) and "optimizer" in record:
            records.append(record)
        else:
            dropped += 1
    if dropped:
        print(f"{path}: dropped {dropped} incomplete line(s); their runs are "
              f"redone", flush=True)
        with open(path + ".tmp", "w") as f:
            for record in records:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        os.replace(path + ".tmp", path)
    return records


def append_result(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


# -- running ------------------------------------------------------------------

def sweep(args, execute, done, results_path, log=print):
    """Tunes every pair; runs found in `done` (by run_key) are reused, new
    ones appended to results_path. Returns the records in run order."""
    started, count = time.time(), [0]

    def cached(run):
        key = run_key(run)
        if key in done:
            return done[key]
        record = execute(run)
        append_result(results_path, record)
        done[key] = record
        count[0] += 1
        log(f"[{count[0]}] {run['optimizer']} batch {run['batch']} lr "
            f"{run['lr']:.3g} ({run['lr_multiplier']:g}x) seed "
            f"{run['seed']}: {_fmt_updates(record)} "
            f"(stopped {record['stopped_at']}/{run['cap_updates']}, "
            f"loss {report.fmt(record['final_loss'])}, "
            f"{record['eval_count']} evals, {record['wall_seconds']:.0f} s; "
            f"study {time.time() - started:.0f} s)")
        return record

    records = []
    for optimizer, batch in pairs(args):
        records += tune(args, optimizer, batch, cached)
    return records


def _fmt_updates(record):
    updates = record["updates_to_target"]
    if updates is None:
        return "censored" + (" (diverged)" if record.get("diverged") else "")
    return f"{updates} updates to {record['target_loss']}"


def reference_targets(args, runner):
    """Runs the reference; returns what targets.json holds."""
    run = make_run(args, args.reference, args.reference_batch, 1.0, 0,
                   "reference")
    points = reference_points(args)
    print(f"Reference: {run['optimizer']} batch {run['batch']} lr "
          f"{run['lr']:.3g}, held-out loss after {points} updates", flush=True)
    losses, wall = runner.reference(run, points)
    return dict(run, points_updates=points,
                points_examples=[p * run["batch"] for p in points],
                losses=losses, targets=targets_from_losses(losses),
                wall_seconds=round(wall, 3))


def run_study(args):
    """Runs what results.jsonl lacks; returns (records, targets.json)."""
    from benchmarks import batch_scaling_train
    os.makedirs(args.output_dir, exist_ok=True)
    results_path = os.path.join(args.output_dir, RESULTS_FILE)
    targets_path = os.path.join(args.output_dir, TARGETS_FILE)
    targets = None
    if os.path.exists(targets_path):
        with open(targets_path) as f:
            targets = json.load(f)
    if args.report_only:
        return read_results(results_path), targets
    check_study_file(args.output_dir, study_settings(args))
    done = {run_key(r): r for r in read_results(results_path)}
    runner = batch_scaling_train.Runner(
        args, os.path.join(args.output_dir, "data"))
    if targets is None:
        targets = reference_targets(args, runner)
        _write_json(targets_path, targets)
    levels = targets["targets"]
    print("Targets (held-out MLM loss): "
          + ", ".join(f"{n} {levels[n]}" for n in TARGET_NAMES)
          + f"; {len(done)} runs already in {results_path}", flush=True)

    def execute(run):
        outcome, wall, replicas = runner.train(run, list(levels.values()))
        return make_record(run, outcome, levels, wall, replicas)

    records = sweep(args, execute, done, results_path,
                    log=lambda line: print(line, flush=True))
    return records, targets


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.time()
    from train import InputError
    try:
        records, targets = run_study(args)
    except (StudyError, InputError) as error:
        sys.exit(f"error: {error}")
    report.report(args.output_dir, records, targets, draw=not args.no_plot)
    load = _common.load_average()
    print(f"wall time {time.time() - started:.0f} s; load average "
          f"(1/5/15 min) {' '.join(f'{x:.2f}' for x in load or [])} on "
          f"{os.cpu_count()} CPUs", flush=True)
    return records


if __name__ == "__main__":
    main()
