"""One small training run, written once for every strategy the tests compare.

Each replica gets a fixed slice of the global batch and its loss is divided by
the global batch size, so summing gradients over replicas gives exactly the
single-device gradient (up to float rounding).
"""

import numpy as np
import tensorflow as tf
import keras

from tf_lamb import Lamb

GLOBAL_BATCH = 16
STEPS = 20


def data(steps=STEPS, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(steps * GLOBAL_BATCH, 8)).astype(np.float32)
    y = np.sin(x.sum(axis=1, keepdims=True)).astype(np.float32)
    return x, y


def make_model(seed=3):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((8,)),
                             keras.layers.Dense(8, activation="tanh"),
                             keras.layers.Dense(1)])


def make_lamb(jit_compile=True):
    return Lamb(learning_rate=0.02, weight_decay=0.01, global_clipnorm=0.5,
                gradient_accumulation_steps=2, use_ema=True,
                jit_compile=jit_compile)


class PlainModule(tf.Module):
    """make_model's network as a tf.Module of plain tf.Variables."""

    def __init__(self, seed=3):
        super().__init__(name="plain")
        rng = np.random.default_rng(seed)
        self.hidden = tf.Variable(
            rng.normal(size=(8, 8)).astype(np.float32) * 0.5, name="kernel")
        self.hidden_bias = tf.Variable(np.zeros(8, np.float32), name="bias")
        self.output = tf.Variable(
            rng.normal(size=(8, 1)).astype(np.float32) * 0.5, name="out")

    def __call__(self, x):
        return tf.matmul(tf.nn.tanh(tf.matmul(x, self.hidden)
                                    + self.hidden_bias), self.output)


def train_custom_loop(strategy, x, y, make_optimizer=make_lamb,
                      wrap_optimizer=None, model_fn=make_model):
    """Trains `model_fn()` (a Keras model, or a tf.Module of tf.Variables)
    with `strategy.run`; returns (weights, optimizer)."""
    with strategy.scope():
        model = model_fn()
        optimizer = make_optimizer()
        if wrap_optimizer is not None:
            optimizer = wrap_optimizer(optimizer)
        optimizer.build(model.trainable_variables)
    replicas = strategy.num_replicas_in_sync
    share = GLOBAL_BATCH // replicas

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(model(xb) - yb)) / GLOBAL_BATCH
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))

    @tf.function
    def step(xb, yb):
        strategy.run(replica_step, args=(xb, yb))

    for s in range(len(x) // GLOBAL_BATCH):
        def shard(array):
            def of_replica(context):
                start = s * GLOBAL_BATCH + (
                    context.replica_id_in_sync_group * share)
                return tf.constant(array[start:start + share])
            return strategy.experimental_distribute_values_from_function(
                of_replica)
        step(shard(x), shard(y))
    return [v.numpy() for v in model.trainable_variables], optimizer


def train_fit(strategy, x, y, make_optimizer=make_lamb):
    with strategy.scope():
        model = make_model()
        model.compile(optimizer=make_optimizer(), loss="mse")
    model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False,
              verbose=0)
    return [v.numpy() for v in model.trainable_variables], model.optimizer


def replica_copies(variable):
    """Each device's copy of a (possibly mirrored) Keras variable."""
    tf_variable = variable.value
    values = getattr(tf_variable, "values", None)
    return [np.asarray(v.numpy()) for v in values] if values else [
        tf_variable.numpy()]
