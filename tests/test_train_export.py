"""`train.export` to Google BERT's folder layout, checked against an
independent reference of Google's names (google_checkpoint.py) and a float64
NumPy forward pass (numpy_bert.py); bad input; the command line."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.references import google_checkpoint
from tests.references import numpy_bert
from tests.support import train_testing
from train import InputError, PretrainConfig, run_pretraining
from train.interop import exports
from train.interop import init_checkpoints
from train.model import bert

BERT_CONFIG = train_testing.SMALL_BERT_CONFIG
SEQ, PREDICTIONS = 32, 5
GOOGLE_FILES = {"bert_config.json", "vocab.txt", "bert_model.ckpt.index",
                "bert_model.ckpt.data-00000-of-00001"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 4 updates (no end-of-training export) and held-out eval
    records of another text."""
    root = tmp_path_factory.mktemp("export")
    made = train_testing.small_run_files(root, eval_documents=30)
    files, vocab, eval_files = made["files"], made["vocab"], made["eval_files"]
    vocab_size, config_path = made["vocab_size"], made["bert_config_file"]
    common = dict(max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS,
                  bert_config_file=str(config_path), vocab_file=vocab,
                  export_dir="none")
    model_dir = str(root / "run")
    trained = run_pretraining(PretrainConfig(
        model_dir=model_dir, train_files=files, num_train_steps=4,
        log_steps=4, train_batch_size=8, warmup_steps=1,
        shuffle_buffer=100, **common))
    google_dir = str(root / "google")
    exports.export_google_checkpoint(model_dir, google_dir)
    return {"root": root, "model_dir": model_dir, "google": google_dir,
            "model": trained["trainer"].model, "vocab": vocab,
            "vocab_size": vocab_size, "eval_files": tuple(eval_files),
            "common": common}


def _checkpoint_values(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()}


def test_google_folder_has_googles_layout_names_and_values(run):
    assert set(os.listdir(run["google"])) == GOOGLE_FILES
    assert open(os.path.join(run["google"], "vocab.txt")).read() == open(
        run["vocab"]).read()
    assert json.load(open(os.path.join(run["google"], "bert_config.json"))) \
        == json.load(open(run["common"]["bert_config_file"]))
    values = _checkpoint_values(os.path.join(run["google"], "bert_model.ckpt"))
    # Exactly Google's BertModel and pretraining heads: no optimizer slot,
    # no step, nothing of ours.
    expected = numpy_bert.weight_shapes(run["vocab_size"], 32, 2, 64, 64)
    assert {name: value.shape for name, value in values.items()} == expected
    assert {value.dtype for value in values.values()} == {np.dtype(np.float32)}
    for variable in run["model"].weights:
        name, transposed = google_checkpoint.google_name(variable.path)
        value = variable.numpy()
        np.testing.assert_array_equal(values[name],
                                      value.T if transposed else value)


def _eval_examples(files):
    spec = {name: tf.io.FixedLenFeature([length], dtype) for name, length,
            dtype in (("input_ids", SEQ, tf.int64),
                      ("input_mask", SEQ, tf.int64),
                      ("segment_ids", SEQ, tf.int64),
                      ("masked_lm_positions", PREDICTIONS, tf.int64),
                      ("masked_lm_ids", PREDICTIONS, tf.int64),
                      ("masked_lm_weights", PREDICTIONS, tf.float32),
                      ("next_sentence_labels", 1, tf.int64))}
    dataset = tf.data.TFRecordDataset(list(files)).map(
        lambda record: tf.io.parse_single_example(record, spec))
    batch = next(iter(dataset.batch(100000)))
    return {name: value.numpy() for name, value in batch.items()}


def _numpy_metrics(weights, examples, num_heads):
    """Google's --do_eval metrics, from the float64 reference pass."""
    mlm_logits, nsp_logits = numpy_bert.pretraining_logits(
        weights, num_heads, examples["input_ids"], examples["input_mask"],
        examples["segment_ids"], examples["masked_lm_positions"])

    def log_softmax(x):
        x = x - x.max(axis=-1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))

    ids = examples["masked_lm_ids"]
    w = examples["masked_lm_weights"].astype(np.float64)
    mlm_nll = -np.take_along_axis(log_softmax(mlm_logits), ids[..., None],
                                  axis=-1)[..., 0]
    labels = examples["next_sentence_labels"][:, 0]
    nsp_nll = -log_softmax(nsp_logits)[np.arange(len(labels)), labels]
    mlm_loss = (mlm_nll * w).sum() / w.sum()
    nsp_loss = nsp_nll.mean()
    return {
        "masked_lm_loss": mlm_loss, "next_sentence_loss": nsp_loss,
        "loss": mlm_loss + nsp_loss,
        "masked_lm_accuracy": ((mlm_logits.argmax(-1) == ids) * w).sum()
        / w.sum(),
        "next_sentence_accuracy": (nsp_logits.argmax(-1) == labels).mean(),
        "examples": len(labels), "predictions": w.sum()}


def test_google_folder_computes_what_eval_reports(run, tmp_path):
    """Google's computation (the NumPy reference reading the folder with
    tf.train.load_checkpoint only) gives the metrics --mode=eval reports
    for the run's checkpoint."""
    reported = run_pretraining(PretrainConfig(
        **dict(run["common"], model_dir=run["model_dir"], mode="eval",
               eval_files=run["eval_files"], eval_batch_size=16)))["eval"]
    weights = _checkpoint_values(os.path.join(run["google"],
                                              "bert_model.ckpt"))
    reference = _numpy_metrics(weights, _eval_examples(run["eval_files"]),
                               BERT_CONFIG["num_attention_heads"])
    assert reported["examples"] == reference["examples"] > 16
    for key in ("masked_lm_loss", "next_sentence_loss", "loss"):
        assert reported[key] == pytest.approx(reference[key], rel=1e-5), key
    # float32 against float64: an argmax may flip on a near tie.
    assert reported["masked_lm_accuracy"] == pytest.approx(
        reference["masked_lm_accuracy"], abs=1.01 / reference["predictions"])
    assert reported["next_sentence_accuracy"] == pytest.approx(
        reference["next_sentence_accuracy"],
        abs=1.01 / reference["examples"])


