"""benchmarks.batch_scaling_report: medians over seeds with censored runs,
perfect scaling, the 1.25x summary, the table and the figure, from
synthetic results whose answers are worked out by hand below."""

import math

import pytest

from benchmarks import batch_scaling_report as report

TF_LAMB = report.LABELS["tf_lamb"]


def _run(optimizer, batch, multiplier, seed, updates, stage=None,
         stopped=None, cap=1000):
    """A record: `updates` to the main target (None: censored); loose at
    half as many, tight at twice (censored beyond the cap)."""
    def scaled(factor):
        if updates is None or factor * updates > cap:
            return None
        return int(factor * updates)
    return dict(
        optimizer=optimizer, batch=batch, lr_multiplier=multiplier,
        lr=0.01 * multiplier * math.sqrt(batch / 16), seed=seed,
        stage=stage or ("tune" if seed == 0 else "seed"),
        updates_to_target=updates, main_updates_to_target=updates,
        loose_updates_to_target=scaled(0.5),
        tight_updates_to_target=scaled(2),
        final_loss=5.0 if updates else 6.0,
        stopped_at=stopped or (scaled(2) or cap), cap_updates=cap,
        wall_seconds=2.0)


RECORDS = [
    # tf_lamb: 100 updates at 16; 64 within 1.25x (30 <= 31.25); 256 not.
    _run("tf_lamb", 16, 1.0, 0, 100), _run("tf_lamb", 16, 2.0, 0, 150),
    _run("tf_lamb", 16, 0.5, 0, None, stopped=150),
    _run("tf_lamb", 16, 1.0, 1, 110), _run("tf_lamb", 16, 1.0, 2, 90),
    _run("tf_lamb", 64, 2.0, 0, 26), _run("tf_lamb", 64, 1.0, 0, 40),
    _run("tf_lamb", 64, 2.0, 1, 30), _run("tf_lamb", 64, 2.0, 2, None),
    _run("tf_lamb", 256, 1.0, 0, 20), _run("tf_lamb", 256, 2.0, 0, 25),
    _run("tf_lamb", 256, 1.0, 1, 22), _run("tf_lamb", 256, 1.0, 2, 21),
    # keras AdamW: never reaches the target at its smallest batch.
    _run("keras_adamw", 16, 1.0, 0, None), _run("keras_adamw", 16, 2.0, 0,
                                                None),
    _run("keras_adamw", 16, 2.0, 1, None), _run("keras_adamw", 16, 2.0, 2,
                                                None),
    _run("keras_adamw", 64, 1.0, 0, 40), _run("keras_adamw", 64, 1.0, 1, 44),
    _run("keras_adamw", 64, 1.0, 2, 41), _run("keras_adamw", 64, 0.5, 0, 60),
]
TARGETS = dict(optimizer="keras_adamw", batch=64,
               points_examples=[4096, 8192, 16384],
               targets=dict(loose=6.0, main=5.9, tight=5.8))


def test_median_and_range_count_censored_runs_as_slowest():
    assert report.median_range([3, None, 1]) == (3, 1, math.inf)
    assert report.median_range([None, None, 4]) == (math.inf, 4, math.inf)
    assert report.median_range([5, 7]) == (6, 5, 7)


def test_summaries_pick_the_seeded_rate_and_its_seeds():
    summaries = report.summarize(RECORDS)
    s = summaries[("tf_lamb", 64)]
    assert (s["lr_multiplier"], s["seeds"], s["tried"]) == (2.0, 3, [1, 2])
    assert s["edge"] is True
    assert s["main"] == (30, 26, math.inf)
    assert s["main_reached"] == 2
    assert s["tight"] == (60, 52, math.inf)
    s = summaries[("tf_lamb", 16)]
    assert (s["lr_multiplier"], s["main"], s["edge"]) == (
        1.0, (100, 90, 110), False)
    assert summaries[("keras_adamw", 16)]["main"][0] == math.inf


