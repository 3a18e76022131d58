"""train.loop.evaluation: Google run_pretraining's eval metrics, checked
against a NumPy computation from the model's own logits, on one device, under
MirroredStrategy (2 logical CPUs, see conftest.py) and under
MultiWorkerMirroredStrategy (2 worker processes)."""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from tf_lamb.distribute import make_strategy
from train.loop import evaluation
from train.model import bert

SEQ_LENGTH = 32
PREDICTIONS = 5
# 37 records in two files (20 + 17): with a global batch of 8 that is
# 5 batches (odd), the last holding 5 real examples.
RECORDS = 37
FIRST_FILE = 20
BATCH = 8


def _read_examples(path):
    """Every record of a file as a dict of NumPy arrays (via the protos,
    not the project's parser)."""
    examples = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        example = tf.train.Example.FromString(record)
        example_features = {}
        for name, feature in example.features.feature.items():
            if feature.HasField("float_list"):
                example_features[name] = np.array(feature.float_list.value,
                                                  np.float32)
            else:
                example_features[name] = np.array(feature.int64_list.value,
                                                  np.int64)
        examples.append(example_features)
    return examples


def _write_records(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("eval_records"))
    files, vocab = _testing.make_records(
        directory, seq_length=SEQ_LENGTH, predictions=PREDICTIONS,
        name="source", shards=1, max_documents=60, dupe_factor=1)
    records = list(tf.data.TFRecordDataset(files).as_numpy_iterator())
    assert len(records) >= RECORDS, len(records)
    records = records[:RECORDS]
    eval_files = [os.path.join(directory, "eval-0.tfrecord"),
                  os.path.join(directory, "eval-1.tfrecord")]
    _write_records(eval_files[0], records[:FIRST_FILE])
    _write_records(eval_files[1], records[FIRST_FILE:])
    examples = []
    for path in eval_files:
        examples.extend(_read_examples(path))
    assert len(examples) == RECORDS
    with open(vocab) as fh:
        vocab_size = sum(1 for _ in fh)
    return {"files": eval_files, "examples": examples,
            "vocab_size": vocab_size, "directory": directory}


def _config(vocab_size):
    # Dropout stays on (BERT's 0.1) so that a forgotten training=False shows.
    return bert.BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64).validated()


def _model(config, strategy, weights=None):
    with strategy.scope():
        model = bert.BertPretrainer(config)
        model.build_for(SEQ_LENGTH, PREDICTIONS)
    if weights is not None:
        model.set_weights(weights)
    return model


@pytest.fixture(scope="module")
def one_device():
    return tf.distribute.OneDeviceStrategy("/cpu:0")


@pytest.fixture(scope="module")
def mirrored():
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.fixture(scope="module")
def model(data, one_device):
    tf.keras.utils.set_random_seed(3)
    model = _model(_config(data["vocab_size"]), one_device)
    # An untrained model predicts no masked token right, which would leave
    # masked_lm_accuracy untested (0 = 0).  A large output bias for the most
    # frequent real masked token makes it the prediction everywhere, so the
    # accuracy is that token's weighted share, and padding predictions
    # (id 0, weight 0) would count as wrong if their weights were ignored.
    batch = _stack(data["examples"])
    real = batch["masked_lm_ids"][batch["masked_lm_weights"] > 0]
    frequent = np.bincount(real).argmax()
    assert frequent != 0
    bias = np.zeros(model.config.vocab_size, np.float32)
    bias[frequent] = 20.0
    model.mlm.output_bias.assign(bias)
    return model


def _stack(examples):
    return {name: np.stack([e[name] for e in examples])
            for name in examples[0]}


