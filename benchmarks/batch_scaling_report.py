"""The batch-size study's report: table, figure and scaling summary.

Reads the JSON lines of `benchmarks.batch_scaling` (one per run) and the
targets it fixed, and writes `table.md` and `batch_scaling.png`:

  (a) updates to the main target against batch size, log-log, one line per
      optimizer (median over the seeds at the best rate, their range as
      error bars), with each optimizer's perfect-scaling line (updates
      halve when the batch doubles, from its smallest batch);
  (b) examples to the main target against batch size;
  (c) updates to the main target against the learning rate, per batch (the
      tuning runs, seed 0; an open triangle is a run censored where it
      stopped).

It also prints, per optimizer, the largest batch up to which every batch
needs at most 1.25x the updates of perfect scaling.

  python -m benchmarks.batch_scaling_report --output_dir=/tmp/study
"""

import argparse
import json
import math
import os
import statistics
import sys

from benchmarks import _common

LABELS = {"tf_lamb": "tf_lamb.Lamb, no trust ratio on LN/bias",
          "keras_adamw": "keras AdamW", "keras_lamb": "keras Lamb",
          "tf_lamb_trust_all": "tf_lamb.Lamb, trust ratio on all"}
ORDER = tuple(LABELS)
TARGET_NAMES = ("loose", "main", "tight")
TABLE_FILE = "table.md"
PLOT_FILE = "batch_scaling.png"
SCALING_TOLERANCE = 1.25


