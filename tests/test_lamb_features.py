"""The Keras optimizer contract of tf_lamb.Lamb: EMA, sparse gradients, mixed
precision, loss scaling, serialization, checkpoints, bad input, fit()."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_lamb import Lamb


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


def slots(optimizer):
    return [v.numpy().copy() for v in optimizer.variables]


# -- EMA ---------------------------------------------------------------------

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


# -- sparse gradients ----------------------------------------------------------

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


# -- mixed precision and loss scaling --------------------------------------------

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


def test_non_finite_step_changes_nothing_under_loss_scale_optimizer():
    rng = np.random.default_rng(3)
    w = keras.Variable(rng.normal(size=(4, 4)).astype(np.float32))
    optimizer = keras.optimizers.LossScaleOptimizer(Lamb(learning_rate=0.1))
    g = tf.constant(rng.normal(size=(4, 4)), tf.float32)
    optimizer.apply_gradients([(g, w)])
    inner = optimizer.inner_optimizer
    weights, state = w.numpy().copy(), slots(inner)
    bad = g.numpy().copy()
    bad[1, 2] = np.inf
    optimizer.apply_gradients([(tf.constant(bad), w)])
    np.testing.assert_array_equal(w.numpy(), weights)
    for before, after in zip(state, slots(inner)):
        if before.shape == weights.shape:  # moments, not counters
            np.testing.assert_array_equal(after, before)
    optimizer.apply_gradients([(g, w)])
    assert not np.array_equal(w.numpy(), weights)


@pytest.mark.parametrize("jit_compile", [True, False])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
def test_non_finite_gradient_changes_no_variable_or_slot(bad, jit_compile,
                                                        device_kind):
    # XLA gates element-wise, graph ops with a cond: both must skip it all.
    rng = np.random.default_rng(4)
    ws = [keras.Variable(rng.normal(size=s).astype(np.float32))
          for s in [(3, 2), (2,)]]
    optimizer = Lamb(learning_rate=0.1, use_ema=True, jit_compile=jit_compile)
    optimizer.apply_gradients([(tf.ones(w.shape), w) for w in ws])

    def state():
        return [v.numpy().copy() for v in ws + optimizer._momentums
                + optimizer._velocities
                + optimizer._model_variables_moving_average
                + [optimizer.trust_ratios]]

    before = state()
    grads = [np.ones((3, 2), np.float32), np.ones(2, np.float32)]
    grads[1][0] = bad
    optimizer.apply_gradients(zip(map(tf.constant, grads), ws))
    for after, expected in zip(state(), before):
        np.testing.assert_array_equal(after, expected)
    # The next finite step is applied again.
    optimizer.apply_gradients([(2.0 * tf.ones(w.shape), w) for w in ws])
    assert all(not np.array_equal(after, expected)
               for after, expected in zip(state()[:2], before[:2]))


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


# -- names, exclusions, config ---------------------------------------------------

def test_name_scopes_slot_variables():
    w = keras.Variable(np.ones(3, np.float32), name="kernel")
    optimizer = Lamb(name="my_lamb")
    optimizer.build([w])
    assert optimizer.name == "my_lamb"
    assert all(v.path.startswith("my_lamb/") for v in optimizer.variables)
    assert Lamb().name == "lamb"


def test_exclusions_search_the_variable_path():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(4, name="attention_output")(inputs)
    outputs = keras.layers.LayerNormalization(name="LayerNorm")(hidden)
    model = keras.Model(inputs, outputs)
    optimizer = Lamb(weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["LayerNorm", "bias"])
    optimizer.exclude_from_layer_adaptation(var_names=["attention_output/b"])
    decayed = {v.path: optimizer._use_weight_decay(v)
               for v in model.trainable_variables}
    adapted = {v.path: optimizer._use_layer_adaptation(v)
               for v in model.trainable_variables}
    assert decayed == {"attention_output/kernel": True,
                       "attention_output/bias": False,
                       "LayerNorm/gamma": False, "LayerNorm/beta": False}
    assert adapted == {"attention_output/kernel": True,
                       "attention_output/bias": False,
                       "LayerNorm/gamma": True, "LayerNorm/beta": True}
    # var_list exclusion, by object.
    optimizer.exclude_from_layer_adaptation(
        var_list=[model.trainable_variables[0]])
    assert not optimizer._use_layer_adaptation(model.trainable_variables[0])


def test_constructor_exclusions_as_in_tf_addons():
    optimizer = Lamb(weight_decay=0.01,
                     exclude_from_weight_decay=["bias", "LayerNorm"])
    config = optimizer.get_config()
    assert config["exclude_from_weight_decay"] == ["bias", "LayerNorm"]
    # TF Addons / Model Garden: the adaptation list defaults to this one.
    assert config["exclude_from_layer_adaptation"] == ["bias", "LayerNorm"]
    both = Lamb(exclude_from_weight_decay=["bias"],
                exclude_from_layer_adaptation=[])
    assert both.get_config()["exclude_from_layer_adaptation"] == []


def test_get_config_round_trip_and_keras_serialization():
    schedule = keras.optimizers.schedules.PolynomialDecay(1e-3, 100, 1e-5)
    optimizer = Lamb(learning_rate=schedule, beta_1=0.8, beta_2=0.98,
                     epsilon=1e-6, weight_decay=0.01, global_clipnorm=1.0,
                     use_ema=True, ema_momentum=0.9,
                     ema_overwrite_frequency=5, loss_scale_factor=8.0,
                     gradient_accumulation_steps=4, name="pretrain_lamb",
                     max_trust_ratio=10.0, bias_correction=False,
                     jit_compile=False,
                     exclude_from_weight_decay=["LayerNorm", "bias"],
                     exclude_from_layer_adaptation=["LayerNorm"])
    config = optimizer.get_config()
    restored = Lamb.from_config(config)
    assert restored.get_config() == config
    via_keras = keras.optimizers.deserialize(
        keras.optimizers.serialize(optimizer))
    assert isinstance(via_keras, Lamb)
    assert via_keras.get_config() == config
    for key, value in {"beta_1": 0.8, "epsilon": 1e-6, "max_trust_ratio": 10.0,
                       "bias_correction": False, "jit_compile": False,
                       "gradient_accumulation_steps": 4}.items():
        assert config[key] == value


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


# -- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs,names", [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": "fast"}, "learning_rate"),
    ({"beta_1": 1.0}, "beta_1"),
    ({"beta_1": -0.1}, "beta_1"),
    ({"beta_2": 1.5}, "beta_2"),
    ({"beta_2": tf.constant(1.0)}, "beta_2"),
    ({"epsilon": -1e-7}, "epsilon"),
    ({"weight_decay": -0.01}, "weight_decay"),
    ({"max_trust_ratio": 0.0}, "max_trust_ratio"),
    ({"max_trust_ratio": -1.0}, "max_trust_ratio"),
    ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
    ({"gradient_accumulation_steps": 2.5}, "gradient_accumulation_steps"),
    ({"clipnorm": 1.0, "global_clipnorm": 1.0}, "clipnorm"),
    ({"clipvalue": 1.0, "clipnorm": 1.0}, "clipvalue"),
    ({"clipnorm": -1.0}, "clipnorm"),
    ({"ema_momentum": 1.5, "use_ema": True}, "ema_momentum"),
    ({"ema_overwrite_frequency": 0, "use_ema": True},
     "ema_overwrite_frequency"),
    ({"loss_scale_factor": 0.0}, "loss_scale_factor"),
    ({"exclude_from_weight_decay": "bias"}, "exclude_from_weight_decay"),
    ({"exclude_from_layer_adaptation": ["("]},
     "exclude_from_layer_adaptation"),
    ({"learnig_rate": 0.1}, "learnig_rate"),
])
def test_bad_input_raises_value_error_naming_it(kwargs, names):
    with pytest.raises(ValueError, match=names):
        Lamb(**kwargs)


def test_bad_exclusion_pattern_in_method():
    optimizer = Lamb()
    with pytest.raises(ValueError, match="regular expression"):
        optimizer.exclude_from_weight_decay(var_names=["[unclosed"])


# -- training -------------------------------------------------------------------

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


# -- tf.Variable models ---------------------------------------------------------

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


def test_a_variable_learning_rate_is_refused_and_a_callable_honoured():
    rate = keras.Variable(0.05)
    with pytest.raises(ValueError, match="learning_rate` must not be a var"):
        Lamb(learning_rate=rate)
    w = keras.Variable(np.array([1.0, 2.0], np.float32))
    optimizer = Lamb(learning_rate=lambda: rate)
    optimizer.apply_gradients([(tf.constant([0.1, 0.2]), w)])
    moved = w.numpy().copy()
    assert not np.array_equal(moved, [1.0, 2.0])
    rate.assign(0.0)
    optimizer.apply_gradients([(tf.constant([0.1, 0.2]), w)])
    np.testing.assert_array_equal(w.numpy(), moved)


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


# -- float64, huge gradients, attributes changed between steps -----------------

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


@pytest.mark.parametrize("clipping", [{}, {"global_clipnorm": 1.0},
                                      {"clipnorm": 1.0}])
def test_huge_finite_gradients_are_stepped_not_dropped(clipping,
                                                       device_kind):
    """|g| = 1e19 in 8 elements: the float32 sum of squares overflows, but
    every value is finite, so the step is taken. Without clipping it equals
    keras Lamb's; with clipping the clipped gradient is g / ||g||, and the
    step equals the one taken with that gradient given directly."""
    huge = np.full((2, 4), 1e19, np.float32)
    huge[0, 1] = -3e18
    w = keras.Variable(np.ones((2, 4), np.float32))
    Lamb(0.01, **clipping).apply([tf.constant(huge)], [w])
    expected = keras.Variable(np.ones((2, 4), np.float32))
    if clipping:
        unit = huge.astype(np.float64) / np.linalg.norm(huge.astype(
            np.float64))
        Lamb(0.01).apply([tf.constant(unit.astype(np.float32))], [expected])
    else:
        keras.optimizers.Lamb(0.01).apply([tf.constant(huge)], [expected])
    assert not np.array_equal(w.numpy(), np.ones((2, 4)))
    np.testing.assert_allclose(w.numpy(), expected.numpy(), rtol=1e-6)
    # An infinite element among them still drops the step.
    huge[1, 2] = np.inf
    before = w.numpy().copy()
    optimizer = Lamb(0.01, **clipping)
    optimizer.apply([tf.constant(huge)], [w])
    np.testing.assert_array_equal(w.numpy(), before)
    assert not optimizer._momentums[0].numpy().any()


def test_huge_float32_gradients_beside_float64_variables(device_kind):
    """global_clipnorm over a float32 variable whose sum of squares
    overflows float32 and a float64 one: the global norm is taken in
    float64 from the float32 variable's scaled sum, so the step equals the
    one taken with g / ||g|| given directly. (A first step does not depend
    on the gradient's scale, so a second, unclipped one follows.)"""
    huge = np.full((2, 4), 1e19, np.float32)
    small = np.linspace(-3e18, 3e18, 6)
    grads = [huge.astype(np.float64), small]
    total = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    rng = np.random.default_rng(13)
    second = [0.1 * rng.normal(size=(2, 4)), 0.1 * rng.normal(size=6)]

    def variables():
        return [keras.Variable(np.ones((2, 4), np.float32)),
                keras.Variable(np.ones(6), dtype="float64")]

    def tensors(arrays, variables):
        return [tf.constant(a.astype(v.dtype))
                for a, v in zip(arrays, variables)]

    clipped, expected = variables(), variables()
    clipping, plain = Lamb(0.01, global_clipnorm=1.0), Lamb(0.01)
    clipping.apply(tensors(grads, clipped), clipped)
    plain.apply(tensors([g / total for g in grads], expected), expected)
    clipping.apply(tensors(second, clipped), clipped)
    plain.apply(tensors(second, expected), expected)
    for w, reference in zip(clipped, expected):
        assert not np.array_equal(w.numpy(), np.ones(w.shape))
        np.testing.assert_allclose(w.numpy(), reference.numpy(), rtol=1e-6)


@pytest.mark.parametrize("magnitude", [1.0, 1e19])
def test_same_shaped_gradients_clipped_and_checked_together(magnitude,
                                                            device_kind):
    """Gradients of one shape are summed together for the inf/NaN rule and
    global clipping (in the TPU's form): with several same-shaped
    gradients (at 1e19, their squares overflow float32 together), the
    clipped step equals the one taken with g / ||G|| given directly, and
    an inf in the second of them drops the whole step."""
    rng = np.random.default_rng(14)
    shapes = [(2, 4), (3,), (2, 4), (3,)]
    grads = [rng.normal(size=s) * magnitude for s in shapes]
    total = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    initial = [rng.normal(size=s).astype(np.float32) for s in shapes]
    clipped = [keras.Variable(a) for a in initial]
    expected = [keras.Variable(a) for a in initial]
    clipping = Lamb(0.01, global_clipnorm=1.0)
    clipping.apply([tf.constant(g.astype(np.float32)) for g in grads],
                   clipped)
    plain = Lamb(0.01)
    plain.apply([tf.constant((g / total).astype(np.float32))
                 for g in grads], expected)
    # A first step does not depend on the gradients' scale; a second,
    # small (unclipped) one does, through m and v.
    second = [0.1 * rng.normal(size=s).astype(np.float32) for s in shapes]
    clipping.apply([tf.constant(g) for g in second], clipped)
    plain.apply([tf.constant(g) for g in second], expected)
    for w, reference, start in zip(clipped, expected, initial):
        assert not np.array_equal(w.numpy(), start)
        np.testing.assert_allclose(w.numpy(), reference.numpy(), rtol=1e-6)
    before = [w.numpy().copy() for w in clipped]
    slots = [m.numpy().copy() for m in clipping._momentums]
    bad = [g.astype(np.float32) for g in grads]
    bad[2][1, 3] = np.inf
    clipping.apply([tf.constant(g) for g in bad], clipped)
    for w, start in zip(clipped, before):
        np.testing.assert_array_equal(w.numpy(), start)
    for m, start in zip(clipping._momentums, slots):
        np.testing.assert_array_equal(m.numpy(), start)


def test_huge_finite_gradients_with_accumulation(device_kind):
    """The accumulated mean's second look reads the accumulators."""
    huge = np.full((4,), 1e19, np.float32)
    w = keras.Variable(np.ones(4, np.float32))
    optimizer = Lamb(0.01, global_clipnorm=1.0, gradient_accumulation_steps=2)
    for _ in range(2):
        optimizer.apply([tf.constant(huge)], [w])
    expected = keras.Variable(np.ones(4, np.float32))
    Lamb(0.01).apply([tf.constant(np.full(4, 0.5, np.float32))], [expected])
    np.testing.assert_allclose(w.numpy(), expected.numpy(), rtol=1e-6)


@pytest.mark.parametrize("attribute, value", [
    ("epsilon", 1.0), ("weight_decay", 0.5), ("max_trust_ratio", 0.1),
    ("bias_correction", False)])
def test_attributes_set_after_the_first_step_take_effect(attribute, value,
                                                         device_kind):
    """As in Keras, an attribute set between eager steps applies from the
    next step: equal to the NumPy reference whose setting changes then."""
    from tests.references.numpy_lamb import NumpyLamb
    rng = np.random.default_rng(12)
    initial = rng.normal(size=(6, 4))
    w = keras.Variable(initial.astype(np.float32))
    optimizer = Lamb(0.05, weight_decay=0.01, epsilon=1e-6)
    reference = NumpyLamb([initial], weight_decay=[0.01], adapt=[True],
                          epsilon=1e-6)
    for step in range(3):
        if step == 1:
            setattr(optimizer, attribute, value)
            if attribute == "weight_decay":
                reference.weight_decay = [value]
            else:
                setattr(reference, attribute, value)
        g = rng.normal(size=(6, 4))
        optimizer.apply([tf.constant(g.astype(np.float32))], [w])
        reference.step([g.astype(np.float32).astype(np.float64)], 0.05, 0.9,
                       0.999)
    np.testing.assert_allclose(w.numpy(), reference.w[0], rtol=2e-5,
                               atol=1e-6)
    # Steps with unchanged attributes reuse the program.
    assert len(optimizer._programs) == 1