def _loaded(path, vocab_size):
    model = bert.BertPretrainer(bert.BertConfig.from_dict(
        dict(BERT_CONFIG, vocab_size=vocab_size)))
    model.build_for(SEQ, PREDICTIONS)
    init_checkpoints.init_from_checkpoint(model, path)
    return model


def test_init_checkpoint_from_the_folder_gives_back_the_weights(run):
    from_google = _loaded(run["google"], run["vocab_size"])
    for a, b in zip(from_google.weights, run["model"].weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_mixed_precision_run_exports_float32(run, tmp_path):
    model_dir = str(tmp_path / "bf16")
    run_pretraining(PretrainConfig(
        **dict(run["common"], model_dir=model_dir,
               train_files=(run["eval_files"]), num_train_steps=1,
               log_steps=1, train_batch_size=4, warmup_steps=0,
               mixed_precision="mixed_bfloat16", export_dir=None)))
    # The end-of-run SavedModel computes in float32 too.
    encoder = tf.saved_model.load(os.path.join(model_dir, "export"))
    ids = tf.constant([[2, 9, 10, 3]])
    outputs = encoder({"input_word_ids": ids, "input_mask": tf.ones_like(ids),
                       "input_type_ids": tf.zeros_like(ids)})
    assert outputs["sequence_output"].dtype == tf.float32
    assert {v.dtype for v in encoder.variables} == {tf.float32}
    out = exports.export_google_checkpoint(model_dir, str(tmp_path / "out"))
    values = _checkpoint_values(os.path.join(out, "bert_model.ckpt"))
    assert {value.dtype for value in values.values()} == {np.dtype(np.float32)}
    model = _loaded(model_dir, run["vocab_size"])
    for variable in model.weights:
        name, transposed = google_checkpoint.google_name(variable.path)
        value = variable.numpy()
        np.testing.assert_array_equal(values[name],
                                      value.T if transposed else value)


def _copy_run(run, destination):
    shutil.copytree(run["model_dir"], destination,
                    ignore=shutil.ignore_patterns("train", "eval*"))
    return str(destination)


@pytest.mark.parametrize("fmt", ["google", "saved_model", "huggingface"])
def test_bad_input_is_refused_before_writing(run, tmp_path, fmt):
    out = tmp_path / "out"
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run["common"]["bert_config_file"], empty)
    with pytest.raises(InputError, match="has no checkpoint"):
        exports.export(str(empty), str(out), fmt)

    other = _copy_run(run, tmp_path / "other")
    config = json.load(open(os.path.join(other, "bert_config.json")))
    config["intermediate_size"] = 48
    json.dump(config, open(os.path.join(other, "bert_config.json"), "w"))
    with pytest.raises(InputError, match="does not match") as raised:
        exports.export(other, str(out), fmt)
    assert "\n" not in str(raised.value)
    assert "intermediate/dense/kernel" in str(raised.value)

    no_vocab = _copy_run(run, tmp_path / "no_vocab")
    os.remove(os.path.join(no_vocab, "vocab.txt"))
    with pytest.raises(InputError, match="no vocab.txt"):
        exports.export(no_vocab, str(out), fmt)

    with pytest.raises(InputError, match="--checkpoint"):
        exports.export(run["model_dir"], str(out), fmt,
                      checkpoint=str(tmp_path / "missing"))
    assert not out.exists()

    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        exports.export(run["model_dir"], str(out), fmt)
    assert os.listdir(out) == ["keep.txt"]
    exports.export(run["model_dir"], str(out), fmt, overwrite=True)
    assert "keep.txt" not in os.listdir(out)


def test_command_line(run, tmp_path):
    out = tmp_path / "cli"
    args = ["-m", "train.export", f"--model_dir={run['model_dir']}",
            "--format=google", f"--output_dir={out}",
            f"--checkpoint={run['model_dir']}/ckpt-4"]
    result = train_testing.run(args, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert set(os.listdir(out)) == GOOGLE_FILES
    assert _checkpoint_values(str(out / "bert_model.ckpt")).keys() == \
        _checkpoint_values(os.path.join(run["google"],
                                        "bert_model.ckpt")).keys()
    again = train_testing.run(args, timeout=300)
    assert again.returncode != 0
    error = again.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: --output_dir") and "not empty" in error
    assert "Traceback" not in again.stderr


def test_run_without_vocabulary(run, tmp_path):
    """TFRecords and a config but no --vocab_file: the end-of-run SavedModel
    is written without vocab_file; train.export refuses the run."""
    model_dir = str(tmp_path / "no_vocab")
    settings = dict(run["common"], vocab_file=None, export_dir=None)
    run_pretraining(PretrainConfig(
        **settings, model_dir=model_dir, train_files=run["eval_files"],
        num_train_steps=1, log_steps=1, train_batch_size=4))
    encoder = tf.saved_model.load(os.path.join(model_dir, "export"))
    assert not hasattr(encoder, "vocab_file")
    assert len(encoder.variables) == 2 * 16 + 5 + 2
    with pytest.raises(InputError, match="no vocab.txt"):
        exports.export_saved_model(model_dir, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
