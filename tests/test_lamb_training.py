"""What tf_lamb.Lamb trains: a Keras model through fit(), sparse
(IndexedSlices) gradients, and models of plain tf.Variables (a tf.Module
trained eagerly, in a tf.function and under XLA, and checkpointed)."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_lamb import Lamb
from tests.support.lamb_testing import regression_data, small_model


# -- fit() and sparse gradients -----------------------------------------------

def test_fit_drives_regression_to_low_loss():
    x, y = regression_data()
    model = small_model()
    model.compile(optimizer=Lamb(learning_rate=0.02, weight_decay=0.001),
                  loss="mse")
    initial = model.evaluate(x, y, verbose=0)
    model.fit(x, y, batch_size=32, epochs=30, verbose=0)
    final = model.evaluate(x, y, verbose=0)
    print(f"fit: mse {initial:.4f} -> {final:.4f}")
    assert final < 0.02 and final < 0.05 * initial


def test_indexed_slices_equal_dense_gradients():
    rng = np.random.default_rng(2)
    table = rng.normal(size=(10, 4)).astype(np.float32)
    sparse_var, dense_var = keras.Variable(table), keras.Variable(table)
    a, b = Lamb(learning_rate=0.01), Lamb(learning_rate=0.01)
    for _ in range(4):
        ids = tf.constant(rng.integers(0, 10, size=6))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(sparse_var.value, ids) ** 2)
        (grad,) = tape.gradient(loss, [sparse_var.value])
        assert isinstance(grad, tf.IndexedSlices)
        a.apply_gradients([(grad, sparse_var)])
        b.apply_gradients([(tf.convert_to_tensor(grad), dense_var)])
    np.testing.assert_array_equal(sparse_var.numpy(), dense_var.numpy())
    assert not np.array_equal(sparse_var.numpy(), table)


# -- tf.Variable models -------------------------------------------------------

class _TwoLayerModule(tf.Module):
    """A tf.Module of plain tf.Variables, trained the TensorFlow way."""

    def __init__(self, seed, make_variable=tf.Variable):
        super().__init__(name="net")
        rng = np.random.default_rng(seed)
        with tf.name_scope("net"):
            self.kernel = make_variable(
                rng.normal(size=(5, 4)).astype(np.float32), name="dense/kernel")
            self.bias = make_variable(np.zeros(4, np.float32),
                                      name="dense/bias")
            self.out = make_variable(
                rng.normal(size=(4, 1)).astype(np.float32), name="out/kernel")

    def __call__(self, x):
        return tf.matmul(tf.nn.tanh(tf.matmul(x, self.kernel) + self.bias),
                         self.out)


def _train_module(module, optimizer, steps, mode):
    rng = np.random.default_rng(11)
    x = tf.constant(rng.normal(size=(16, 5)).astype(np.float32))
    y = tf.constant(rng.normal(size=(16, 1)).astype(np.float32))
    variables = [module.kernel, module.bias, module.out]

    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(module(x) - y))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables),
                                      variables))

    if mode != "eager":
        step = tf.function(step, jit_compile=(mode == "xla"))
    for _ in range(steps):
        step()
    return [v.numpy() for v in variables]


def _keras_variable(value, name):
    return keras.Variable(value, name=name.replace("/", "_"))


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_tf_variables_train_as_keras_variables_do(mode, device_kind):
    def lamb():
        return Lamb(learning_rate=0.05, weight_decay=0.1,
                    exclude_from_weight_decay=["bias"])

    plain = _train_module(_TwoLayerModule(0), lamb(), 6, mode)
    reference = _train_module(_TwoLayerModule(0, _keras_variable), lamb(), 6,
                              mode)
    for ours, theirs in zip(plain, reference):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
    assert not np.allclose(plain[0], _TwoLayerModule(0).kernel.numpy())


def test_tf_variable_exclusions_match_by_name():
    module = _TwoLayerModule(1)
    optimizer = Lamb(learning_rate=0.05, weight_decay=0.1,
                     exclude_from_weight_decay=["bias"])
    optimizer.build([module.kernel, module.bias])
    assert optimizer._use_weight_decay(module.kernel)
    assert not optimizer._use_weight_decay(module.bias)
    assert not optimizer._use_layer_adaptation(module.bias)


def test_tf_variables_and_keras_variables_in_one_call():
    mixed = _TwoLayerModule(2)
    mixed.out = _keras_variable(mixed.out.numpy(), "out/kernel")
    reference = _TwoLayerModule(2, _keras_variable)
    ours = _train_module(mixed, Lamb(learning_rate=0.05), 4, "xla")
    theirs = _train_module(reference, Lamb(learning_rate=0.05), 4, "xla")
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_tf_module_checkpoint_restores_and_continues(tmp_path):
    module = _TwoLayerModule(3)
    optimizer = Lamb(learning_rate=0.05, weight_decay=0.01)
    _train_module(module, optimizer, 3, "function")
    path = tf.train.Checkpoint(model=module, optimizer=optimizer).save(
        str(tmp_path / "ckpt"))
    uninterrupted = _train_module(module, optimizer, 3, "function")

    fresh, fresh_optimizer = _TwoLayerModule(99), Lamb(learning_rate=0.05,
                                                      weight_decay=0.01)
    fresh_optimizer.build([fresh.kernel, fresh.bias, fresh.out])
    tf.train.Checkpoint(model=fresh, optimizer=fresh_optimizer).restore(
        path).assert_existing_objects_matched()
    assert int(fresh_optimizer.iterations.numpy()) == 3
    resumed = _train_module(fresh, fresh_optimizer, 3, "function")
    for a, b in zip(resumed, uninterrupted):
        np.testing.assert_array_equal(a, b)
