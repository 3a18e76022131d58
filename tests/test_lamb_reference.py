"""tf_lamb.Lamb against the paper (NumPy) and against keras.optimizers.Lamb."""

import numpy as np
import pytest
import tensorflow as tf
import keras

from tests.references.numpy_lamb import (NumpyLamb, clip_global_norm, clip_norm, clip_value,
                        max_relative_error)
from tf_lamb import Lamb

SHAPES = {
    "dense/kernel": (6, 5),
    "dense/bias": (5,),
    "scale": (),
    "zero_init/kernel": (3, 4),
    "no_grad/kernel": (4, 2),
    "layer_norm/gamma": (5,),
}


def make_variables(seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    variables = []
    for path, shape in SHAPES.items():
        value = rng.normal(size=shape) * scale
        if path.startswith("zero_init"):
            value = np.zeros(shape)
        variables.append(keras.Variable(np.asarray(value, np.float32),
                                        name=path.replace("/", "_")))
    return variables


def make_gradients(steps, seed=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        grads = []
        for path, shape in SHAPES.items():
            g = rng.normal(size=shape).astype(np.float32)
            if path.startswith("no_grad"):
                g = np.zeros(shape, np.float32)
            grads.append(np.asarray(g, np.float32))
        out.append(grads)
    return out


def run_lamb(optimizer, variables, gradients):
    for grads in gradients:
        optimizer.apply_gradients(
            zip([tf.constant(g) for g in grads], variables))
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("jit_compile", [True, False])
def test_matches_numpy_algorithm_2(bias_correction, jit_compile, device_kind):
    # device_kind (conftest.py): the form of the step a CPU, a GPU or a TPU
    # program takes, each run here.
    steps = 100
    variables = make_variables(scale=3.0)
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(steps)
    optimizer = Lamb(learning_rate=0.01, beta_1=0.9, beta_2=0.99,
                     epsilon=1e-6, weight_decay=0.05, max_trust_ratio=2.5,
                     bias_correction=bias_correction, jit_compile=jit_compile)
    optimizer.exclude_from_weight_decay(var_names=["bias", "layer_norm"])
    optimizer.exclude_from_layer_adaptation(var_names=["layer_norm"])
    actual = run_lamb(optimizer, variables, gradients)

    decay = [0.0 if ("bias" in p or "layer_norm" in p) else 0.05
             for p in SHAPES]
    adapt = ["layer_norm" not in p for p in SHAPES]
    reference = NumpyLamb(initial, decay, adapt, epsilon=1e-6,
                          max_trust_ratio=2.5,
                          bias_correction=bias_correction)
    for grads in gradients:
        reference.step(grads, 0.01, 0.9, 0.99)

    assert reference.clipped > 0, "max_trust_ratio never bound: weak test"
    error = max_relative_error(actual, reference.w)
    print(f"max relative error vs NumPy Algorithm 2: {error:.3g}")
    assert error <= 1e-5
    # The zero-initialised variable moved (trust ratio 1, not 0/0).
    assert np.any(actual[3] != 0)
    np.testing.assert_allclose(optimizer.trust_ratios.numpy(),
                               reference.trust_ratios, rtol=1e-5)


def test_equals_keras_lamb_without_weight_decay():
    # Where a norm is zero (phi = 1) the raw direction shows through, and
    # Keras computes (1 - beta_2) in float64 but beta_2**t in float32, which
    # scales its v_hat by 1 + 1.3e-5 at t = 1; a non-zero trust ratio divides
    # that scale out. So the comparison leaves the zero-initialised variable
    # to the NumPy test above.
    keep = [i for i, p in enumerate(SHAPES) if not p.startswith("zero_init")]
    variables = [make_variables()[i] for i in keep]
    keras_variables = [keras.Variable(v.numpy(), name=v.name)
                       for v in variables]
    gradients = [[g[i] for i in keep] for g in make_gradients(30)]
    ours = run_lamb(Lamb(learning_rate=0.005), variables, gradients)
    theirs = run_lamb(keras.optimizers.Lamb(learning_rate=0.005),
                      keras_variables, gradients)
    error = max_relative_error(ours, theirs)
    print(f"max relative error vs keras.optimizers.Lamb: {error:.3g}")
    assert error <= 1e-6


def test_weight_decay_applied_once_inside_trust_ratio():
    # keras.optimizers.Lamb adds decoupled decay outside the trust ratio; we
    # must not, so the two differ once weight decay is on.
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(5)
    actual = run_lamb(Lamb(learning_rate=0.01, weight_decay=0.1), variables,
                      gradients)
    reference = NumpyLamb(initial, [0.1] * len(SHAPES), [True] * len(SHAPES))
    for grads in gradients:
        reference.step(grads, 0.01, 0.9, 0.999)
    assert max_relative_error(actual, reference.w) <= 1e-5
    keras_variables = [keras.Variable(w) for w in initial]
    theirs = run_lamb(keras.optimizers.Lamb(learning_rate=0.01,
                                            weight_decay=0.1),
                      keras_variables, gradients)
    assert max_relative_error(theirs, reference.w) > 1e-4


def test_schedule_and_callable_betas():
    steps = 12
    schedule = keras.optimizers.schedules.ExponentialDecay(
        0.02, decay_steps=3, decay_rate=0.5)
    beta_1 = keras.Variable(0.9, trainable=False)
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(steps)
    optimizer = Lamb(learning_rate=schedule, beta_1=lambda: beta_1,
                     beta_2=tf.constant(0.95))
    reference = NumpyLamb(initial, [0.0] * len(SHAPES), [True] * len(SHAPES))
    for step, grads in enumerate(gradients):
        b1 = 0.9 - 0.01 * step
        beta_1.assign(b1)
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads],
                                      variables))
        reference.step(grads, float(schedule(step)), np.float32(b1), 0.95)
    assert max_relative_error([v.numpy() for v in variables],
                              reference.w) <= 1e-5


