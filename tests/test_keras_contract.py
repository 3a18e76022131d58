"""The private Keras and TensorFlow behaviour that tf_lamb.Lamb relies on.

Lamb replaces Keras' `_backend_apply_gradients` with one compiled step, so it
depends on what the base class does around that hook and on a few private
attributes. Each test checks one of them and fails with a message naming it:
a Keras or TensorFlow release that moves one should fail here, not train
wrongly in silence (an `iterations` counter that stops advancing would, for
instance, freeze the bias correction at t=1).
"""

import numpy as np
import pytest
import tensorflow as tf

import keras
from tf_lamb import Lamb
from tf_lamb import framework
from tf_lamb import lamb as lamb_module


def _variables():
    return [keras.Variable(np.arange(6, dtype=np.float32).reshape(3, 2),
                           name="kernel"),
            keras.Variable(np.ones(2, np.float32), name="bias")]


def _gradients(variables, value=0.5):
    return [tf.fill(v.shape, value) for v in variables]


class _Probe(keras.optimizers.Optimizer):
    """A Keras optimizer that records what the base class passes to the
    hooks Lamb overrides, and updates nothing itself."""

    def __init__(self, **kwargs):
        super().__init__(learning_rate=0.1, **kwargs)
        # Plain lists, kept out of Keras/TF tracking.
        object.__setattr__(self, "hook_calls", [])
        object.__setattr__(self, "reference_names", [])

    def add_variable_from_reference(self, reference_variable, name=None,
                                    initializer="zeros"):
        self.reference_names.append(name)
        return super().add_variable_from_reference(
            reference_variable, name=name, initializer=initializer)

    def _backend_apply_gradients(self, grads, trainable_variables):
        self.hook_calls.append(([np.asarray(g) for g in grads],
                                list(trainable_variables)))


def test_apply_calls_backend_apply_gradients_once_per_call():
    variables = _variables()
    probe = _Probe(gradient_accumulation_steps=2)
    for _ in range(3):
        probe.apply(_gradients(variables), variables)
    assert len(probe.hook_calls) == 3, (
        "keras Optimizer.apply() no longer calls _backend_apply_gradients "
        f"once per call ({len(probe.hook_calls)} calls for 3): Lamb's whole "
        "step, gradient accumulation included, lives in that override")
    grads, hooked = probe.hook_calls[-1]
    assert [id(v) for v in hooked] == [id(v) for v in variables], (
        "_backend_apply_gradients no longer receives the Keras variables "
        "the optimizer was built with")
    np.testing.assert_array_equal(grads[0], np.full((3, 2), 0.5))


def test_apply_advances_the_call_counter_and_the_hook_does_not():
    # Lamb reads `_iterations`, the count of apply() calls: the public
    # `iterations` is that count // gradient_accumulation_steps, and a
    # tensor rather than the variable, so it cannot tell where a cycle is.
    variables = _variables()
    probe = _Probe(gradient_accumulation_steps=2)
    for _ in range(3):
        probe.apply(_gradients(variables), variables)
    counter = getattr(probe, "_iterations", None)
    assert isinstance(counter, keras.Variable), (
        "Optimizer._iterations (the count of apply() calls) is gone")
    assert int(counter.numpy()) == 3, (
        "keras Optimizer.apply() no longer advances `_iterations` once per "
        f"call (3 calls -> {int(counter.numpy())}): Lamb overrides "
        "_backend_apply_gradients, so its bias correction and accumulation "
        "cycle would stop at t=1 (Keras < 3.10 advanced it inside "
        "_backend_apply_gradients)")
    assert int(probe.iterations.numpy()) == 1, (
        "Optimizer.iterations is no longer _iterations // "
        "gradient_accumulation_steps (README: schedules see calls, t counts "
        "updates)")

    sgd = keras.optimizers.SGD(learning_rate=0.1)
    sgd.build(variables)
    sgd._backend_apply_gradients(_gradients(variables), variables)
    assert int(sgd._iterations.numpy()) == 0, (
        "keras' base _backend_apply_gradients advanced `_iterations`: the "
        "counter moved back from apply() into the hook Lamb overrides")


