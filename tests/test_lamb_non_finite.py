"""tf_lamb.Lamb's gradient checks: a step with inf or NaN in any gradient
changes no variable and no slot, and huge finite gradients (whose squares
overflow float32) are stepped and clipped, not dropped."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tf_lamb import Lamb


# -- inf and NaN --------------------------------------------------------------

def slots(optimizer):
    return [v.numpy().copy() for v in optimizer.variables]


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


# -- huge finite gradients ----------------------------------------------------

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