def test_callable_learning_rate():
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(3)
    run_lamb(Lamb(learning_rate=lambda: 0.03), variables, gradients)
    reference = NumpyLamb(initial, [0.0] * len(SHAPES), [True] * len(SHAPES))
    for grads in gradients:
        reference.step(grads, 0.03, 0.9, 0.999)
    assert max_relative_error([v.numpy() for v in variables],
                              reference.w) <= 1e-5


@pytest.mark.parametrize("argument,clip", [
    ("clipnorm", lambda grads: clip_norm(grads, 0.5)),
    ("clipvalue", lambda grads: clip_value(grads, 0.3)),
    ("global_clipnorm", lambda grads: clip_global_norm(grads, 1.0)),
])
def test_gradient_clipping(argument, clip, device_kind):
    value = {"clipnorm": 0.5, "clipvalue": 0.3, "global_clipnorm": 1.0}
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = [[g * 10 for g in grads] for grads in make_gradients(10)]
    run_lamb(Lamb(learning_rate=0.01, **{argument: value[argument]}),
             variables, gradients)
    reference = NumpyLamb(initial, [0.0] * len(SHAPES), [True] * len(SHAPES))
    unclipped = NumpyLamb(initial, [0.0] * len(SHAPES), [True] * len(SHAPES))
    for grads in gradients:
        reference.step(clip(grads), 0.01, 0.9, 0.999)
        unclipped.step(grads, 0.01, 0.9, 0.999)
    actual = [v.numpy() for v in variables]
    assert max_relative_error(actual, reference.w) <= 1e-5
    assert max_relative_error(actual, unclipped.w) > 1e-4


@pytest.mark.parametrize("jit_compile", [True, False])
def test_gradient_accumulation_updates_every_n_steps_with_the_mean(
        jit_compile, device_kind):
    steps = 3
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(2 * steps)
    optimizer = Lamb(learning_rate=0.01, weight_decay=0.01,
                     gradient_accumulation_steps=steps,
                     jit_compile=jit_compile)
    reference = NumpyLamb(initial, [0.01] * len(SHAPES), [True] * len(SHAPES))
    for k, grads in enumerate(gradients):
        before = [v.numpy() for v in variables]
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads],
                                      variables))
        after = [v.numpy() for v in variables]
        if (k + 1) % steps:
            assert all(np.array_equal(a, b) for a, b in zip(after, before))
        else:
            window = gradients[k + 1 - steps:k + 1]
            mean = [np.mean([np.asarray(w[i], np.float64) for w in window],
                            axis=0) for i in range(len(SHAPES))]
            reference.step(mean, 0.01, 0.9, 0.999)
            assert max_relative_error(after, reference.w) <= 1e-5
    assert int(optimizer._iterations.numpy()) == 2 * steps
    assert reference.t == 2  # bias correction counted two updates


