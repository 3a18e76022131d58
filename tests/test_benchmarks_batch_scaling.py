"""benchmarks.batch_scaling: the plan and its tuning logic (against a fake
trainer whose updates to target are known), the targets, censoring,
resuming an interrupted study, and the --quick study end to end.

Which optimizer wins is never asserted: that is what the study measures.
"""

import json
import math

import pytest

from benchmarks import batch_scaling as bs
from benchmarks import batch_scaling_report as report


def _args(*flags):
    return bs.parse_args(["--output_dir=/nonexistent", *flags])


# -- the plan -----------------------------------------------------------------

def test_default_plan_schedule_and_rates():
    args = _args()
    assert args.batch_sizes == (16, 64, 256, 1024)
    assert len(args.lr_multipliers) >= 4
    ratios = [b / a for a, b in zip(args.lr_multipliers,
                                    args.lr_multipliers[1:])]
    assert ratios == [2.0] * len(ratios)
    assert args.seeds >= 3
    # The cap is the same number of examples at every batch size:
    # cap_factor times the reference's examples to the tight target.
    cap_examples = 4 * 2 * 8192
    for batch in args.batch_sizes:
        cap, warmup, horizon = bs.schedule(args, batch)
        assert cap == cap_examples // batch == horizon
        assert warmup == round(0.025 * cap)
        for optimizer in bs.OPTIMIZERS:
            base = bs.DEFAULT_BASE_LEARNING_RATES[optimizer]
            assert bs.learning_rate(args, optimizer, batch, 2.0) == (
                pytest.approx(base * math.sqrt(batch / 64) * 2, rel=1e-5))
    # By batch; the reference's pair first at its batch.
    assert bs.pairs(args)[:5] == [
        ("tf_lamb", 16), ("keras_adamw", 16), ("keras_lamb", 16),
        ("tf_lamb_trust_all", 16), ("keras_adamw", 64)]
    assert bs.reference_points(args) == [64, 128, 256]
    assert bs.grid_order((0.5, 1.0, 2.0, 4.0)) == [1.0, 2.0, 0.5, 4.0]


def test_quick_flags_and_explicit_flags_win():
    args = _args("--quick", "--seeds=3")
    assert args.batch_sizes == bs.QUICK["batch_sizes"]
    assert len(args.batch_sizes) == 2
    assert args.seeds == 3
    assert _args("--quick").seeds == 2


@pytest.mark.parametrize("flags, message", [
    (["--optimizers=sgd"], "--optimizers must be among"),
    (["--lr_multipliers=0"], "--lr_multipliers must be > 0"),
    (["--eval_share=1"], "--eval_share"),
    (["--base_learning_rates=adam=1e-3"], "optimizer=rate pairs"),
    (["--cap_factor=1"], "--cap_factor must be > 1"),
    (["--reference_examples=64"], "at least two batches"),
    (["--seeds=0"], "--seeds must be >= 1"),
])
def test_bad_settings_are_named(flags, message, capsys):
    with pytest.raises(SystemExit):
        _args(*flags)
    assert message in capsys.readouterr().err


# -- tuning, against a fake trainer --------------------------------------------

def _fake_trainer(updates_at, tight_factor=2):
    """execute(run): the run reaches the main target after
    updates_at(multiplier, seed) updates (None: never) and the tight one
    after tight_factor times that, within its cap."""
    calls = []

    def execute(run):
        calls.append(run)
        main = updates_at(run["lr_multiplier"], run["seed"])
        cap = run["cap_updates"]
        reached_main = main if main is not None and main <= cap else None
        tight = None if main is None else tight_factor * main
        reached_tight = tight if tight is not None and tight <= cap else None
        return dict(run, updates_to_target=reached_main, target_loss=5.0,
                    stopped_at=reached_tight or cap,
                    final_loss=1.0 if reached_main else 2.0 + 1 / run["lr"],
                    eval_count=1, wall_seconds=0.0)
    return execute, calls


def test_tuning_widens_at_the_edge_caps_relative_and_seeds_the_best():
    args = _args("--lr_multipliers=0.5,1,2,4", "--seeds=3",
                 "--max_widenings=3")
    # The fewest updates at 16x: the grid widens to 8x, then 16x, 32x.
    execute, calls = _fake_trainer(
        lambda m, seed: int(100 * (abs(math.log2(m) - 4) + 1)) + seed)
    records = bs.tune(args, "tf_lamb", 64, execute)
    tuning = [c for c in calls if c["stage"] == "tune"]
    assert [c["lr_multiplier"] for c in tuning] == [1, 2, 0.5, 4, 8, 16, 32]
    full_cap = bs.schedule(args, 64)[0]
    assert tuning[0]["cap_updates"] == full_cap
    # Every later tuning run stops at 1.5x the best run's stop so far.
    best_stop = None
    for call, record in zip(tuning, records):
        if best_stop is not None:
            assert call["cap_updates"] == min(
                full_cap, math.ceil(1.5 * best_stop))
        if record["updates_to_target"] is not None and (
                best_stop is None or record["stopped_at"] < best_stop):
            best_stop = record["stopped_at"]
    seeds = [c for c in calls if c["stage"] == "seed"]
    assert [(c["lr_multiplier"], c["seed"]) for c in seeds] == [
        (16, 1), (16, 2)]
    assert all(c["cap_updates"] == full_cap for c in seeds)
    assert len(records) == 7 + 2


