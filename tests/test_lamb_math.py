"""Each named step of tf_lamb.algorithm, and the norms of tf_lamb.compiled,
against a float64 NumPy formula."""

import numpy as np
import pytest
import tensorflow as tf

from tests.references.numpy_lamb import max_relative_error
from tf_lamb import algorithm, compiled

RNG = np.random.default_rng(7)


def f32(array):
    return tf.constant(np.asarray(array, np.float32))


def relative_error(actual, expected):
    return max_relative_error([actual], [expected])


def test_update_moments():
    g, m = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 3))
    v = np.abs(RNG.normal(size=(5, 3)))
    new_m, new_v = algorithm.update_moments(f32(g), f32(m), f32(v), 0.9,
                                            0.999)
    assert relative_error(new_m, 0.9 * m + 0.1 * g) < 1e-6
    assert relative_error(new_v, 0.999 * v + 0.001 * g * g) < 1e-6


@pytest.mark.parametrize("as_product", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_lamb_direction(as_product, weight_decay):
    m, w = RNG.normal(size=(6, 4)), RNG.normal(size=(6, 4))
    v = np.abs(RNG.normal(size=(6, 4)))
    b1_power, b2_power = 0.9 ** 3, 0.999 ** 3
    expected = (m / (1 - b1_power)) / (np.sqrt(v / (1 - b2_power)) + 1e-6)
    expected = expected + weight_decay * w
    direction = algorithm.lamb_direction(f32(m), f32(v), f32(w), b1_power,
                                         b2_power, 1e-6, weight_decay,
                                         as_product)
    assert relative_error(direction, expected) < 1e-6


def test_trust_ratio_cases():
    ratio = algorithm.trust_ratio(f32([2.0, 0.0, 3.0, 8.0]),
                                  f32([4.0, 5.0, 0.0, 2.0]),
                                  max_trust_ratio=3.0)
    # ||w||/||r||; 1 where either norm is 0; capped at max_trust_ratio.
    np.testing.assert_allclose(ratio.numpy(), [0.5, 1.0, 1.0, 3.0])


@pytest.mark.parametrize("shape", [(), (7,), (5, 3), (2, 3, 4), (3, 4096),
                                   (2, 6144), (3, 4097)])
@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("use_matvec", [True, False])
def test_sums_of_squares(shape, jit_compile, use_matvec):
    x = RNG.normal(size=shape)
    y = 1e3 * RNG.normal(size=shape)
    compute = tf.function(
        lambda a, b: compiled.sums_of_squares(a, b, use_matvec=use_matvec),
        jit_compile=jit_compile)
    x_sum, y_sum = compute(f32(x), f32(y))
    single = tf.function(
        lambda a: compiled.sums_of_squares(a, use_matvec=use_matvec)[0],
        jit_compile=jit_compile)(f32(x))
    expected = [np.sum(np.square(np.float32(x).astype(np.float64))),
                np.sum(np.square(np.float32(y).astype(np.float64)))]
    assert relative_error(x_sum, expected[0]) < 1e-6
    assert relative_error(y_sum, expected[1]) < 1e-6
    assert relative_error(single, expected[0]) < 1e-6


def test_sums_of_squares_of_a_large_tensor_stay_accurate():
    # 4 M terms of one sign: a running float32 sum drifts by ~4e-3 here.
    x = np.abs(RNG.normal(size=(1024, 4096))).astype(np.float32)
    total = tf.function(lambda a: compiled.sums_of_squares(a)[0],
                        jit_compile=True)(tf.constant(x))
    assert relative_error(total, np.sum(np.square(x.astype(np.float64)))) \
        < 1e-5


def test_clip_by_global_norm():
    grads = [RNG.normal(size=(3, 2)), RNG.normal(size=(4,))]
    norm = np.sqrt(sum(np.sum(g * g) for g in grads))
    clipped = algorithm.clip_by_global_norm([f32(g) for g in grads], 0.5,
                                            tf.constant(norm, tf.float32))
    for c, g in zip(clipped, grads):
        assert relative_error(c, g * 0.5 / norm) < 1e-6
    unclipped = algorithm.clip_by_global_norm(
        [f32(g) for g in grads], 2 * norm, tf.constant(norm, tf.float32))
    for c, g in zip(unclipped, grads):
        assert relative_error(c, g) < 1e-6


@pytest.mark.parametrize("small,parts", [(1 << 16, 256), (8, 4)])
def test_grouped_sums(small, parts, monkeypatch):
    """Every term's sum, whether its variable is stacked with others of its
    size (small), summed in partial sums (large; sizes sharing no, some or
    all factors with the partial count), or has terms that are None."""
    monkeypatch.setattr(compiled.grouped, "SMALL_VARIABLE_ELEMENTS", small)
    monkeypatch.setattr(compiled.grouped, "PARTIAL_SUMS", parts)
    shapes = [(7,), (7,), (3, 4), (), (7,), (70001,), (512, 6), (66, 1000)]
    keys = ["a", "a", "a", "a", "b", "a", "b", "a"]
    xs = [RNG.normal(size=s) for s in shapes]
    ys = [RNG.normal(size=s) for s in shapes]

    def terms(key, x, y):
        # Three terms; "b" variables have no second one.
        return [tf.square(x), None if key == "b" else x * y, tf.abs(y)]

    sums = tf.function(
        lambda xs, ys: compiled.grouped_sums(list(zip(xs, ys)), keys, terms),
        jit_compile=True)([f32(x) for x in xs], [f32(y) for y in ys])
    x32 = [np.float32(x).astype(np.float64) for x in xs]
    y32 = [np.float32(y).astype(np.float64) for y in ys]
    expected = np.array([
        [np.sum(x * x), 0.0 if k == "b" else np.sum(x * y), np.sum(abs(y))]
        for x, y, k in zip(x32, y32, keys)])
    assert sums.shape == (len(shapes), 3)
    np.testing.assert_allclose(sums.numpy(), expected, rtol=1e-5, atol=1e-6)
