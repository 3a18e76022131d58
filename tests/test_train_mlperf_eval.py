"""Evaluation the way MLPerf Training runs BERT: every N examples on a fixed
held-out set at each phase's sequence length, a stop at a target accuracy,
the best checkpoint kept apart, and mlperf_logging's log checked by
MLPerf's own compliance checker."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing
from train import InputError, PretrainConfig, run_pretraining
from train.config import Phase
from train.loop import controller

# The newest ruleset of the installed checker with BERT in it (5.1.0 and
# later dropped the benchmark).
RULESET = "5.0.0"
UPDATES = 8
EVERY_EXAMPLES = 16  # two updates of 8 examples


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Records, held-out records of other documents, and a run of UPDATES
    updates evaluated every two, with its MLPerf log when mlperf_logging is
    installed."""
    root = tmp_path_factory.mktemp("mlperf")
    made = train_testing.small_run_files(root, eval_documents=40)
    common = dict(
        max_seq_length=32, max_predictions_per_seq=5, train_batch_size=8,
        warmup_steps=1, shuffle_buffer=100, export_dir="none",
        bert_config_file=made["bert_config_file"], vocab_file=made["vocab"],
        train_files=tuple(made["files"]), mode="train_and_eval",
        eval_files=tuple(made["eval_files"]), eval_batch_size=16,
        num_train_steps=UPDATES, log_steps=UPDATES, learning_rate=3e-2,
        eval_every_examples=EVERY_EXAMPLES, save_checkpoints_steps=2,
        keep_checkpoint_max=UPDATES)
    logging = _has_mlperf_logging()
    full = root / "full"
    result = run_pretraining(PretrainConfig(
        model_dir=str(full), mlperf_log=str(root / "full.log") if logging
        else None, **common))
    return {"root": root, "common": common, "full": full, "result": result,
            "log": root / "full.log" if logging else None}


def _has_mlperf_logging():
    try:
        import mlperf_logging  # noqa: F401
    except ImportError:
        return False
    return True