def test_tuning_widens_downwards_and_stops_at_the_limit():
    args = _args("--lr_multipliers=0.5,1,2,4", "--max_widenings=1",
                 "--seeds=1")
    execute, calls = _fake_trainer(lambda m, seed: int(50 / m))
    bs.tune(args, "keras_adamw", 16, execute)
    # Larger rates are faster: the grid widens once, upwards; then the
    # other way round, downwards.
    assert [c["lr_multiplier"] for c in calls] == [1, 2, 0.5, 4, 8]
    execute, calls = _fake_trainer(lambda m, seed: int(50 * m))
    bs.tune(args, "keras_adamw", 16, execute)
    assert [c["lr_multiplier"] for c in calls] == [1, 2, 0.5, 4, 0.25]


def test_censored_runs_are_kept_and_ranked_last():
    args = _args("--lr_multipliers=0.5,1,2,4", "--max_widenings=0",
                 "--seeds=2")
    # Only 2x ever reaches the target.
    execute, calls = _fake_trainer(
        lambda m, seed: 200 if m == 2 else None)
    records = bs.tune(args, "keras_lamb", 256, execute)
    assert len(records) == 4 + 1
    censored = [r for r in records if r["updates_to_target"] is None]
    assert {r["lr_multiplier"] for r in censored} == {0.5, 1.0, 4.0}
    assert calls[-1]["lr_multiplier"] == 2 and calls[-1]["seed"] == 1
    # All censored: the best is the lowest loss where the runs stopped
    # (here the largest rate), and the edge widens towards it.
    args = _args("--lr_multipliers=1,2", "--max_widenings=1", "--seeds=1")
    execute, calls = _fake_trainer(lambda m, seed: None)
    records = bs.tune(args, "keras_lamb", 256, execute)
    assert [c["lr_multiplier"] for c in calls] == [1, 2, 4]
    assert all(r["updates_to_target"] is None for r in records)


# -- targets and records -------------------------------------------------------

def test_targets_from_the_reference_are_rounded_up_and_must_fall():
    assert bs.targets_from_losses([6.01, 5.9012, 5.8]) == dict(
        loose=6.01, main=5.902, tight=5.8)
    with pytest.raises(bs.StudyError, match="do not fall"):
        bs.targets_from_losses([6.0, 5.9, 5.95])
    with pytest.raises(bs.StudyError, match="do not fall"):
        bs.targets_from_losses([6.0, float("nan"), 5.5])


def test_record_of_a_censored_run():
    from benchmarks.batch_scaling_train import Outcome
    args = _args()
    run = bs.make_run(args, "tf_lamb", 256, 1.0, 0, "tune")
    targets = dict(loose=6.0, main=5.9, tight=5.8)
    outcome = Outcome(reached={6.0: 40, 5.9: None, 5.8: None},
                      evals=[[40, 5.99], [256, 5.95]], stopped_at=256,
                      final_loss=5.95, diverged=False, train_seconds=1.0,
                      eval_seconds=0.5)
    record = bs.make_record(run, outcome, targets, 2.0)
    json.dumps(record, allow_nan=False)  # a valid JSON line
    for field in ("optimizer", "batch", "lr", "seed", "target_loss",
                  "updates_to_target", "examples_to_target", "final_loss",
                  "wall_seconds"):
        assert field in record
    assert record["updates_to_target"] is None
    assert record["examples_to_target"] is None
    assert record["censored"] is True
    assert record["target_loss"] == 5.9
    assert record["loose_updates_to_target"] == 40
    assert record["loose_examples_to_target"] == 40 * 256


# -- resuming ------------------------------------------------------------------

def test_interrupted_sweep_resumes_with_only_the_missing_runs(tmp_path):
    args = _args("--batch_sizes=16,64", "--optimizers=tf_lamb,keras_adamw",
                 "--lr_multipliers=1,2", "--max_widenings=0", "--seeds=2")
    execute, calls = _fake_trainer(lambda m, seed: int(300 * m) + seed)
    path = str(tmp_path / bs.RESULTS_FILE)
    done = {}
    full = bs.sweep(args, execute, done, path, log=lambda line: None)
    assert len(full) == len(calls) == 4 * 3
    lines = open(path).read().splitlines()

    # Killed after 5 runs, while writing the 6th line.
    with open(path, "w") as f:
        f.write("\n".join(lines[:5]) + "\n" + lines[5][:30])
    records = bs.read_results(path)
    assert len(records) == 5
    assert open(path).read().splitlines() == lines[:5]  # rewritten
    execute, calls = _fake_trainer(lambda m, seed: int(300 * m) + seed)
    done = {bs.run_key(r): r for r in records}
    again = bs.sweep(args, execute, done, path, log=lambda line: None)
    assert [bs.run_key(c) for c in calls] == [
        bs.run_key(json.loads(line)) for line in lines[5:]]
    assert [bs.run_key(r) for r in again] == [bs.run_key(r) for r in full]
    assert open(path).read().splitlines() == lines


