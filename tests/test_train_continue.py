"""Continuing from a checkpoint (Google's or ours) and evaluating, through
run_pretraining and the command line."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.references import google_checkpoint
from tests.support import train_testing
from train import InputError, PretrainConfig, run_pretraining
from train.loop import evaluation

BERT_CONFIG = train_testing.SMALL_BERT_CONFIG


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Records, a held-out eval set of another text, a bert_config.json, a
    run of 4 updates (ours) and its weights as a Google checkpoint."""
    root = tmp_path_factory.mktemp("continue")
    made = train_testing.small_run_files(root, eval_documents=40)
    files, vocab, eval_files = made["files"], made["vocab"], made["eval_files"]
    vocab_size, config_path = made["vocab_size"], made["bert_config_file"]
    common = dict(max_seq_length=32, max_predictions_per_seq=5,
                  train_batch_size=8, warmup_steps=1, shuffle_buffer=100,
                  export_dir="none", bert_config_file=str(config_path),
                  vocab_file=vocab)
    ours = str(root / "ours")
    trained = run_pretraining(PretrainConfig(
        model_dir=ours, train_files=files, num_train_steps=4,
        log_steps=2, **common))
    google = google_checkpoint.write_model_as_google_checkpoint(
        trained["trainer"].model, str(root / "google" / "bert_model.ckpt"))
    return {"root": root, "files": tuple(files),
            "eval_files": tuple(eval_files), "common": common,
            "ours": ours, "google": google}