def _logged_evaluations(model_dir):
    """{update: masked_lm_accuracy} from the TensorBoard events of
    <model_dir>/eval, read back independently of the run's result."""
    found = {}
    for path in tf.io.gfile.glob(os.path.join(str(model_dir), "eval",
                                              "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "masked_lm_accuracy":
                    found[event.step] = float(
                        tf.make_ndarray(value.tensor)) if value.HasField(
                        "tensor") else value.simple_value
    return found


def _mlperf_events(path):
    """The log's events as dicts, from the `:::MLLOG {json}` lines."""
    events = []
    with open(path) as fh:
        for line in fh:
            if line.startswith(":::MLLOG "):
                events.append(json.loads(line[len(":::MLLOG "):]))
    return events


def _checkpoint_values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


def test_examples_and_evaluation_points_across_phases_of_two_batch_sizes():
    phases = [Phase(3, 32, 5, 8), Phase(2, 64, 10, 4)]
    assert [controller.examples_at(s, phases) for s in range(6)] == [
        0, 8, 16, 24, 28, 32]
    config = PretrainConfig(num_train_steps=5, phase2_steps=2,
                            mode="train_and_eval", eval_files=("e",),
                            eval_every_examples=10, train_batch_size=8,
                            phase2_train_batch_size=4)
    # 10, 20, 30 examples are reached after updates 2 (16), 3 (24), 5 (32).
    due = [s for s in range(1, 6) if controller.evaluation_due(s, config,
                                                               phases)]
    assert due == [2, 3, 5]
    assert [controller.next_evaluation(s, config, phases)
            for s in range(5)] == [2, 2, 3, 5, 5]
    assert controller.next_stop(0, 3, config, phases) == 2


@pytest.mark.parametrize("settings, message", [
    ({"stop_at_mlm_accuracy": 0.5}, "needs --mode=train_and_eval"),
    ({"mode": "train_and_eval", "eval_files": ("e",),
      "stop_at_mlm_accuracy": 0.5}, "needs evaluations during training"),
    ({"mode": "train_and_eval", "eval_files": ("e",), "eval_every_steps": 2,
      "eval_every_examples": 16}, "one of --eval_every_steps"),
    ({"mode": "train_and_eval", "eval_files": ("e",), "eval_every_steps": 2,
      "stop_at_mlm_accuracy": 1.5}, "must be in (0, 1]"),
    ({"mode": "train_and_eval", "eval_files": ("e",),
      "phase2_eval_files": ("f",)}, "needs --phase2_steps"),
    ({"mode": "train_and_eval", "train_files": ("t",)},
     "needs --eval_files, or examples made from text"),
])
def test_bad_evaluation_settings_are_refused(settings, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[")):
        PretrainConfig(**settings)


def test_evaluates_every_n_examples_and_keeps_the_best_checkpoint_apart(
        setup):
    full = setup["full"]
    logged = _logged_evaluations(full)
    # Every EVERY_EXAMPLES examples (2 updates), then the run's own at the
    # end (update 8 is both).
    assert sorted(logged) == [2, 4, 6, 8]
    best_step = min(logged, key=lambda s: (-logged[s], s))
    with open(full / "best" / "best.json") as fh:
        record = json.load(fh)
    assert record["step"] == best_step
    assert record["masked_lm_accuracy"] == pytest.approx(
        max(logged.values()), abs=1e-6)
    # Kept apart: one checkpoint in best/, the rolling ones untouched.
    assert tf.train.latest_checkpoint(str(full / "best")).endswith(
        f"ckpt-{best_step}")
    assert tf.train.latest_checkpoint(str(full)).endswith(f"ckpt-{UPDATES}")
    best = _checkpoint_values(record["checkpoint"])
    rolling = _checkpoint_values(str(full / f"ckpt-{best_step}"))
    assert best.keys() == rolling.keys() and best
    for name in best:
        np.testing.assert_array_equal(best[name], rolling[name], name)


def test_stops_at_the_first_evaluation_that_reaches_the_target(setup,
                                                               capsys):
    logged = _logged_evaluations(setup["full"])
    # A target the run reaches (TensorBoard keeps float32: a hair below
    # its best), not necessarily at its first evaluation.
    goal = max(logged.values()) - 1e-6
    model_dir = setup["root"] / "stop"
    log = setup["root"] / "stop.log" if setup["log"] else None
    result = run_pretraining(PretrainConfig(
        model_dir=str(model_dir), stop_at_mlm_accuracy=goal,
        mlperf_log=str(log) if log else None, **setup["common"]))
    history = _logged_evaluations(model_dir)
    first = min(s for s, accuracy in history.items() if accuracy >= goal)
    assert result["step"] == first
    assert max(history) == first  # no evaluation after it
    assert result["target"]["step"] == first
    assert "Reached --stop_at_mlm_accuracy=" in capsys.readouterr().out
    assert tf.train.latest_checkpoint(str(model_dir)).endswith(
        f"ckpt-{first}")
    with open(model_dir / "target_reached.json") as fh:
        assert json.load(fh)["step"] == first
    if log:
        events = _mlperf_events(log)
        assert [e["metadata"]["epoch_num"] for e in events
                if e["key"] == "eval_accuracy"][-1] == first * 8
        assert [e["metadata"]["status"] for e in events
                if e["key"] == "run_stop"] == ["success"]
        checked = _check_log(log, setup["root"])
        assert checked.returncode == 0, checked.stdout + checked.stderr

    # The same command again trains no further; a higher target goes on.
    again = run_pretraining(PretrainConfig(
        model_dir=str(model_dir), stop_at_mlm_accuracy=goal,
        **setup["common"]))
    assert again["step"] == first and again["history"] == []
    assert "it trains no further" in capsys.readouterr().out


def test_held_out_examples_are_evaluated_at_each_phase_length(tmp_path):
    text = train_testing.write_small_corpus(str(tmp_path / "corpus.txt"),
                                            max_documents=150)
    result = run_pretraining(PretrainConfig(
        model_dir=str(tmp_path / "run"), input_file=(text,),
        bert_config_file=None, model_size="tiny", vocab_size=600,
        max_seq_length=32, max_predictions_per_seq=5, phase2_steps=2,
        phase2_max_seq_length=64, phase2_max_predictions_per_seq=10,
        train_batch_size=8, num_train_steps=4, warmup_steps=1,
        heldout_share=0.2, mode="train_and_eval", eval_every_steps=2,
        eval_batch_size=16, export_dir="none", log_steps=4))
    lengths = {m["global_step"]: m["seq_length"]
               for m in result["evaluations"]}
    assert lengths == {2: 32, 4: 64}
    record = next(iter(tf.data.TFRecordDataset(
        str(tmp_path / "run" / "data" / "heldout_phase2.tfrecord"))))
    example = tf.train.Example.FromString(record.numpy())
    assert len(example.features.feature["input_ids"].int64_list.value) == 64


def _check_log(path, tmp_path):
    checked = train_testing.run(
        ["-m", "mlperf_logging.compliance_checker", "--usage", "training",
         "--ruleset", RULESET, "--log_output",
         str(tmp_path / "checker.log"), str(path)], timeout=120)
    return checked


def test_mlperf_log_passes_the_compliance_checker(setup, tmp_path):
    pytest.importorskip("mlperf_logging")
    checked = _check_log(setup["log"], tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout + checked.stderr
    events = _mlperf_events(setup["log"])
    keys = {event["key"] for event in events}
    # Every hyperparameter the closed BERT rules name, though the log is
    # the open division's (a tiny BERT does not reach 0.720).
    rules = os.path.join(os.path.dirname(__import__(
        "mlperf_logging").__file__), "compliance_checker",
        f"training_{RULESET}", "closed_bert.yaml")
    with open(rules) as fh:
        named = {line.split(":", 1)[1].strip() for line in fh
                 if line.strip().startswith("NAME:")}
    assert named <= keys, named - keys
    accuracies = [(e["metadata"]["epoch_num"], e["value"]) for e in events
                  if e["key"] == "eval_accuracy"]
    logged = _logged_evaluations(setup["full"])
    assert accuracies == [(step * 8, pytest.approx(logged[step], abs=1e-6))
                          for step in sorted(logged)]
    stop = [e for e in events if e["key"] == "run_stop"]
    assert stop[0]["metadata"]["status"] == "aborted"  # no target given


def test_mlperf_log_without_its_extra_names_it_before_writing(
        setup, tmp_path, monkeypatch):
    # None in sys.modules makes `import mlperf_logging` fail, installed or
    # not.
    monkeypatch.setitem(__import__("sys").modules, "mlperf_logging", None)
    model_dir = tmp_path / "run"
    with pytest.raises(InputError, match=r"\.\[mlperf\]"):
        run_pretraining(PretrainConfig(
            model_dir=str(model_dir), mlperf_log=str(tmp_path / "x.log"),
            **setup["common"]))
    assert not model_dir.exists() and not (tmp_path / "x.log").exists()