def _log_softmax(logits):
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _numpy_metrics(model, examples, training=False):
    """Google's eval metrics computed in NumPy (float64) from the logits of
    one eager forward pass over all the examples."""
    batch = _stack(examples)
    features = {name: tf.constant(batch[name].astype(np.int32))
                for name in ("input_ids", "input_mask", "segment_ids",
                             "masked_lm_positions")}
    seed = tf.constant([5, 6], tf.int64) if training else None
    mlm_logits, nsp_logits = model(features, training=training, seed=seed)
    mlm_logp = _log_softmax(mlm_logits.numpy())   # [n, predictions, vocab]
    nsp_logp = _log_softmax(nsp_logits.numpy())   # [n, 2]
    ids = batch["masked_lm_ids"]
    weights = batch["masked_lm_weights"].astype(np.float64)
    labels = batch["next_sentence_labels"][:, 0]
    rows, cols = np.meshgrid(np.arange(ids.shape[0]),
                             np.arange(ids.shape[1]), indexing="ij")
    token_loss = -mlm_logp[rows, cols, ids]
    token_correct = (mlm_logp.argmax(axis=-1) == ids).astype(np.float64)
    mlm_loss = (token_loss * weights).sum() / weights.sum()
    mlm_accuracy = (token_correct * weights).sum() / weights.sum()
    nsp_loss = -nsp_logp[np.arange(len(labels)), labels].mean()
    nsp_accuracy = (nsp_logp.argmax(axis=-1) == labels).mean()
    return {"masked_lm_loss": mlm_loss, "masked_lm_accuracy": mlm_accuracy,
            "next_sentence_loss": nsp_loss,
            "next_sentence_accuracy": nsp_accuracy,
            "loss": mlm_loss + nsp_loss}


METRIC_NAMES = ("loss", "masked_lm_accuracy", "masked_lm_loss",
                "next_sentence_accuracy", "next_sentence_loss")


def _assert_close(actual, expected, tolerance=1e-5):
    for name in METRIC_NAMES:
        a, e = actual[name], expected[name]
        assert abs(a - e) <= tolerance * max(1.0, abs(e)), (name, a, e)


def test_eval_equals_numpy_with_partial_last_batch(data, model, one_device):
    assert RECORDS % BATCH, "the last batch must be partial"
    evaluator = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                     SEQ_LENGTH, PREDICTIONS)
    assert evaluator.num_examples == RECORDS
    assert evaluator.num_steps == math.ceil(RECORDS / BATCH)
    metrics = evaluator.evaluate(global_step=7)
    expected = _numpy_metrics(model, data["examples"])
    _assert_close(metrics, expected)
    assert 0 < metrics["masked_lm_accuracy"] < 1
    assert 0 < metrics["next_sentence_accuracy"] < 1
    assert metrics["global_step"] == 7
    assert metrics["examples"] == RECORDS
    assert metrics["examples_per_second"] > 0
    assert set(metrics) == set(METRIC_NAMES) | {
        "global_step", "examples", "examples_per_second"}


def test_dropout_is_off(data, model, one_device):
    evaluator = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                     SEQ_LENGTH, PREDICTIONS)
    first = evaluator.evaluate(1)
    second = evaluator.evaluate(2)
    for name in METRIC_NAMES:
        assert first[name] == second[name], name
    with_dropout = _numpy_metrics(model, data["examples"], training=True)
    assert abs(with_dropout["masked_lm_loss"]
               - first["masked_lm_loss"]) > 1e-4


def test_max_steps_limits_the_batches(data, model, one_device):
    evaluator = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                     SEQ_LENGTH, PREDICTIONS, max_steps=2)
    assert evaluator.num_steps == 2
    metrics = evaluator.evaluate(3)
    assert metrics["examples"] == 2 * BATCH
    _assert_close(metrics,
                  _numpy_metrics(model, data["examples"][:2 * BATCH]))
    # More steps than the data has: every record once, as the default.
    evaluator = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                     SEQ_LENGTH, PREDICTIONS, max_steps=100)
    assert evaluator.num_steps == math.ceil(RECORDS / BATCH)
    assert evaluator.evaluate(3)["examples"] == RECORDS


