"""benchmarks.batch_scaling: the study's plan, its bookkeeping, and a --quick
study end to end (JSON lines, table, figure, resume after an interruption).

Which optimizer wins is never asserted: that is what the study measures.
"""

import json
import math
import os

import pytest

from benchmarks import batch_scaling as bs

RESULT_FIELDS = {
    "optimizer", "batch_size", "lr_multiplier", "learning_rate", "updates",
    "examples", "micro_batch_size", "gradient_accumulation_steps",
    "warmup_steps", "eval_masked_lm_loss", "eval_masked_lm_accuracy",
    "eval_next_sentence_accuracy", "eval_next_sentence_loss",
    "eval_examples", "train_mlm_loss", "examples_per_second", "wall_s",
    "curve", "strategy", "replicas", "model_dir", "finished_at"}


def _args(*flags):
    return bs.parse_args(["--output_dir=/nonexistent", *flags])


def test_default_plan_same_examples_sqrt_rule_accumulation():
    args = _args()
    runs = bs.plan(args)
    assert len(runs) == 4 * 3 * 3
    assert {r["batch_size"] for r in runs} == {64, 256, 1024, 4096}
    for run in runs:
        batch = run["batch_size"]
        # Same examples for every batch size: fewer updates for bigger ones.
        assert run["examples"] == 32768
        assert run["updates"] * batch == 32768
        expected = ({"tf_lamb": 4e-2, "keras_adamw": 4e-3,
                     "keras_lamb": 4e-2}[run["optimizer"]]
                    * (batch / 256) ** 0.5 * run["lr_multiplier"])
        assert math.isclose(run["learning_rate"], expected, rel_tol=1e-5)
        assert run["micro_batch_size"] == min(batch, 1024)
        assert (run["micro_batch_size"] * run["gradient_accumulation_steps"]
                == batch)
        assert run["warmup_steps"] == round(0.1 * run["updates"])
    assert {r["lr_multiplier"] for r in runs} == {0.5, 1.0, 2.0}
    # Every run is distinct, so resuming can tell them apart.
    assert len({bs.run_key(r) for r in runs}) == len(runs)


def test_quick_flags_and_explicit_flags_win():
    args = _args("--quick", "--examples=512")
    assert args.batch_sizes == bs.QUICK["batch_sizes"]
    assert args.lr_multipliers == (1.0,)
    assert args.examples == 512


@pytest.mark.parametrize("flags, message", [
    (["--examples=1000"], "not a multiple of batch size"),
    (["--optimizers=sgd"], "--optimizers must be among"),
    (["--lr_multipliers=0"], "--lr_multipliers must be > 0"),
    (["--eval_share=1"], "--eval_share"),
    (["--base_learning_rates=adam=1e-3"], "optimizer=rate pairs"),
])
def test_bad_settings_are_named(flags, message, capsys):
    with pytest.raises(SystemExit):
        _args(*flags)
    assert message in capsys.readouterr().err


def test_micro_batch_divides_the_batch():
    # 96 examples under a cap of 64: two micro-batches of 48.
    runs = bs.plan(_args("--batch_sizes=96", "--examples=960",
                         "--max_micro_batch=64"))
    assert {(r["micro_batch_size"], r["gradient_accumulation_steps"])
            for r in runs} == {(48, 2)}
    assert bs.micro_batch(4096, 1024) == 1024
    assert bs.micro_batch(7, 4) == 1


def test_rerun_with_other_settings_is_refused(tmp_path):
    settings = bs.study_settings(_args())
    bs.check_study_file(str(tmp_path), settings)
    bs.check_study_file(str(tmp_path), dict(settings))  # same: fine
    with pytest.raises(bs.StudyError, match="hidden: 64 there, 128 now"):
        bs.check_study_file(str(tmp_path), dict(settings, hidden=128))


