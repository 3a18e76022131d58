"""The encoder SavedModel (TF Hub's text-encoder and Reusable SavedModel
APIs) written at the end of a run, and fine-tuning it from Keras 3
(train.interop.hub_module.load_encoder_layer) and from tf-keras
(tensorflow_hub.KerasLayer)."""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.references import google_checkpoint
from tests.references import numpy_bert
from tests.support import train_testing
from train import PretrainConfig, run_pretraining
from train.interop import hub_module

BERT_CONFIG = train_testing.SMALL_BERT_CONFIG
INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run of 4 updates and the SavedModel its end wrote."""
    root = tmp_path_factory.mktemp("saved_model")
    made = train_testing.small_run_files(root)
    files, vocab = made["files"], made["vocab"]
    vocab_size, config_path = made["vocab_size"], made["bert_config_file"]
    trained = run_pretraining(PretrainConfig(
        model_dir=str(root / "run"), train_files=files, num_train_steps=4,
        log_steps=4, train_batch_size=8, warmup_steps=1, shuffle_buffer=100,
        max_seq_length=32, max_predictions_per_seq=5,
        bert_config_file=str(config_path), vocab_file=vocab,
        export_dir=str(root / "export")))
    return {"export": trained["export_dir"], "model": trained["trainer"].model,
            "vocab": vocab, "vocab_size": vocab_size}


def _inputs(vocab_size, **kwargs):
    return dict(zip(INPUTS, train_testing.encoder_inputs(vocab_size,
                                                         **kwargs)))


def _google_weights(model):
    weights = {}
    for variable in model.weights:
        name, transposed = google_checkpoint.google_name(variable.path)
        value = variable.numpy().astype(np.float64)
        weights[name] = value.T if transposed else value
    return weights


def test_encoder_api(run):
    obj = tf.saved_model.load(run["export"])
    inputs = _inputs(run["vocab_size"])
    outputs = obj({k: tf.constant(v) for k, v in inputs.items()},
                  training=False)
    assert set(outputs) == {"pooled_output", "sequence_output",
                            "encoder_outputs", "default"}
    assert outputs["sequence_output"].shape == (3, 12, 32)
    assert outputs["pooled_output"].shape == (3, 32)
    assert len(outputs["encoder_outputs"]) == 2
    for value in [outputs["pooled_output"], outputs["sequence_output"]] + list(
            outputs["encoder_outputs"]):
        assert value.dtype == tf.float32
    np.testing.assert_array_equal(outputs["encoder_outputs"][-1],
                                  outputs["sequence_output"])
    np.testing.assert_array_equal(outputs["default"],
                                  outputs["pooled_output"])
    # The pooled output gives the next-sentence logits of the float64
    # reference pass over the trained weights.
    weights = _google_weights(run["model"])
    _, nsp_logits = numpy_bert.pretraining_logits(
        weights, 2, inputs["input_word_ids"], inputs["input_mask"],
        inputs["input_type_ids"], np.zeros((3, 1), np.int32))
    logits = (outputs["pooled_output"].numpy()
              @ weights["cls/seq_relationship/output_weights"].T
              + weights["cls/seq_relationship/output_bias"])
    np.testing.assert_allclose(logits, nsp_logits, atol=1e-5)
    # The layer outputs of the model the run trained.
    sequence, pooled, layers = run["model"].encoder(
        *(tf.constant(inputs[k]) for k in INPUTS), all_layers=True)
    np.testing.assert_allclose(outputs["sequence_output"], sequence,
                               atol=1e-5)
    np.testing.assert_allclose(outputs["encoder_outputs"][0], layers[0],
                               atol=1e-5)

    serving = obj.signatures["serving_default"]
    assert set(serving.structured_input_signature[1]) == set(INPUTS)
    served = serving(**{k: tf.constant(v) for k, v in inputs.items()})
    for key in ("pooled_output", "sequence_output", "default"):
        np.testing.assert_array_equal(served[key], outputs[key])


def test_training_applies_dropout(run):
    obj = tf.saved_model.load(run["export"])
    inputs = {k: tf.constant(v)
              for k, v in _inputs(run["vocab_size"]).items()}
    inference = [obj(inputs, training=False)["sequence_output"]
                 for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    training = [obj(inputs, training=True)["sequence_output"].numpy()
                for _ in range(2)]
    assert not np.allclose(training[0], training[1], atol=1e-3)
    assert not np.allclose(training[0], inference[0], atol=1e-3)


def test_reusable_savedmodel_attributes(run):
    obj = tf.saved_model.load(run["export"])
    expected = {name: shape for name, shape in numpy_bert.weight_shapes(
        run["vocab_size"], 32, 2, 64, 64).items() if name.startswith("bert/")}
    assert {v.name[:-len(":0")]: tuple(v.shape)
            for v in obj.variables} == expected
    assert len(obj.variables) == len(expected)
    assert [v.name for v in obj.trainable_variables] == [
        v.name for v in obj.variables]
    assert list(obj.regularization_losses) == []
    # Nothing saved twice: the encoder's weights and do_lower_case only.
    saved = tf.train.load_checkpoint(os.path.join(run["export"], "variables",
                                                  "variables"))
    assert len(saved.get_variable_to_shape_map()) == len(expected) + 2
    vocab_path = obj.vocab_file.asset_path.numpy().decode()
    assert vocab_path.startswith(run["export"])
    assert open(vocab_path).read() == open(run["vocab"]).read()
    assert obj.do_lower_case.dtype == tf.bool and bool(obj.do_lower_case)
    config = json.load(open(obj.bert_config_file.asset_path.numpy()))
    assert config["num_hidden_layers"] == 2


def _task(vocab_size, count=16):
    """A small labelled batch: the class is whether token 7 occurs."""
    inputs = _inputs(vocab_size, batch=count, length=10, seed=1)
    labels = np.arange(count) % 2
    inputs["input_word_ids"][labels == 1, 3] = 7
    inputs["input_word_ids"][labels == 0] = np.where(
        inputs["input_word_ids"][labels == 0] == 7, 8,
        inputs["input_word_ids"][labels == 0])
    return inputs, labels


def test_keras3_fine_tuning(run):
    encoder = hub_module.load_encoder_layer(run["export"])
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in INPUTS}
    logits = keras.layers.Dense(2)(encoder(inputs)["pooled_output"])
    model = keras.Model(inputs, logits)
    model.compile(keras.optimizers.Adam(1e-3),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    x, y = _task(run["vocab_size"])
    assert len(encoder.trainable_weights) == 2 * 16 + 5 + 2
    before = [v.numpy().copy() for v in encoder.trainable_weights]
    losses = [model.evaluate(x, y, verbose=0)]
    for _ in range(3):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        losses.append(model.evaluate(x, y, verbose=0))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    for variable, value in zip(encoder.trainable_weights, before):
        assert not np.array_equal(variable.numpy(), value), variable.name
    # In training the layer applies the encoder's dropout.
    first, second = (model(x, training=True).numpy() for _ in range(2))
    assert not np.allclose(first, second)
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())


# Run in a subprocess: tf-keras needs TF_USE_LEGACY_KERAS=1 set before
# TensorFlow is imported, for the whole process.
_HUB_SCRIPT = """
import json, sys
import numpy as np
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras

path, data = sys.argv[1], np.load(sys.argv[2])
x = {name: data[name] for name in %r}
y = data["labels"]
inputs = {name: tf_keras.Input((None,), dtype=tf.int32, name=name)
          for name in x}
encoder = hub.KerasLayer(path, trainable=True)
logits = tf_keras.layers.Dense(2)(encoder(inputs)["pooled_output"])
model = tf_keras.Model(inputs, logits)
model.compile(tf_keras.optimizers.Adam(1e-3),
              tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
before = [v.numpy().copy() for v in encoder.trainable_weights]
losses = [model.evaluate(x, y, verbose=0)]
for _ in range(3):
    model.fit(x, y, batch_size=len(y), epochs=1, verbose=0)
    losses.append(model.evaluate(x, y, verbose=0))
moved = [not np.array_equal(v.numpy(), b)
         for v, b in zip(encoder.trainable_weights, before)]
dropout = [model(x, training=True).numpy() for _ in range(2)]
print(json.dumps({"losses": losses, "moved": moved,
                  "dropout": float(np.abs(dropout[0] - dropout[1]).max())}))
""" % (INPUTS,)


@pytest.mark.skipif(
    not (importlib.util.find_spec("tensorflow_hub")
         and importlib.util.find_spec("tf_keras")),
    reason="needs tensorflow-hub and tf-keras (pip install "
           "tensorflow-hub tf-keras==<TensorFlow's version>)")
def test_tensorflow_hub_keras_layer_fine_tuning(run, tmp_path):
    x, y = _task(run["vocab_size"])
    data = tmp_path / "task.npz"
    np.savez(data, labels=y, **x)
    result = subprocess.run(
        [sys.executable, "-c", _HUB_SCRIPT, run["export"], str(data)],
        capture_output=True, text=True, timeout=300,
        env=train_testing.python_env(TF_USE_LEGACY_KERAS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    losses = report["losses"]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    assert len(report["moved"]) == 39 and all(report["moved"])
    assert report["dropout"] > 0