@pytest.mark.parametrize("batch", [BATCH, 6, 64])
def test_mirrored_equals_one_device(data, model, one_device, mirrored,
                                    batch):
    # 37 records: batch 8 -> 5 steps, the last with 5 real examples; batch 6
    # -> 7 steps, the last with 1 (replica 1 gets padding only); batch 64 ->
    # one step with 27 padding examples.
    copy = _model(model.config, mirrored, weights=model.get_weights())
    single = evaluation.Evaluator(model, one_device, data["files"], batch,
                                  SEQ_LENGTH, PREDICTIONS).evaluate(5)
    distributed = evaluation.Evaluator(copy, mirrored, data["files"], batch,
                                       SEQ_LENGTH, PREDICTIONS).evaluate(5)
    assert distributed["examples"] == single["examples"] == RECORDS
    _assert_close(distributed, single, tolerance=1e-6)
    _assert_close(distributed, _numpy_metrics(model, data["examples"]))


def test_mirrored_max_steps(data, model, mirrored):
    copy = _model(model.config, mirrored, weights=model.get_weights())
    metrics = evaluation.Evaluator(copy, mirrored, data["files"], BATCH,
                                   SEQ_LENGTH, PREDICTIONS,
                                   max_steps=3).evaluate(0)
    assert metrics["examples"] == 3 * BATCH
    _assert_close(metrics,
                  _numpy_metrics(model, data["examples"][:3 * BATCH]))


def test_jit_compile_gives_the_same_metrics(data, model, one_device):
    plain = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                 SEQ_LENGTH, PREDICTIONS).evaluate(0)
    compiled = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                    SEQ_LENGTH, PREDICTIONS,
                                    jit_compile=True).evaluate(0)
    _assert_close(compiled, plain)