def finite(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def fmt(value, digits=3):
    return f"{value:.{digits}f}" if finite(value) else "-"


def rank(record):
    """Smaller is better: updates to the main target, then the held-out
    loss where the run stopped (censored and diverged runs last)."""
    updates = record.get("updates_to_target")
    loss = record.get("final_loss")
    return (updates if updates is not None else math.inf,
            loss if finite(loss) else math.inf)


def median_range(values):
    """(median, low, high) of updates, a censored one (None) counting as
    infinitely many; math.inf where censored runs decide it."""
    numbers = sorted(math.inf if v is None else v for v in values)
    if not numbers:
        return None
    return statistics.median(numbers), numbers[0], numbers[-1]


def summarize(records):
    """{(optimizer, batch): summary}: the best rate of the tuning runs, the
    seeds at it, and per target the (median, low, high) updates."""
    groups = {}
    for record in records:
        groups.setdefault((record["optimizer"], record["batch"]),
                          []).append(record)
    summaries = {}
    for key, runs in groups.items():
        tuning = [r for r in runs if r.get("stage") == "tune"]
        seeded = [r for r in runs if r.get("stage") == "seed"]
        if seeded:
            chosen = seeded[0]["lr_multiplier"]
        elif tuning:
            chosen = min(tuning, key=rank)["lr_multiplier"]
        else:
            continue
        at_best = [r for r in runs if r["lr_multiplier"] == chosen]
        tried = sorted({r["lr_multiplier"] for r in tuning})
        summary = dict(
            optimizer=key[0], batch=key[1], lr_multiplier=chosen,
            lr=at_best[0]["lr"], tried=tried, seeds=len(at_best),
            edge=len(tried) > 1 and chosen in (tried[0], tried[-1]),
            cap=max(r["cap_updates"] for r in at_best),
            wall_seconds=sum(r["wall_seconds"] for r in runs),
            runs=len(runs))
        for name in TARGET_NAMES:
            values = [r.get(f"{name}_updates_to_target") for r in at_best]
            summary[name] = median_range(values)
            summary[f"{name}_reached"] = sum(v is not None for v in values)
        summaries[key] = summary
    return summaries


def perfect_scaling(summaries, optimizer, name="main"):
    """(batch0, updates0): the smallest batch of `optimizer` and its median
    updates, from which perfect scaling is drawn; None when that batch
    never reached the target (no anchor: nothing scales from it)."""
    batches = sorted(b for (o, b) in summaries if o == optimizer)
    if not batches:
        return None
    updates = summaries[(optimizer, batches[0])][name][0]
    return (batches[0], updates) if finite(updates) else None


def largest_within(summaries, optimizer, tolerance=SCALING_TOLERANCE,
                   name="main"):
    """The largest batch up to which every batch of `optimizer` needs at
    most `tolerance` times the updates of perfect scaling; None if none."""
    anchor = perfect_scaling(summaries, optimizer, name)
    if anchor is None:
        return None
    batch0, updates0 = anchor
    largest = None
    for batch in sorted(b for (o, b) in summaries if o == optimizer):
        median = summaries[(optimizer, batch)][name][0]
        if not finite(median) or median > tolerance * updates0 * batch0 / batch:
            break
        largest = batch
    return largest


def _updates_cell(stats, reached, seeds):
    median, low, high = stats
    if not finite(median):
        return f"censored ({reached}/{seeds} reached)"
    spread = f"{low:g}-{high:g}" if finite(high) else f"{low:g}-censored"
    return f"{median:g} [{spread}]"


TABLE_HEADER = ["batch", "optimizer", "best lr", "rates tried",
                "updates to target, median [range]", "examples to target",
                "x perfect", "loose", "tight", "runs", "wall s"]


def table_rows(summaries):
    rows = []
    for (optimizer, batch), s in sorted(
            summaries.items(),
            key=lambda kv: (kv[0][1], ORDER.index(kv[0][0])
                            if kv[0][0] in ORDER else 99)):
        median = s["main"][0]
        anchor = perfect_scaling(summaries, optimizer)
        ratio = "-"
        if anchor and finite(median):
            ratio = f"{median / (anchor[1] * anchor[0] / batch):.2f}"
        rows.append([
            batch, LABELS.get(optimizer, optimizer),
            f"{s['lr']:.3g} ({s['lr_multiplier']:g}x)"
            + (" edge" if s["edge"] else ""),
            ",".join(f"{m:g}" for m in s["tried"]),
            _updates_cell(s["main"], s["main_reached"], s["seeds"]),
            f"{median * batch:g}" if finite(median) else "-",
            ratio,
            _updates_cell(s["loose"], s["loose_reached"], s["seeds"]),
            _updates_cell(s["tight"], s["tight_reached"], s["seeds"]),
            s["runs"], f"{s['wall_seconds']:.0f}"])
    return rows


def markdown_table(rows):
    lines = ["| " + " | ".join(TABLE_HEADER) + " |",
             "|" + "|".join("---" for _ in TABLE_HEADER) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary_lines(summaries, targets=None):
    lines = []
    if targets:
        t = targets["targets"]
        lines.append(
            f"Targets (held-out MLM loss, from {targets['optimizer']} at "
            f"batch {targets['batch']} after {targets['points_examples']} "
            f"examples): loose {t['loose']}, main {t['main']}, tight "
            f"{t['tight']}")
    for optimizer in ORDER:
        if not any(o == optimizer for o, _ in summaries):
            continue
        largest = largest_within(summaries, optimizer)
        lines.append(
            f"{LABELS[optimizer]}: largest batch within "
            f"{SCALING_TOLERANCE}x of perfect scaling (main target): "
            + (str(largest) if largest else "none"))
    return lines


def _log_axes(axes, x_base=10):
    """Log-log axes labelled with plain numbers."""
    from matplotlib import ticker
    axes.set_xscale("log", base=x_base)
    axes.set_yscale("log")
    plain = ticker.FuncFormatter(lambda value, _: f"{value:g}")
    axes.yaxis.set_major_locator(ticker.LogLocator(10, subs=(1, 2, 5)))
    if x_base == 10:
        axes.xaxis.set_major_locator(ticker.LogLocator(10, subs=(1, 2, 5)))
    for axis in (axes.xaxis, axes.yaxis):
        axis.set_major_formatter(plain)
        axis.set_minor_formatter(ticker.NullFormatter())


def eval_cost_line(records):
    """How much of the runs' wall time the held-out evaluations took."""
    evals = sum(r.get("eval_count", 0) for r in records)
    seconds = sum(r.get("eval_seconds", 0.0) for r in records)
    wall = sum(r.get("wall_seconds", 0.0) for r in records)
    if not evals:
        return None
    return (f"{len(records)} runs, {wall:.0f} s in all; {evals} held-out "
            f"evaluations, {seconds / evals:.2f} s each, "
            f"{100 * seconds / max(wall, 1e-9):.0f}% of the runs' time")


def _error_bars(stats_list):
    medians, lows, highs = [], [], []
    for median, low, high in stats_list:
        medians.append(median)
        lows.append(median - low)
        highs.append((high if finite(high) else median) - median)
    return medians, [lows, highs]


def _scaling_panels(summaries, by_updates, by_examples):
    for index, optimizer in enumerate(ORDER):
        points = sorted((b, s["main"]) for (o, b), s in summaries.items()
                        if o == optimizer and finite(s["main"][0]))
        if not points:
            continue
        color = f"C{index}"
        batches = [b for b, _ in points]
        medians, errors = _error_bars([p for _, p in points])
        censored = sorted((b, s["cap"]) for (o, b), s in summaries.items()
                          if o == optimizer and not finite(s["main"][0]))
        if censored:
            by_updates.plot([c[0] for c in censored],
                            [c[1] for c in censored], linestyle="none",
                            marker="^", markerfacecolor="none", color=color)
        by_updates.errorbar(batches, medians, yerr=errors, marker="o",
                            capsize=3, color=color, label=LABELS[optimizer])
        by_examples.errorbar(
            batches, [m * b for m, b in zip(medians, batches)],
            yerr=[[e * b for e, b in zip(side, batches)] for side in errors],
            marker="o", capsize=3, color=color, label=LABELS[optimizer])
        anchor = perfect_scaling(summaries, optimizer)
        if anchor is None:
            continue
        batch0, updates0 = anchor
        every = sorted(b for (o, b) in summaries if o == optimizer)
        by_updates.plot(every, [updates0 * batch0 / b for b in every],
                        linestyle=":", color=color)
        by_examples.plot(every, [updates0 * batch0] * len(every),
                         linestyle=":", color=color)
    by_updates.plot([], [], linestyle=":", color="grey",
                    label="perfect scaling")
    by_updates.plot([], [], linestyle="none", marker="^", color="grey",
                    markerfacecolor="none", label="censored, at its cap")
    for axes, what in ((by_updates, "updates"), (by_examples, "examples")):
        _log_axes(axes, x_base=2)
        axes.set_xlabel("batch size")
        axes.set_ylabel(f"{what} to target (median of seeds)")
        axes.grid(True, which="both", alpha=0.3)
    by_updates.set_title("(a) updates to target")
    by_examples.set_title("(b) examples to target")
    by_updates.legend(fontsize=8)


def _landscape_panel(axes, records, optimizer):
    tuning = [r for r in records if r["optimizer"] == optimizer
              and r.get("stage") == "tune"]
    for index, batch in enumerate(sorted({r["batch"] for r in tuning})):
        runs = sorted((r for r in tuning if r["batch"] == batch),
                      key=lambda r: r["lr"])
        color = f"C{index + 3}"
        reached = [(r["lr"], r["updates_to_target"]) for r in runs
                   if r["updates_to_target"] is not None]
        axes.plot([p[0] for p in reached], [p[1] for p in reached],
                  marker="o", color=color, label=f"batch {batch}")
        censored = [(r["lr"], r["stopped_at"]) for r in runs
                    if r["updates_to_target"] is None]
        axes.plot([p[0] for p in censored], [p[1] for p in censored],
                  linestyle="none", marker="^", markerfacecolor="none",
                  color=color)
    _log_axes(axes)
    axes.set_xlabel("peak learning rate")
    axes.set_ylabel("updates to target (seed 0)")
    axes.set_title(f"(c) {LABELS.get(optimizer, optimizer)}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)


def plot(records, targets, path):
    """Draws the figure into `path`; returns the matplotlib Figure."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    summaries = summarize(records)
    optimizers = [o for o in ORDER if any(r["optimizer"] == o
                                          for r in records)]
    figure = plt.figure(figsize=(13, 8))
    grid = figure.add_gridspec(2, 6)
    by_updates = figure.add_subplot(grid[0, :3])
    by_examples = figure.add_subplot(grid[0, 3:])
    _scaling_panels(summaries, by_updates, by_examples)
    width = 6 // max(len(optimizers), 1)
    for i, optimizer in enumerate(optimizers):
        _landscape_panel(figure.add_subplot(
            grid[1, i * width:(i + 1) * width]), records, optimizer)
    if targets:
        figure.suptitle(
            f"Updates to held-out MLM loss {targets['targets']['main']} "
            f"(the loss {targets['optimizer']} reaches at batch "
            f"{targets['batch']} after {targets['points_examples'][1]} "
            f"examples)")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return figure


def report(output_dir, records, targets=None, draw=True, out=None):
    """Prints the table and the scaling summary, writes table.md and the
    figure; returns the figure's path, or None."""
    out = out or sys.stdout
    summaries = summarize(records)
    if not summaries:
        out.write("No finished run yet.\n")
        return None
    rows = table_rows(summaries)
    out.write("\nUpdates to the main target per (optimizer, batch size), "
              "at the best rate, over the seeds:\n")
    _common.print_table(TABLE_HEADER, rows, out)
    lines = summary_lines(summaries, targets)
    cost = eval_cost_line(records)
    if cost:
        lines.append(cost)
    out.write("\n".join(lines) + "\n")
    with open(os.path.join(output_dir, TABLE_FILE), "w") as f:
        f.write(markdown_table(rows) + "\n" + "\n".join(
            f"- {line}" for line in lines) + "\n")
    if not draw:
        return None
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        out.write("matplotlib is not installed: no figure (pip install "
                  "'tf_lamb[study]')\n")
        return None
    path = os.path.join(output_dir, PLOT_FILE)
    plot(records, targets, path)
    out.write(f"Figure: {path}\n")
    return path


def read(output_dir):
    """(records, targets) from a study directory."""
    records = []
    path = os.path.join(output_dir, "results.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption
    targets = None
    path = os.path.join(output_dir, "targets.json")
    if os.path.exists(path):
        with open(path) as f:
            targets = json.load(f)
    return records, targets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", required=True,
                        help="a directory of benchmarks.batch_scaling")
    parser.add_argument("--no_plot", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not os.path.isdir(args.output_dir):
        sys.exit(f"error: --output_dir {args.output_dir} is not a directory")
    records, targets = read(args.output_dir)
    report(args.output_dir, records, targets, draw=not args.no_plot)


if __name__ == "__main__":
    main()