@pytest.mark.parametrize("jit_compile", [True, False])
def test_non_finite_gradient_skips_only_its_accumulation_cycle(
        jit_compile, device_kind):
    steps = 2
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(3 * steps)
    gradients[0][1] = np.full_like(gradients[0][1], np.inf)
    optimizer = Lamb(learning_rate=0.01, gradient_accumulation_steps=steps,
                     jit_compile=jit_compile)
    reference = NumpyLamb(initial, [0.0] * len(SHAPES), [True] * len(SHAPES))
    for k, grads in enumerate(gradients):
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads],
                                      variables))
        if k == steps - 1:  # the first cycle held an inf: nothing moves
            assert all(np.array_equal(v.numpy(), w)
                       for v, w in zip(variables, initial))
            reference.t += 1  # a skipped update still counts for t
        elif (k + 1) % steps == 0:  # later cycles see only their own means
            window = gradients[k + 1 - steps:k + 1]
            reference.step([np.mean([np.asarray(w[i], np.float64)
                                     for w in window], axis=0)
                            for i in range(len(SHAPES))], 0.01, 0.9, 0.999)
            actual = [v.numpy() for v in variables]
            assert max_relative_error(actual, reference.w) <= 1e-5
    assert reference.t == 3


def test_steps_of_one_means_no_accumulation():
    assert Lamb(gradient_accumulation_steps=1).gradient_accumulation_steps \
        is None


def test_beta_variables_are_read_at_every_step():
    beta_1, beta_2 = tf.Variable(0.9), keras.Variable(0.99)
    variables = make_variables()
    initial = [v.numpy() for v in variables]
    gradients = make_gradients(6)
    optimizer = Lamb(learning_rate=0.01, beta_1=beta_1, beta_2=beta_2)
    reference = NumpyLamb(initial, [0.0] * len(SHAPES), [True] * len(SHAPES))
    for step, grads in enumerate(gradients):
        beta_1.assign(0.9 - 0.02 * step)
        optimizer.apply_gradients(zip([tf.constant(g) for g in grads],
                                      variables))
        reference.step(grads, 0.01, np.float32(0.9 - 0.02 * step),
                       np.float32(0.99))
    assert max_relative_error([v.numpy() for v in variables],
                              reference.w) <= 1e-5


def test_trust_ratios_of_more_variables_than_a_stack(device_kind):
    """The TPU's form stacks the trust ratios a few at a time
    (compiled.RATIOS_PER_STACK): with several stacks, some variables
    excluded from adaptation and some sharing a shape, each ratio and each
    weight is still the NumPy reference's, in the variables' order."""
    from tf_lamb import compiled
    count = 2 * compiled.RATIOS_PER_STACK + 3
    rng = np.random.default_rng(21)
    shapes = [(3 + i % 4, 2) if i % 3 else (5,) for i in range(count)]
    initial = [rng.normal(size=s) * (1 + i) for i, s in enumerate(shapes)]
    variables = [keras.Variable(np.asarray(w, np.float32), name=f"w{i}")
                 for i, w in enumerate(initial)]
    adapt = [i % 5 != 4 for i in range(count)]
    optimizer = Lamb(learning_rate=0.01, weight_decay=0.01)
    optimizer.exclude_from_layer_adaptation(
        var_names=[f"w{i}" for i in range(count) if not adapt[i]])
    reference = NumpyLamb(initial, [0.01] * count, adapt)
    for _ in range(3):
        grads = [rng.normal(size=s).astype(np.float32) for s in shapes]
        optimizer.apply_gradients(zip(map(tf.constant, grads), variables))
        reference.step(grads, 0.01, 0.9, 0.999)
    np.testing.assert_allclose(optimizer.trust_ratios.numpy(),
                               reference.trust_ratios, rtol=1e-5)
    assert len(set(np.round(reference.trust_ratios, 6))) > count // 2
    assert max_relative_error([v.numpy() for v in variables],
                              reference.w) <= 1e-5
