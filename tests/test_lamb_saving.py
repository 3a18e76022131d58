"""tf_lamb.Lamb saved and restored: a Keras model file with its slots,
and a tf.train.Checkpoint resumed bit-identically."""

import numpy as np
import tensorflow as tf
import keras

from tf_lamb import Lamb
from tests.support.lamb_testing import regression_data, small_model


def test_model_save_and_load_restores_slots(tmp_path):
    x, y = regression_data()
    model = small_model()
    model.compile(optimizer=Lamb(learning_rate=0.01, weight_decay=0.01),
                  loss="mse")
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, Lamb)
    for a, b in zip(model.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Both continue identically.
    model.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    loaded.fit(x, y, batch_size=64, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    rng = np.random.default_rng(6)
    grads = [[tf.constant(rng.normal(size=s), tf.float32)
              for s in [(5, 3), (3,)]] for _ in range(10)]

    def fresh():
        keras.utils.set_random_seed(7)
        ws = [keras.Variable(np.full((5, 3), 0.5, np.float32)),
              keras.Variable(np.full((3,), -0.2, np.float32))]
        return ws, Lamb(learning_rate=0.02, weight_decay=0.01,
                        gradient_accumulation_steps=2, use_ema=True)

    ws, optimizer = fresh()
    for g in grads:
        optimizer.apply_gradients(zip(g, ws))
    uninterrupted = [w.numpy() for w in ws]

    ws, optimizer = fresh()
    optimizer.build(ws)
    checkpoint = tf.train.Checkpoint(optimizer=optimizer, weights=ws)
    for g in grads[:5]:
        optimizer.apply_gradients(zip(g, ws))
    saved = checkpoint.save(str(tmp_path / "ckpt"))

    ws, optimizer = fresh()
    optimizer.build(ws)
    tf.train.Checkpoint(optimizer=optimizer, weights=ws).restore(
        saved).assert_consumed()
    assert int(optimizer._iterations.numpy()) == 5
    for g in grads[5:]:
        optimizer.apply_gradients(zip(g, ws))
    for a, b in zip(uninterrupted, ws):
        np.testing.assert_array_equal(a, b.numpy())