def test_rerun_with_other_settings_is_refused(tmp_path):
    settings = bs.study_settings(_args())
    bs.check_study_file(str(tmp_path), settings)
    bs.check_study_file(str(tmp_path), dict(settings))  # same: fine
    with pytest.raises(bs.StudyError, match="hidden: 32 there, 64 now"):
        bs.check_study_file(str(tmp_path), dict(settings, hidden=64))


# -- the quick study, for real --------------------------------------------------

def _check_run(record, levels):
    """A record agrees with its own evaluations."""
    batch, cap = record["batch"], record["cap_updates"]
    assert 0 < record["stopped_at"] <= cap
    if record["diverged"]:
        assert record["updates_to_target"] is None
        return
    assert record["evals"][-1][0] == record["stopped_at"]
    for name in bs.TARGET_NAMES:
        target = levels[name]
        first = next((u for u, loss in record["evals"] if loss <= target),
                     None)
        assert record[f"{name}_updates_to_target"] == first
        assert record[f"{name}_examples_to_target"] == (
            None if first is None else first * batch)
    # It stops at the tight target, or else at its cap.
    assert record["stopped_at"] in (record["tight_updates_to_target"], cap)
    assert record["final_loss"] == record["evals"][-1][1]


def test_quick_study_end_to_end_and_resume(tmp_path, capsys):
    out = tmp_path / "study"
    # One layer: each of the dozen runs compiles its own step, and a
    # layer fewer compiles faster; the study is the same.
    argv = ["--quick", "--layers=1", "--optimizers=tf_lamb,keras_adamw",
            f"--output_dir={out}"]
    records = bs.main(argv)
    printed = capsys.readouterr().out
    targets = json.loads((out / bs.TARGETS_FILE).read_text())
    levels = targets["targets"]
    assert levels["loose"] > levels["main"] > levels["tight"]
    assert targets["points_examples"] == [128, 256, 512]
    lines = (out / bs.RESULTS_FILE).read_text().splitlines()
    assert len(lines) == len(records) >= 2 * 2 * (2 + 1)
    data = json.loads((out / "data" / "data.json").read_text())
    for line in lines:
        record = json.loads(line)
        assert record["target_loss"] == levels["main"]
        _check_run(record, levels)
        # Better than guessing uniformly over the vocabulary.
        assert record["final_loss"] < math.log(data["vocab_size"])
    for optimizer in ("tf_lamb", "keras_adamw"):
        for batch in (8, 32):
            seeds = {json.loads(x)["seed"] for x in lines
                     if json.loads(x)["optimizer"] == optimizer
                     and json.loads(x)["batch"] == batch}
            assert seeds == {0, 1}
    assert "largest batch within 1.25x of perfect scaling" in printed
    assert (out / report.TABLE_FILE).exists()
    pytest.importorskip("matplotlib")
    assert (out / report.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"

    # Interrupted: the last run's line is lost; only that run is redone.
    (out / bs.RESULTS_FILE).write_text("\n".join(lines[:-1]) + "\n")
    bs.main(argv + ["--no_plot"])
    after = (out / bs.RESULTS_FILE).read_text().splitlines()
    assert after[:-1] == lines[:-1]
    redone, lost = json.loads(after[-1]), json.loads(lines[-1])
    assert bs.run_key(redone) == bs.run_key(lost)
    # The same run, whatever ran before it in the process: same data
    # order, same initial weights, same evaluations.
    assert [u for u, _ in redone["evals"]] == [u for u, _ in lost["evals"]]
    assert [x for _, x in redone["evals"]] == pytest.approx(
        [x for _, x in lost["evals"]], rel=1e-6)
    assert redone["updates_to_target"] == lost["updates_to_target"]
    assert "[1] " in capsys.readouterr().out
    # A complete study reruns nothing.
    bs.main(argv + ["--no_plot"])
    assert "[1] " not in capsys.readouterr().out
    assert (out / bs.RESULTS_FILE).read_text().splitlines() == after


def test_the_two_tf_lamb_settings_differ_only_in_the_trust_ratio():
    """tf_lamb keeps TF Addons' meaning (the decay exclusions also leave
    the trust ratio); tf_lamb_trust_all keeps the trust ratio on every
    variable, with the same decay exclusions."""
    import types

    from benchmarks import batch_scaling_train as train
    setup = types.SimpleNamespace(weight_decay=0.01, global_clipnorm=1.0,
                                  jit_compile=True)
    built = {name: train.make_optimizer(name, 0.01, setup, 1)
             for name in ("tf_lamb", "tf_lamb_trust_all")}
    for optimizer in built.values():
        assert optimizer.get_config()["exclude_from_weight_decay"] == list(
            train.EXCLUDED_FROM_DECAY)
    assert built["tf_lamb"].get_config()[
        "exclude_from_layer_adaptation"] == list(train.EXCLUDED_FROM_DECAY)
    assert built["tf_lamb_trust_all"].get_config()[
        "exclude_from_layer_adaptation"] == []