def _events(directory):
    """{tag: [(step, value)]} from every events file under `directory`."""
    scalars = {}
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = tf.compat.v1.Event.FromString(record)
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_write_eval_results(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    first = {"global_step": 10, "loss": 7.25, "masked_lm_accuracy": 0.125,
             "masked_lm_loss": 6.5625, "next_sentence_accuracy": 0.5,
             "next_sentence_loss": 0.6875, "examples": 37,
             "examples_per_second": 1234.5}
    second = dict(first, global_step=20, loss=1 / 3, masked_lm_loss=0.1 + 0.2,
                  next_sentence_loss=1 / 3 - (0.1 + 0.2))
    path = evaluation.write_eval_results(model_dir, first)
    assert path == os.path.join(model_dir, "eval_results.txt")
    assert "eval: step 10" in capsys.readouterr().out
    evaluation.write_eval_results(model_dir, second)
    with open(path) as fh:
        lines = fh.read().splitlines()
    keys = [line.split(" = ")[0] for line in lines]
    assert keys == sorted(second), lines
    # Overwritten: the newest evaluation only, every number read back as
    # written (to the last bit).
    assert evaluation.read_eval_results(path) == second
    assert "global_step = 20" in lines
    events = _events(os.path.join(model_dir, "eval"))
    assert "global_step" not in events
    for key in second:
        if key == "global_step":
            continue
        assert [step for step, _ in events[key]] == [10, 20], key
        for (_, value), metrics in zip(events[key], (first, second)):
            assert value == pytest.approx(metrics[key], rel=1e-7), key
    assert not os.path.exists(path + ".tmp")


def test_read_eval_results_rejects_other_text(tmp_path):
    path = tmp_path / "eval_results.txt"
    path.write_text("loss: 1.0\n")
    with pytest.raises(ValueError, match="expected 'key = value'"):
        evaluation.read_eval_results(str(path))


def test_bad_arguments(data, model, one_device, mirrored, tmp_path):
    files = data["files"]
    with pytest.raises(ValueError, match="not divisible by the 2 replica"):
        evaluation.Evaluator(
            _model(model.config, mirrored), mirrored, files, 7, SEQ_LENGTH,
            PREDICTIONS)
    with pytest.raises(ValueError, match="max_steps must be None or a "
                                         "positive integer, got 0"):
        evaluation.Evaluator(model, one_device, files, BATCH, SEQ_LENGTH,
                             PREDICTIONS, max_steps=0)
    with pytest.raises(ValueError, match="at least one TFRecord file"):
        evaluation.Evaluator(model, one_device, [], BATCH, SEQ_LENGTH,
                             PREDICTIONS)
    with pytest.raises(ValueError, match="global_batch_size must be a "
                                         "positive integer"):
        evaluation.Evaluator(model, one_device, files, 0, SEQ_LENGTH,
                             PREDICTIONS)
    with one_device.scope():
        unbuilt = bert.BertPretrainer(model.config)
    with pytest.raises(ValueError, match="must be built"):
        evaluation.Evaluator(unbuilt, one_device, files, BATCH, SEQ_LENGTH,
                             PREDICTIONS)
    empty = tmp_path / "empty.tfrecord"
    _write_records(str(empty), [])
    evaluator = evaluation.Evaluator(model, one_device, [str(empty)], BATCH,
                                     SEQ_LENGTH, PREDICTIONS)
    with pytest.raises(ValueError, match="hold no record: .*empty.tfrecord"):
        evaluator.evaluate(0)


def test_reading_errors_propagate(data, model, one_device, tmp_path):
    # A file cut in the middle of its last record.
    with open(data["files"][1], "rb") as fh:
        content = fh.read()
    truncated = tmp_path / "truncated.tfrecord"
    truncated.write_bytes(content[:-10])
    evaluator = evaluation.Evaluator(
        model, one_device, [data["files"][0], str(truncated)], BATCH,
        SEQ_LENGTH, PREDICTIONS)
    with pytest.raises(tf.errors.OpError):
        evaluator.evaluate(0)
    # A flipped byte inside a record: its checksum no longer matches.
    corrupt = bytearray(content)
    corrupt[len(content) // 2] ^= 0xFF
    bad = tmp_path / "corrupt.tfrecord"
    bad.write_bytes(bytes(corrupt))
    evaluator = evaluation.Evaluator(model, one_device, [str(bad)], BATCH,
                                     SEQ_LENGTH, PREDICTIONS)
    with pytest.raises(tf.errors.DataLossError):
        evaluator.evaluate(0)
    # Records of another shape: parse errors reach the caller too.
    evaluator = evaluation.Evaluator(model, one_device, data["files"], BATCH,
                                     SEQ_LENGTH + 1, PREDICTIONS)
    with pytest.raises(tf.errors.InvalidArgumentError):
        evaluator.evaluate(0)


WORKER_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
from train.loop import evaluation
from train.model import bert
config_json, weights_path, out, batch, files = sys.argv[1:6]
strategy = tf.distribute.MultiWorkerMirroredStrategy()
assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
config = bert.BertConfig.from_dict(json.loads(config_json))
with strategy.scope():
    model = bert.BertPretrainer(config)
    model.build_for(%d, %d)
stored = np.load(weights_path)
model.set_weights([stored[f"arr_{i}"] for i in range(len(stored.files))])
evaluator = evaluation.Evaluator(model, strategy, files.split(","),
                                 int(batch), %d, %d)
metrics = evaluator.evaluate(9)
with open(out, "w") as fh:
    json.dump(metrics, fh)
""" % (SEQ_LENGTH, PREDICTIONS, SEQ_LENGTH, PREDICTIONS)


def test_multi_worker_equals_one_device(data, model, one_device, tmp_path):
    """Two worker processes (MultiWorkerMirroredStrategy, one CPU replica
    each) both call evaluate; each returns the one-device numbers."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    weights = tmp_path / "weights.npz"
    np.savez(weights, *model.get_weights())
    batch = 6  # 7 steps; the last holds 1 real example
    logs = [str(tmp_path / f"worker{index}.log") for index in range(2)]
    outs = [str(tmp_path / f"metrics{index}.json") for index in range(2)]
    codes = _testing.run_workers(
        [[str(script), json.dumps(model.config.to_dict()), str(weights), out,
          str(batch), ",".join(data["files"])] for out in outs], logs,
        timeout=240)
    texts = [open(log).read() for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    single = evaluation.Evaluator(model, one_device, data["files"], batch,
                                  SEQ_LENGTH, PREDICTIONS).evaluate(9)
    for out in outs:
        with open(out) as fh:
            metrics = json.load(fh)
        assert metrics["examples"] == RECORDS
        assert metrics["global_step"] == 9
        _assert_close(metrics, single, tolerance=1e-6)