def test_apply_in_a_tf_function_advances_iterations_once_per_call():
    variables = _variables()
    optimizer = Lamb(learning_rate=0.01)
    optimizer.build(variables)
    step = tf.function(lambda: optimizer.apply(_gradients(variables),
                                               variables))
    for _ in range(4):
        step()
    assert int(optimizer._iterations.numpy()) == 4, (
        "Lamb.apply() inside tf.function does not advance `_iterations` once "
        "per call (Keras Optimizer.apply, outside _backend_apply_gradients)")


def test_apply_unscales_and_filters_before_the_hook():
    variables = _variables()
    overwritten = keras.Variable(np.zeros(2, np.float32), name="stat")
    overwritten.overwrite_with_gradient = True
    probe = _Probe(loss_scale_factor=4.0)
    probe.apply(_gradients(variables, 2.0) + [tf.constant([7.0, 8.0])],
                variables + [overwritten])
    grads, hooked = probe.hook_calls[0]
    assert len(hooked) == 2 and all(v is not overwritten for v in hooked), (
        "keras Optimizer.apply() passed an `overwrite_with_gradient` variable "
        "to _backend_apply_gradients; Lamb builds no slots for those")
    np.testing.assert_array_equal(
        overwritten.numpy(), [7.0, 8.0],
        err_msg="keras Optimizer.apply() no longer assigns the gradient to an "
        "`overwrite_with_gradient` variable")
    np.testing.assert_allclose(
        grads[1], [0.5, 0.5], err_msg="keras Optimizer.apply() no longer "
        "divides the gradients by `loss_scale_factor` before "
        "_backend_apply_gradients (Lamb does not)")


def test_lamb_leaves_overwrite_with_gradient_variables_to_keras():
    variables = _variables()
    statistic = keras.Variable(np.zeros(2, np.float32), name="statistic")
    statistic.overwrite_with_gradient = True
    optimizer = Lamb(learning_rate=0.01)
    before = variables[1].numpy()
    optimizer.apply(_gradients(variables) + [tf.constant([3.0, 4.0])],
                    variables + [statistic])
    np.testing.assert_array_equal(statistic.numpy(), [3.0, 4.0])
    assert optimizer._momentums[2] is None, (
        "Lamb built slots for an `overwrite_with_gradient` variable")
    assert not np.allclose(variables[1].numpy(), before)


def test_build_hooks_and_private_attributes():
    variables = _variables()
    probe = _Probe(gradient_accumulation_steps=3, use_ema=True)
    probe.build(variables)
    assert "gradient_accumulator" in probe.reference_names, (
        "keras Optimizer.build() no longer creates the gradient accumulators "
        "through add_variable_from_reference(name='gradient_accumulator') "
        f"(names seen: {probe.reference_names}); Lamb overrides that method "
        "to keep low-precision state in float32")
    assert "gradient_accumulator" in lamb_module._FLOAT32_STATE
    for attribute in ("_accumulated_gradients",
                      "_model_variables_moving_average",
                      "_trainable_variables"):
        slots = getattr(probe, attribute, None)
        assert slots is not None and [tuple(s.shape) for s in slots] == [
            tuple(v.shape) for v in variables], (
            f"Optimizer.{attribute} is no longer a list that follows the "
            "build order of the variables")
    for index, variable in enumerate(variables):
        assert probe._get_variable_index(variable) == index, (
            "Optimizer._get_variable_index(variable) no longer gives the "
            "build order")
    keys = {probe._var_key(v) for v in variables}
    assert len(keys) == 2 and probe._var_key(variables[0]) == probe._var_key(
        variables[0]), ("Optimizer._var_key(variable) no longer gives one "
                        "stable key per variable")


def test_keras_variable_value_is_a_tf_variable():
    variable = _variables()[0]
    value = variable.value
    assert isinstance(value, tf.Variable), (
        "keras.Variable.value is no longer a tf.Variable; Lamb's compiled "
        "step assigns to it in place")
    assert variable.path.endswith("kernel"), (
        "keras.Variable.path is gone; exclusions match it")


def test_distribution_strategy_attribute():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        optimizer = Lamb(learning_rate=0.01)
    assert getattr(optimizer, "_distribution_strategy", None) is strategy, (
        "the TensorFlow backend's Optimizer._distribution_strategy no longer "
        "holds the strategy the optimizer was created under")