def test_perfect_scaling_and_the_largest_batch_within_tolerance():
    summaries = report.summarize(RECORDS)
    assert report.perfect_scaling(summaries, "tf_lamb") == (16, 100)
    assert report.largest_within(summaries, "tf_lamb") == 64
    assert report.largest_within(summaries, "tf_lamb", tolerance=3.5) == 256
    # No anchor when the smallest batch is censored.
    assert report.perfect_scaling(summaries, "keras_adamw") is None
    assert report.largest_within(summaries, "keras_adamw") is None
    lines = report.summary_lines(summaries, TARGETS)
    assert "main 5.9" in lines[0]
    assert lines[1].endswith("perfect scaling (main target): 64")
    assert lines[2].endswith("none")


def test_table_rows():
    rows = report.table_rows(report.summarize(RECORDS))
    assert [(r[0], r[1]) for r in rows] == [
        (16, TF_LAMB), (16, "keras AdamW"), (64, TF_LAMB),
        (64, "keras AdamW"), (256, TF_LAMB)]
    by_key = {(r[0], r[1]): r for r in rows}
    row = by_key[(64, TF_LAMB)]
    assert row[2].endswith("(2x) edge")
    assert row[4] == "30 [26-censored]"
    assert row[5] == "1920"  # 30 updates of 64
    assert row[6] == "1.20"  # 30 / (100 * 16 / 64)
    assert by_key[(256, TF_LAMB)][6] == "3.36"  # 21 / 6.25
    assert by_key[(16, "keras AdamW")][4] == "censored (0/3 reached)"
    assert by_key[(64, "keras AdamW")][6] == "-"  # no anchor
    table = report.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)


def test_figure_panels(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "figure.png"
    figure = report.plot(RECORDS, TARGETS, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_updates, by_examples, *landscapes = figure.axes
    assert len(landscapes) == 2
    assert by_updates.get_xscale() == by_updates.get_yscale() == "log"
    (bars,) = [c for c in by_updates.containers
               if c.get_label() == TF_LAMB]
    data_line = bars.lines[0]
    assert list(data_line.get_xdata()) == [16, 64, 256]
    assert list(data_line.get_ydata()) == [100, 30, 21]
    # Seed ranges; a censored high end draws no bar above the median.
    segments = [s.tolist() for s in bars.lines[2][0].get_segments()]
    assert segments == [[[16, 90], [16, 110]], [[64, 26], [64, 30]],
                        [[256, 20], [256, 22]]]
    dotted = [line for line in by_updates.get_lines()
              if line.get_linestyle() == ":" and len(line.get_xdata())]
    assert len(dotted) == 1  # AdamW has no anchor
    assert list(dotted[0].get_ydata()) == [100, 25, 6.25]
    examples = [c for c in by_examples.containers
                if c.get_label() == TF_LAMB][0].lines[0]
    assert list(examples.get_ydata()) == [1600, 1920, 5376]
    # The tuning landscape: reached runs joined, censored ones marked at
    # their stop.
    lines = {line.get_label(): line for line in landscapes[0].get_lines()}
    batch16 = lines["batch 16"]
    assert list(batch16.get_ydata()) == [100, 150]
    markers = [line for line in landscapes[0].get_lines()
               if line.get_marker() == "^" and len(line.get_xdata())]
    assert [list(m.get_ydata()) for m in markers] == [[150]]


def test_report_writes_the_table_and_says_when_empty(tmp_path, capsys):
    assert report.report(str(tmp_path), [], TARGETS, draw=False) is None
    assert "No finished run yet" in capsys.readouterr().out
    report.report(str(tmp_path), RECORDS, TARGETS, draw=False)
    text = (tmp_path / report.TABLE_FILE).read_text()
    assert f"| 64 | {TF_LAMB} |" in text
    assert "largest batch within 1.25x" in text
