"""tf_lamb.Lamb's moving averages of the weights (use_ema), as Keras keeps
them: the average, overwriting, variables without gradients, gradient
accumulation."""

import numpy as np
import tensorflow as tf
import keras

from tf_lamb import Lamb


def test_ema_tracks_weights_and_finalize_overwrites(device_kind):
    rng = np.random.default_rng(0)
    w = keras.Variable(rng.normal(size=(4, 3)).astype(np.float32))
    optimizer = Lamb(learning_rate=0.05, use_ema=True, ema_momentum=0.8)
    average = None
    for _ in range(6):
        optimizer.apply_gradients(
            [(tf.constant(rng.normal(size=(4, 3)), tf.float32), w)])
        current = w.numpy().astype(np.float64)
        average = current if average is None else (
            0.8 * average + 0.2 * current)
    stored = optimizer._model_variables_moving_average[0].numpy()
    np.testing.assert_allclose(stored, average, rtol=1e-5)
    assert not np.allclose(w.numpy(), average)
    optimizer.finalize_variable_values([w])
    np.testing.assert_allclose(w.numpy(), average, rtol=1e-5)


def test_ema_overwrite_frequency_matches_keras():
    rng = np.random.default_rng(1)
    init = rng.normal(size=(5, 2)).astype(np.float32)
    ours, theirs = keras.Variable(init), keras.Variable(init)
    a = Lamb(learning_rate=0.05, use_ema=True, ema_momentum=0.5,
             ema_overwrite_frequency=3)
    b = keras.optimizers.Lamb(learning_rate=0.05, use_ema=True,
                              ema_momentum=0.5, ema_overwrite_frequency=3)
    for _ in range(7):
        g = tf.constant(rng.normal(size=(5, 2)), tf.float32)
        a.apply_gradients([(g, ours)])
        b.apply_gradients([(g, theirs)])
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-5,
                                   atol=1e-7)


def test_ema_of_a_variable_without_gradient_keeps_its_weights():
    """As in Keras: every trainable variable's average moves at every call,
    the first call copying the weights in."""
    def finalized(optimizer_class):
        a = keras.Variable(np.array([1.0, 2.0], np.float32))
        b = keras.Variable(np.array([3.0, 4.0], np.float32))
        optimizer = optimizer_class(learning_rate=0.05, use_ema=True)
        optimizer.build([a, b])
        optimizer.apply([tf.constant([0.1, -0.2]), None], [a, b])
        optimizer.apply([tf.constant([0.3, 0.1]), None], [a, b])
        optimizer.finalize_variable_values([a, b])
        return a.numpy(), b.numpy()

    ours, theirs = finalized(Lamb), finalized(keras.optimizers.Lamb)
    np.testing.assert_array_equal(ours[1], [3.0, 4.0])
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)


def test_fit_with_ema_and_accumulation_ending_mid_cycle_keeps_weights():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(16, 3)).astype(np.float32)
    y = rng.normal(size=(16, 1)).astype(np.float32)
    results = {}
    for name, make in (("ours", Lamb), ("keras", keras.optimizers.Lamb)):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        initial = model.layers[0].kernel.numpy().copy()
        model.compile(optimizer=make(learning_rate=0.05, use_ema=True,
                                     gradient_accumulation_steps=4),
                      loss="mse")
        # Two calls of a four-call cycle: no update, and the averages are the
        # unchanged weights that fit() writes back at its end.
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        results[name] = model.layers[0].kernel.numpy()
        np.testing.assert_allclose(results[name], initial, rtol=1e-6)
    np.testing.assert_allclose(results["ours"], results["keras"], rtol=1e-6)


def test_ema_moves_on_accumulation_calls_as_keras_does():
    def averages(optimizer_class):
        w = keras.Variable(np.array([1.0, -1.0, 0.5], np.float32))
        optimizer = optimizer_class(learning_rate=0.05, use_ema=True,
                                    ema_momentum=0.5,
                                    gradient_accumulation_steps=2)
        for g in ([0.1, 0.2, 0.3], [0.3, -0.1, 0.2], [0.2, 0.2, -0.2]):
            optimizer.apply_gradients([(tf.constant(g), w)])
        return optimizer._model_variables_moving_average[0].numpy()

    np.testing.assert_allclose(averages(Lamb),
                               averages(keras.optimizers.Lamb), rtol=1e-5)
