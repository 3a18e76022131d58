"""train.model.bert computes Google BERT's function;
train.interop.init_checkpoints loads Google's and our own checkpoints into
it.

The expectation is tests/references/numpy_bert.py, a float64 NumPy forward pass written
from the architecture with weights under Google's checkpoint names.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from tests.references import google_checkpoint
from tests.references import numpy_bert
from tf_lamb import Lamb
from tf_lamb.distribute import make_strategy
from train.interop import init_checkpoints
from train.model import bert

VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE = 50, 32, 2, 4, 37
SEQ, PREDICTIONS, BATCH = 16, 5, 3
TOLERANCE = 1e-5


def _config(hidden_act="gelu", positions=SEQ):
    return bert.BertConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, intermediate_size=INTERMEDIATE,
        hidden_act=hidden_act, max_position_embeddings=positions)


def _model(config=None, strategy=None):
    config = config or _config()
    scope = strategy.scope() if strategy else _no_scope()
    with scope:
        model = bert.BertPretrainer(config)
        model.build_for(SEQ, PREDICTIONS)
    return model


class _no_scope:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _shapes():
    return numpy_bert.weight_shapes(VOCAB, HIDDEN, LAYERS, INTERMEDIATE, SEQ)


@pytest.fixture(scope="module")
def weights():
    return numpy_bert.random_weights(_shapes(), np.random.default_rng(7))


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(3)
    lengths = [SEQ, 11, 7]  # two examples end in padding
    input_ids = np.zeros((BATCH, SEQ), np.int32)
    input_mask = np.zeros((BATCH, SEQ), np.int32)
    segment_ids = np.zeros((BATCH, SEQ), np.int32)
    positions = np.zeros((BATCH, PREDICTIONS), np.int32)
    for b, n in enumerate(lengths):
        input_ids[b, :n] = rng.integers(1, VOCAB, n)
        input_mask[b, :n] = 1
        segment_ids[b, n // 2:n] = 1  # second segment
        positions[b] = np.sort(rng.choice(np.arange(1, n), PREDICTIONS,
                                          replace=False))
    return {"input_ids": input_ids, "input_mask": input_mask,
            "segment_ids": segment_ids, "masked_lm_positions": positions}


def _numpy_logits(weights, features, gelu=numpy_bert.gelu_tanh):
    return numpy_bert.pretraining_logits(
        weights, HEADS, features["input_ids"], features["input_mask"],
        features["segment_ids"], features["masked_lm_positions"], gelu=gelu)


def _keras_logits(model, features):
    mlm, nsp = model({k: tf.constant(v) for k, v in features.items()},
                     training=False)
    return mlm.numpy(), nsp.numpy()


def _relative(actual, expected):
    """Largest absolute difference over the largest expected magnitude."""
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _assign_by_path(model, weights):
    assigned = set()
    for variable in model.weights:
        name, transposed = google_checkpoint.google_name(variable.path)
        value = weights[name].T if transposed else weights[name]
        variable.assign(value.astype(np.float32))
        assigned.add(name)
    assert assigned == set(weights)


def _google_checkpoint_values(weights):
    """The weights as float32, plus what a released checkpoint also holds."""
    values = {name: value.astype(np.float32)
              for name, value in weights.items()}
    values["global_step"] = np.int64(1000)
    for name in ("bert/embeddings/word_embeddings",
                 "bert/encoder/layer_0/attention/self/query/kernel",
                 "cls/seq_relationship/output_weights"):
        values[name + "/adam_m"] = np.full(weights[name].shape, 0.5,
                                           np.float32)
        values[name + "/adam_v"] = np.full(weights[name].shape, 0.25,
                                           np.float32)
    return values


def _model_values(model):
    return [v.numpy().copy() for v in model.weights]


# -- the forward pass ----------------------------------------------------------

def test_forward_pass_matches_numpy(weights, features):
    model = _model()
    _assign_by_path(model, weights)
    mlm, nsp = _keras_logits(model, features)
    expected_mlm, expected_nsp = _numpy_logits(weights, features)
    assert mlm.shape == (BATCH, PREDICTIONS, VOCAB) and nsp.shape == (BATCH, 2)
    mlm_error = _relative(mlm, expected_mlm)
    nsp_error = _relative(nsp, expected_nsp)
    print(f"tanh gelu vs NumPy: MLM {mlm_error:.2e}, NSP {nsp_error:.2e}")
    assert mlm_error <= TOLERANCE and nsp_error <= TOLERANCE


def test_erf_gelu_misses_google_function(weights, features):
    # The check above can fail: the exact gelu, which "gelu" meant before,
    # is outside the tolerance, while it matches NumPy's erf form.
    model = _model(_config(hidden_act="gelu_exact"))
    _assign_by_path(model, weights)
    mlm, nsp = _keras_logits(model, features)
    expected_mlm, expected_nsp = _numpy_logits(weights, features)
    mlm_error = _relative(mlm, expected_mlm)
    nsp_error = _relative(nsp, expected_nsp)
    print(f"erf gelu vs NumPy tanh form: MLM {mlm_error:.2e}, "
          f"NSP {nsp_error:.2e}")
    assert max(mlm_error, nsp_error) > 10 * TOLERANCE
    erf_mlm, erf_nsp = _numpy_logits(weights, features, numpy_bert.gelu_erf)
    assert _relative(mlm, erf_mlm) <= TOLERANCE
    assert _relative(nsp, erf_nsp) <= TOLERANCE


def test_padded_tokens_do_not_change_logits(weights, features):
    model = _model()
    _assign_by_path(model, weights)
    before = _keras_logits(model, features)
    changed = dict(features)
    changed["input_ids"] = features["input_ids"].copy()
    changed["input_ids"][2, 7:] = 1 + changed["input_ids"][2, 7:] % 40
    after = _keras_logits(model, changed)
    np.testing.assert_allclose(after[0], before[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(after[1], before[1], rtol=1e-5, atol=1e-5)


def test_activation_names():
    x = np.linspace(-6.0, 6.0, 121)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi)
                                       * (x + 0.044715 * x ** 3)))
    erf_form = numpy_bert.gelu_erf(x)
    for name, expected in (("gelu", tanh_form), ("gelu_new", tanh_form),
                           ("gelu_exact", erf_form)):
        got = np.asarray(bert.activation(name)(tf.constant(x)))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12,
                                   err_msg=name)
    assert np.max(np.abs(tanh_form - erf_form)) > 1e-4
    with pytest.raises(ValueError, match="gelu_exact"):
        bert.activation("geluu")


def test_checkpoint_of_the_model_holds_every_weight(tmp_path):
    # Keras 3's tracked lists are invisible to tf.train.Checkpoint; the
    # transformer layers must not be held in one.
    model = _model()
    prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    keys = [k for k in tf.train.list_variables(prefix)
            if k[0].startswith("model/")]
    assert len(keys) == len(model.weights) == 16 * LAYERS + 14


# -- Google checkpoints -----------------------------------------------------

def test_google_checkpoint_loads_and_gives_numpy_logits(weights, features,
                                                        tmp_path):
    prefix = google_checkpoint.write_google_checkpoint(
        str(tmp_path / "google" / "bert_model.ckpt"),
        _google_checkpoint_values(weights))
    expected_mlm, expected_nsp = _numpy_logits(weights, features)
    parameters = sum(int(np.prod(s)) for s in _shapes().values())
    # A prefix, one of its files, and the directory all name it.
    for path in (prefix, prefix + ".index", str(tmp_path / "google")):
        model = _model()
        loaded = init_checkpoints.init_from_checkpoint(model, path)
        assert loaded == (len(_shapes()), parameters)
        mlm, nsp = _keras_logits(model, features)
        assert _relative(mlm, expected_mlm) <= TOLERANCE, path
        assert _relative(nsp, expected_nsp) <= TOLERANCE, path


def test_google_names_cover_the_model():
    model = _model()
    names = init_checkpoints.google_variable_names(model)
    assert {n: tuple(v.shape)[::-1] if t else tuple(v.shape)
            for n, (v, t) in names.items()} == _shapes()


def test_checkpoint_of_a_deeper_model_warns_of_unused_weights(
        weights, tmp_path, caplog):
    values = _google_checkpoint_values(weights)
    for name in list(weights):
        if name.startswith("bert/encoder/layer_1/"):
            values[name.replace("layer_1", "layer_2")] = values[name]
    prefix = google_checkpoint.write_google_checkpoint(str(tmp_path / "deep.ckpt"), values)
    with caplog.at_level("WARNING"):
        init_checkpoints.init_from_checkpoint(_model(), prefix)
    warnings = [r.getMessage() for r in caplog.records
                if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "16 weights" in warnings[0]
    assert "bert/encoder/layer_2/attention/output/LayerNorm/beta" in (
        warnings[0])
    assert "adam" not in warnings[0]


def test_mismatched_checkpoint_is_one_error_and_changes_nothing(weights,
                                                                tmp_path):
    values = _google_checkpoint_values(weights)
    del values["bert/encoder/layer_1/intermediate/dense/bias"]
    values["bert/embeddings/position_embeddings"] = np.zeros(
        (512, HIDDEN), np.float32)
    values["cls/seq_relationship/output_weights"] = np.zeros(
        (HIDDEN, 2), np.float32)  # a Dense kernel, not Google's layout
    prefix = google_checkpoint.write_google_checkpoint(str(tmp_path / "bad.ckpt"), values)
    model = _model()
    before = _model_values(model)
    with pytest.raises(ValueError) as error:
        init_checkpoints.init_from_checkpoint(model, prefix)
    message = str(error.value)
    assert "3 of 46 variables" in message
    assert ("bert/encoder/layer_1/intermediate/dense/bias: model [37], "
            "checkpoint missing") in message
    assert ("bert/embeddings/position_embeddings: model [16, 32], "
            "checkpoint [512, 32]") in message
    assert ("cls/seq_relationship/output_weights: model [2, 32], "
            "checkpoint [32, 2]") in message
    for old, new in zip(before, _model_values(model)):
        np.testing.assert_array_equal(old, new)


def test_bad_paths_are_clear_errors(tmp_path):
    model = _model()
    missing = str(tmp_path / "nothing_here")
    with pytest.raises(ValueError, match="neither a checkpoint"):
        init_checkpoints.init_from_checkpoint(model, missing)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        init_checkpoints.init_from_checkpoint(model, str(tmp_path / "empty"))
    for name in ("a", "b"):
        tf.train.Checkpoint(model=model).write(str(tmp_path / "two" / name))
    with pytest.raises(ValueError, match="several checkpoints"):
        init_checkpoints.init_from_checkpoint(model, str(tmp_path / "two"))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="neither a checkpoint"):
        init_checkpoints.init_from_checkpoint(model, str(tmp_path / "notes.txt"))
    other = tf.train.Checkpoint(step=tf.Variable(3)).save(
        str(tmp_path / "other" / "ckpt"))
    with pytest.raises(ValueError, match="no 'model' entry"):
        init_checkpoints.init_from_checkpoint(model, other)


# -- our own checkpoints ----------------------------------------------------

def _trained_model_and_optimizer():
    model = _model()
    optimizer = Lamb(learning_rate=0.01)
    optimizer.build(model.trainable_variables)
    # One update, so that the weights and the optimizer slots both differ
    # from a fresh model's.
    optimizer.apply_gradients(
        [(tf.ones_like(v), v) for v in model.trainable_variables])
    return model, optimizer


def test_own_checkpoint_round_trips(tmp_path):
    model, optimizer = _trained_model_and_optimizer()
    step = tf.Variable(0, dtype=tf.int64, name="global_step")
    checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer,
                                     step=step)
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path),
                                         max_to_keep=3)
    old_prefix = manager.save(checkpoint_number=1)
    old_values = _model_values(model)
    for variable in model.weights:
        variable.assign(variable * 2.0 + 1.0)
    manager.save(checkpoint_number=2)
    new_values = _model_values(model)

    for path, expected in ((str(tmp_path), new_values),
                           (old_prefix, old_values)):
        fresh = _model()
        fresh_optimizer = Lamb(learning_rate=0.01)
        fresh_optimizer.build(fresh.trainable_variables)
        optimizer_before = [v.numpy().copy()
                            for v in fresh_optimizer.variables]
        loaded = init_checkpoints.init_from_checkpoint(fresh, path)
        assert loaded == (len(expected), sum(v.size for v in expected))
        for got, want, variable in zip(_model_values(fresh), expected,
                                       fresh.weights):
            np.testing.assert_array_equal(got, want, err_msg=variable.path)
        # Only the model: the fresh optimizer keeps its own state.
        for old, variable in zip(optimizer_before, fresh_optimizer.variables):
            np.testing.assert_array_equal(variable.numpy(), old)


def test_own_checkpoint_of_other_shape_is_one_error(tmp_path):
    model = _model(_config(positions=32))
    prefix = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    target = _model()
    before = _model_values(target)
    with pytest.raises(ValueError, match=(
            r"1 of 46 .*\n  bert/embeddings/position_embeddings: "
            r"model \[16, 32\], checkpoint \[32, 32\]$")):
        init_checkpoints.init_from_checkpoint(target, prefix)
    for old, new in zip(before, _model_values(target)):
        np.testing.assert_array_equal(old, new)


# -- distributed ------------------------------------------------------------

def test_mirrored_replicas_all_get_the_values(weights, features, tmp_path):
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    prefix = google_checkpoint.write_google_checkpoint(str(tmp_path / "bert_model.ckpt"),
                                      _google_checkpoint_values(weights))
    model = _model(strategy=strategy)
    init_checkpoints.init_from_checkpoint(model, prefix)
    for variable in model.weights:
        name, transposed = google_checkpoint.google_name(variable.path)
        want = weights[name].T if transposed else weights[name]
        copies = strategy.experimental_local_results(variable.value)
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_allclose(copy.numpy(), want, rtol=1e-6,
                                       err_msg=variable.path)
    # Each replica computes with its own copy.
    inputs = {k: tf.constant(v) for k, v in features.items()}
    per_replica = strategy.run(
        tf.function(lambda f: model(f, training=False)), args=(inputs,))
    expected_mlm, expected_nsp = _numpy_logits(weights, features)
    for mlm, nsp in zip(*(strategy.experimental_local_results(t)
                          for t in per_replica)):
        assert _relative(mlm.numpy(), expected_mlm) <= TOLERANCE
        assert _relative(nsp.numpy(), expected_nsp) <= TOLERANCE

    # Our own checkpoint, written by a one-device model, into the mirrored one.
    source, _ = _trained_model_and_optimizer()
    own = tf.train.Checkpoint(model=source).save(str(tmp_path / "own" / "c"))
    init_checkpoints.init_from_checkpoint(model, own)
    for variable, want in zip(model.weights, _model_values(source)):
        for copy in strategy.experimental_local_results(variable.value):
            np.testing.assert_array_equal(copy.numpy(), want)

