"""Helpers shared by the tests of tf_lamb.Lamb with Keras models
(tests/test_lamb_*.py): a small regression problem and its model."""

import keras
import numpy as np


def regression_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    w = rng.normal(size=(8, 1)).astype(np.float32)
    y = np.tanh(x @ w) + 0.01 * rng.normal(size=(n, 1)).astype(np.float32)
    return x, y.astype(np.float32)


def small_model(seed=0, dtype_policy=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8,)),
        keras.layers.Dense(16, activation="tanh", dtype=dtype_policy),
        keras.layers.Dense(1, dtype=dtype_policy),
    ])