def _values(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE")}


def _assert_same_checkpoints(a, b, tolerance=1e-6):
    a, b = _values(a), _values(b)
    assert a.keys() == b.keys()
    for name in a:
        scale = max(float(np.max(np.abs(a[name]))), 1e-30)
        assert float(np.max(np.abs(a[name] - b[name]))) / scale <= (
            tolerance), name


def _eval(setup, model_dir, **changes):
    settings = dict(setup["common"], model_dir=str(model_dir), mode="eval",
                    eval_files=setup["eval_files"], eval_batch_size=16)
    settings.update(changes)
    return run_pretraining(PretrainConfig(**settings))["eval"]


GOOGLE_KEYS = ("global_step", "loss", "masked_lm_accuracy",
               "masked_lm_loss", "next_sentence_accuracy",
               "next_sentence_loss")


def test_eval_of_a_google_checkpoint_equals_eval_of_ours(setup, tmp_path):
    ours = _eval(setup, setup["ours"])
    assert ours["global_step"] == 4
    google_dir = tmp_path / "google_eval"
    google = _eval(setup, google_dir, init_checkpoint=setup["google"])
    assert google["global_step"] == 0  # a model loaded as it is
    for key in GOOGLE_KEYS[1:]:
        assert google[key] == pytest.approx(ours[key], rel=1e-6), key
    written = evaluation.read_eval_results(
        str(google_dir / "eval_results.txt"))
    assert set(GOOGLE_KEYS) <= set(written)
    assert written["masked_lm_loss"] == pytest.approx(google["masked_lm_loss"])
    # An eval of a loaded model writes no checkpoint.
    assert tf.train.latest_checkpoint(str(google_dir)) is None


def test_eval_under_mirrored_equals_one_device(setup):
    one = _eval(setup, setup["ours"])
    two = _eval(setup, setup["ours"], strategy="mirrored")
    assert one["examples"] == two["examples"] > 16  # a partial last batch
    for key in GOOGLE_KEYS:
        assert two[key] == pytest.approx(one[key], rel=1e-6), key


def test_training_from_a_google_checkpoint_equals_from_ours(setup, tmp_path):
    """The same start (loaded in either format), data and dropout: the same
    weights after 3 more updates; a start from scratch differs."""
    for name, start in (("from_google", setup["google"]),
                        ("from_ours", setup["ours"]), ("scratch", None)):
        metrics = run_pretraining(PretrainConfig(
            model_dir=str(tmp_path / name), train_files=setup["files"],
            num_train_steps=3, log_steps=3, init_checkpoint=start,
            **setup["common"]))
        assert metrics["start_step"] == 0 and metrics["step"] == 3
    _assert_same_checkpoints(str(tmp_path / "from_google"),
                             str(tmp_path / "from_ours"))
    with pytest.raises(AssertionError):
        _assert_same_checkpoints(str(tmp_path / "scratch"),
                                 str(tmp_path / "from_ours"))


def test_resumed_run_ignores_init_checkpoint(setup, tmp_path, capsys):
    args = dict(train_files=setup["files"], log_steps=2, **setup["common"])
    for name in ("with_init", "without"):
        run_pretraining(PretrainConfig(
            model_dir=str(tmp_path / name), num_train_steps=2,
            init_checkpoint=setup["ours"], **args))
    capsys.readouterr()
    # The resumed run is pointed at another checkpoint: it must not load it.
    resumed = run_pretraining(PretrainConfig(
        model_dir=str(tmp_path / "with_init"), num_train_steps=4,
        init_checkpoint=setup["google"], **args))
    assert "not loaded" in capsys.readouterr().out
    assert resumed["start_step"] == 2
    run_pretraining(PretrainConfig(model_dir=str(tmp_path / "without"),
                                   num_train_steps=4, **args))
    _assert_same_checkpoints(str(tmp_path / "with_init"),
                             str(tmp_path / "without"))


def test_init_checkpoint_of_another_model_fails_before_writing(setup,
                                                               tmp_path):
    other = tmp_path / "bert_config.json"
    vocab_size = json.loads(open(setup["common"]["bert_config_file"]).read())[
        "vocab_size"]
    other.write_text(json.dumps(dict(BERT_CONFIG, vocab_size=vocab_size,
                                     intermediate_size=48)))
    model_dir = tmp_path / "never"
    settings = dict(setup["common"], bert_config_file=str(other))
    with pytest.raises(InputError) as raised:
        run_pretraining(PretrainConfig(
            model_dir=str(model_dir), train_files=setup["files"],
            num_train_steps=2, init_checkpoint=setup["google"], **settings))
    message = str(raised.value)
    assert message.startswith("--init_checkpoint:")
    # Every mismatched variable, with both shapes.
    for layer in (0, 1):
        assert (f"bert/encoder/layer_{layer}/intermediate/dense/kernel: "
                f"model [32, 48], checkpoint [32, 64]") in message
    assert not model_dir.exists()


def test_eval_needs_something_to_evaluate(setup, tmp_path):
    with pytest.raises(InputError, match="Nothing to evaluate"):
        _eval(setup, tmp_path / "empty")
    assert not (tmp_path / "empty").exists()


def test_train_and_eval_evaluates_every_n_updates(setup, tmp_path):
    model_dir = tmp_path / "run"
    metrics = run_pretraining(PretrainConfig(
        model_dir=str(model_dir), train_files=setup["files"],
        num_train_steps=5, log_steps=5, mode="train_and_eval",
        eval_files=setup["eval_files"], eval_every_steps=2,
        max_eval_steps=2, eval_batch_size=8, **setup["common"]))
    assert metrics["eval"]["global_step"] == 5
    assert metrics["eval"]["examples"] == 16  # max_eval_steps batches
    steps = set()
    for path in tf.io.gfile.glob(str(model_dir / "eval" / "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            if any(v.tag == "masked_lm_loss" for v in event.summary.value):
                steps.add(event.step)
    assert steps == {2, 4, 5}
    assert evaluation.read_eval_results(str(model_dir / "eval_results.txt"))[
        "global_step"] == 5


def test_cli_eval_of_a_google_checkpoint(setup, tmp_path):
    model_dir = tmp_path / "cli_eval"
    common = setup["common"]
    result = train_testing.run(
        ["-m", "train.pretrain", "--mode=eval", f"--model_dir={model_dir}",
         f"--init_checkpoint={setup['google']}",
         f"--bert_config_file={common['bert_config_file']}",
         f"--vocab_file={common['vocab_file']}", "--max_seq_length=32",
         "--max_predictions_per_seq=5",
         f"--eval_files={','.join(setup['eval_files'])}"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initialised" in result.stdout and "eval: step 0" in result.stdout
    written = evaluation.read_eval_results(
        os.path.join(model_dir, "eval_results.txt"))
    assert set(GOOGLE_KEYS) <= set(written)