def test_maybe_merge_call_then_update_runs_once_per_device():
    interim = getattr(getattr(getattr(tf, "__internal__", None), "distribute",
                              None), "interim", None)
    merge = getattr(interim, "maybe_merge_call", None)
    assert callable(merge), (
        "tf.__internal__.distribute.interim.maybe_merge_call is gone; Lamb's "
        "_backend_apply_gradients uses it to leave the replica context")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        counter = tf.Variable(0.0)

    def update_all(strategy, amount):
        strategy.extended.update(
            counter, lambda v, a: v.assign_add(a), args=(amount,),
            group=False)

    @tf.function
    def step():
        strategy.run(lambda: merge(update_all, strategy, tf.constant(1.0)))

    step()
    copies = [float(c.numpy()) for c in
              strategy.experimental_local_results(counter)]
    assert copies == [1.0, 1.0], (
        "maybe_merge_call + strategy.extended.update(group=False) no longer "
        f"updates each device's copy exactly once (copies: {copies})")


@pytest.mark.parametrize("accumulation", [None, 2])
def test_lamb_bias_correction_follows_iterations(accumulation):
    # With a constant gradient g and t = the number of updates, Adam's
    # bias-corrected m_hat = g and v_hat = g**2, so r = g / (|g| + eps) at
    # every update. With t frozen at 1 (a counter that stopped advancing),
    # the third update's r is 1.32 g / |g| instead (beta_1 = beta_2 = 0.5).
    # The bias is excluded from the trust ratio, so its step is lr * r.
    variables = _variables()
    optimizer = Lamb(learning_rate=0.01, beta_1=0.5, beta_2=0.5,
                     exclude_from_layer_adaptation=["bias"],
                     gradient_accumulation_steps=accumulation)
    calls = 6
    for _ in range(calls - 1):
        optimizer.apply(_gradients(variables), variables)
    before = variables[1].numpy()
    optimizer.apply(_gradients(variables), variables)
    assert int(optimizer._iterations.numpy()) == calls, (
        f"Lamb.apply() x{calls} left `_iterations` at "
        f"{int(optimizer._iterations.numpy())}: keras Optimizer.apply() no "
        "longer advances it once per call, so Lamb's bias correction and "
        "accumulation cycle stop")
    updates = calls // (accumulation or 1)
    # m after n updates of constant g from 0 is g * (1 - beta_1**n).
    np.testing.assert_allclose(
        optimizer._momentums[1].numpy(), [0.5 * (1.0 - 0.5 ** updates)] * 2,
        rtol=1e-6, err_msg="Lamb applied a different number of updates "
        "than `_iterations` implies (Keras Optimizer.apply / "
        "_backend_apply_gradients contract)")
    epsilon = optimizer.epsilon
    np.testing.assert_allclose(
        before - variables[1].numpy(), [0.01 * 0.5 / (0.5 + epsilon)] * 2,
        rtol=1e-5, err_msg="the last update's bias correction did not use "
        f"t = {updates}: `_iterations` (advanced by keras Optimizer.apply) "
        "no longer counts the calls")


@pytest.mark.parametrize("tensorflow_version, keras_version, problem", [
    ("2.15.1", "3.15.1", "tensorflow>=2.16"),
    ("2.21.0", "3.9.2", "keras>=3.10"),
    ("2.16.1", "3.10.0", None),
    ("2.22.0-dev20270101", "3.16.0.dev2027", None),
])
def test_framework_versions_outside_the_tested_range_fail_on_import(
        tensorflow_version, keras_version, problem):
    check = framework.check_versions
    if problem is None:
        check(tensorflow_version, keras_version)
        return
    with pytest.raises(ImportError, match=problem):
        check(tensorflow_version, keras_version)


def test_mirrored_strategy_collective_key_base():
    """tf_lamb.distribute gives each MirroredStrategy it makes collective
    keys of its own through this class attribute, read when a strategy is
    built."""
    strategy_class = tf.distribute.MirroredStrategy
    assert isinstance(getattr(strategy_class, "_collective_key_base", None),
                      int), (
        "tf.distribute.MirroredStrategy._collective_key_base is gone: "
        "tf_lamb.distribute.make_strategy can no longer keep two strategies' "
        "collectives apart")
    from tf_lamb import distribute
    strategy = distribute.make_strategy("mirrored")
    assert strategy.extended._collective_key_base >= (
        distribute._KEYS_PER_STRATEGY), (
        "MirroredStrategy no longer reads _collective_key_base when built")
    assert strategy_class._collective_key_base == 0
