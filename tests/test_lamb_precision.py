"""tf_lamb.Lamb with variables of other dtypes than float32: mixed
precision, bfloat16 and float16 variables (float32 slots), float64
variables (computed in float64), and loss_scale_factor."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_lamb import Lamb
from tests.support.lamb_testing import regression_data, small_model


# -- mixed precision and low-precision variables ------------------------------

@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit(policy, device_kind):
    x, y = regression_data()
    model = small_model(dtype_policy=policy)
    optimizer = Lamb(learning_rate=0.02)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss="mse")
    history = model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    assert all(v.dtype == "float32" for v in model.trainable_variables)


def test_low_precision_variables_get_float32_slots():
    w = keras.Variable(np.ones((3, 3)), dtype="float16", name="w")
    optimizer = Lamb(learning_rate=0.1, gradient_accumulation_steps=2)
    for _ in range(2):
        optimizer.apply_gradients([(tf.ones((3, 3), tf.float16), w)])
    state = (optimizer._momentums + optimizer._velocities
             + optimizer._accumulated_gradients)
    assert {v.dtype for v in state} == {"float32"}
    assert sorted(v.name for v in state) == [
        "w_gradient_accumulator", "w_momentum", "w_velocity"]
    assert w.dtype == "float16" and np.all(w.numpy() < 1.0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_variables_with_accumulation(dtype, device_kind):
    rng = np.random.default_rng(4)
    initial = rng.normal(size=(6, 4)).astype(np.float32)
    grads = [rng.normal(size=(6, 4)).astype(np.float32) for _ in range(4)]

    def trained(jit_compile):
        w = keras.Variable(initial, dtype=dtype)
        optimizer = Lamb(learning_rate=0.1, gradient_accumulation_steps=2,
                         jit_compile=jit_compile)
        for g in grads:
            optimizer.apply_gradients([(tf.constant(g, dtype), w)])
        return np.asarray(tf.cast(w.value, tf.float32))

    compiled, graph = trained(True), trained(False)
    # Equal up to one rounding of the low-precision result.
    np.testing.assert_allclose(compiled, graph, rtol=2.0 ** -7)
    assert not np.allclose(compiled, np.asarray(
        tf.cast(tf.cast(initial, dtype), tf.float32)))


def test_low_precision_model_with_ema_and_swap_ema_weights_callback():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(32, 4)).astype(np.float32)
    y = x.sum(axis=1, keepdims=True)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(1, dtype="bfloat16")])
    model.compile(optimizer=Lamb(learning_rate=0.05, use_ema=True),
                  loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0,
              validation_data=(x, y),
              callbacks=[keras.callbacks.SwapEMAWeights(swap_on_epoch=True)])
    # fit() ends with the averages in the model.
    for w, average in zip(model.trainable_variables,
                          model.optimizer._model_variables_moving_average):
        assert w.dtype == average.dtype == "bfloat16"
        np.testing.assert_array_equal(w.numpy(), average.numpy())


def test_loss_scale_factor_divides_gradients():
    rng = np.random.default_rng(5)
    init = rng.normal(size=(6,)).astype(np.float32)
    scaled, plain = keras.Variable(init), keras.Variable(init)
    a = Lamb(learning_rate=0.01, loss_scale_factor=1024.0)
    b = Lamb(learning_rate=0.01)
    for _ in range(5):
        g = rng.normal(size=(6,)).astype(np.float32)
        a.apply_gradients([(tf.constant(g * 1024.0), scaled)])
        b.apply_gradients([(tf.constant(g), plain)])
    np.testing.assert_allclose(scaled.numpy(), plain.numpy(), rtol=1e-6)


# -- float64 ------------------------------------------------------------------

def test_float64_variables_compute_in_float64(device_kind):
    """A float64 variable's update is computed in float64: equal to the
    NumPy reference to float64 rounding (a float32 computation is ~1e-8
    off), with slots of its dtype; fit trains a float64 model. The
    learning rate and betas are float32 scalars (Keras' learning-rate
    variable is float32), so the reference takes them rounded so."""
    from tests.references.numpy_lamb import NumpyLamb
    rng = np.random.default_rng(11)
    initial = rng.normal(size=(5, 3))
    w = keras.Variable(initial, dtype="float64")
    optimizer = Lamb(0.05, weight_decay=0.01)
    reference = NumpyLamb([initial], weight_decay=[0.01], adapt=[True])
    for _ in range(3):
        g = rng.normal(size=(5, 3))
        optimizer.apply([tf.constant(g, tf.float64)], [w])
        reference.step([g], *(float(np.float32(x)) for x in (0.05, 0.9,
                                                             0.999)))
    assert w.dtype == "float64"
    assert {v.dtype for v in optimizer._momentums + optimizer._velocities} \
        == {"float64"}
    np.testing.assert_allclose(w.numpy(), reference.w[0], rtol=1e-12,
                               atol=1e-14)

    x, y = regression_data()
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(8, dtype="float64"),
                              keras.layers.Dense(1, dtype="float64")])
    model.compile(Lamb(0.01), "mse")
    history = model.fit(x.astype(np.float64), y.astype(np.float64),
                        epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