def _record(optimizer, batch, multiplier, loss, curve=()):
    return dict(optimizer=optimizer, batch_size=batch,
                lr_multiplier=multiplier, learning_rate=0.01 * multiplier,
                updates=1024 // batch, micro_batch_size=min(batch, 64),
                gradient_accumulation_steps=max(1, batch // 64),
                eval_masked_lm_loss=loss, eval_masked_lm_accuracy=0.1,
                eval_next_sentence_accuracy=0.5, wall_s=1.0,
                curve=[list(p) for p in curve])


SYNTHETIC = [
    _record("tf_lamb", 16, 0.5, 5.0), _record("tf_lamb", 16, 1.0, 4.0),
    _record("tf_lamb", 16, 2.0, None),  # diverged
    _record("keras_adamw", 16, 1.0, 4.5),
    _record("tf_lamb", 256, 1.0, 6.0, [(512, 6.5), (1024, 6.0)]),
    _record("tf_lamb", 256, 2.0, 5.5, [(512, 6.2), (1024, 5.5)]),
    _record("keras_adamw", 256, 0.5, None), _record("keras_adamw", 256, 1.0,
                                                    None),
]


def test_best_runs_by_held_out_loss():
    best = bs.best_runs(SYNTHETIC)
    assert best[("tf_lamb", 16)]["lr_multiplier"] == 1.0
    assert best[("tf_lamb", 256)]["lr_multiplier"] == 2.0
    assert best[("keras_adamw", 16)]["eval_masked_lm_loss"] == 4.5
    # All diverged: the pair stays in the table, marked so.
    assert best[("keras_adamw", 256)]["eval_masked_lm_loss"] is None
    rows = bs.table_rows(SYNTHETIC)
    assert [(r[0], r[1]) for r in rows] == [
        (16, "tf_lamb.Lamb"), (16, "keras AdamW"), (256, "tf_lamb.Lamb"),
        (256, "keras AdamW")]
    assert rows[0][2] == "0.01 (1x)"  # the middle of the grid
    assert rows[2][2].endswith("(2x) edge")  # may not be the optimum
    assert rows[3][4] == "diverged"
    assert rows[2][3] == "4 (4x64)"


def test_plot_draws_best_losses_and_largest_batch_curve(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "plot.png"
    figure = bs.plot(SYNTHETIC, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    by_batch, by_examples = figure.axes
    lines = {line.get_label(): line for line in by_batch.get_lines()}
    # keras AdamW's only finite best is at batch 16.
    assert list(lines["tf_lamb.Lamb"].get_xdata()) == [16, 256]
    assert list(lines["tf_lamb.Lamb"].get_ydata()) == [4.0, 5.5]
    assert list(lines["keras AdamW"].get_xdata()) == [16]
    assert by_batch.get_xscale() == "log"
    curves = {line.get_label(): line for line in by_examples.get_lines()}
    assert set(curves) == {"tf_lamb.Lamb"}  # AdamW's diverged: no curve
    assert list(curves["tf_lamb.Lamb"].get_ydata()) == [6.2, 5.5]


def test_held_out_documents_from_an_input_file(tmp_path):
    """--input_file: every tenth document is held out, and its examples are
    made from it alone, with the vocabulary learnt from training text."""
    from train import corpus
    from train import create_pretraining_data as cpd
    documents = corpus.stdlib_documents(60)
    text = tmp_path / "corpus.txt"
    corpus.write_text_corpus(documents, str(text))
    args = _args("--quick", f"--input_file={text}", "--max_documents=50")
    paths = bs.make_data(args, str(tmp_path / "data"))
    info = json.loads((tmp_path / "data" / "data.json").read_text())
    assert (info["train_documents"], info["eval_documents"]) == (45, 5)
    # The held-out examples are those of documents 0, 10, ..., 40 alone.
    held_out = [documents[i] for i in range(0, 50, 10)]
    expected = tmp_path / "expected.tfrecord"
    cpd.create_pretraining_data(
        held_out, [str(expected)], vocab_file=paths["vocab"],
        max_seq_length=args.seq_length, max_predictions=args.max_predictions,
        dupe_factor=args.eval_dupe_factor, seed=args.seed + 1)
    assert open(paths["eval"], "rb").read() == expected.read_bytes()
    assert _count_records(paths["eval"]) == info["eval_examples"] > 0
    assert _count_records(paths["train"]) == info["train_examples"] > 0
    vocab = cpd.read_vocab(paths["vocab"])
    config = json.loads(open(paths["bert_config"]).read())
    assert config["vocab_size"] == len(vocab) == info["vocab_size"]
    assert (config["hidden_size"], config["max_position_embeddings"]) == (
        args.hidden, args.seq_length)
    # Made once: a second call reuses the files.
    before = os.path.getmtime(paths["train"])
    assert bs.make_data(args, str(tmp_path / "data")) == paths
    assert os.path.getmtime(paths["train"]) == before


def test_missing_input_file_is_named(tmp_path):
    args = _args("--quick", f"--input_file={tmp_path}/none.txt")
    with pytest.raises(bs.StudyError, match="none.txt"):
        bs.make_data(args, str(tmp_path / "data"))


def _count_records(path):
    import tensorflow as tf
    return sum(1 for _ in tf.data.TFRecordDataset(path))


def test_quick_study_outputs_and_resume(tmp_path, capsys):
    """The --quick study for two optimizers; then a study killed after one
    run went missing and while writing another line is rerun: only that run
    is redone."""
    out = tmp_path / "study"
    argv = ["--quick", "--optimizers=tf_lamb,keras_adamw",
            f"--output_dir={out}"]
    records = bs.main(argv)
    printed = capsys.readouterr().out
    args = bs.parse_args(argv)
    results = out / bs.RESULTS_FILE
    lines = results.read_text().splitlines()
    assert len(lines) == len(records) == 2 * 2
    data = json.loads((out / "data" / "data.json").read_text())
    eval_examples = _count_records(data["paths"]["eval"])
    largest = max(args.batch_sizes)
    for line in lines:
        record = json.loads(line)
        assert RESULT_FIELDS <= set(record), RESULT_FIELDS - set(record)
        assert record["optimizer"] in ("tf_lamb", "keras_adamw")
        assert record["examples"] == args.examples
        assert record["updates"] * record["batch_size"] == args.examples
        # Evaluated on every held-out record (made from held-out documents).
        assert record["eval_examples"] == eval_examples
        loss = record["eval_masked_lm_loss"]
        # Better than guessing uniformly over the vocabulary, not perfect.
        assert 0 < loss < math.log(data["vocab_size"]) + 0.5
        assert 0 <= record["eval_masked_lm_accuracy"] <= 1
        assert 0 <= record["eval_next_sentence_accuracy"] <= 1
        assert record["wall_s"] > 0
        curve = record["curve"]
        if record["batch_size"] == largest:
            assert [p[0] for p in curve] == [
                args.examples // args.curve_points * (i + 1)
                for i in range(args.curve_points)]
        else:
            assert [p[0] for p in curve] == [args.examples]
        assert curve[-1][1] == pytest.approx(loss)
    assert "Best run per (optimizer, batch size)" in printed
    table = (out / bs.TABLE_FILE).read_text().splitlines()
    assert len(table) == 2 + 4
    if _has_matplotlib():
        assert (out / bs.PLOT_FILE).read_bytes()[:4] == b"\x89PNG"

    # Interrupted: the second run's line is gone and a line was cut short.
    kept = [lines[0]] + lines[2:]
    results.write_text("\n".join(kept) + "\n" + lines[1][:40])
    missing = json.loads(lines[1])
    rerun = bs.main(argv)
    printed = capsys.readouterr().out
    assert "dropped 1 incomplete line" in printed
    assert "4 runs in the plan, 3 already" in printed
    after = results.read_text().splitlines()
    assert after[:3] == kept  # finished runs untouched
    redone = json.loads(after[3])
    assert bs.run_key(redone) == bs.run_key(missing)
    assert redone["finished_at"] >= missing["finished_at"]
    assert len(rerun) == 4

    # A complete study reruns nothing.
    bs.main(argv + ["--no_plot"])
    assert "4 runs in the plan, 4 already" in capsys.readouterr().out
    assert results.read_text().splitlines() == after


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True
