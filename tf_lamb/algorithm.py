"""LAMB, one formula per function, in the order of the paper's Algorithm 2.

You et al., "Large Batch Optimization for Deep Learning: Training BERT in
76 Minutes", ICLR 2020 (https://arxiv.org/abs/1904.00962). For a variable w
with gradient g at update t:

    g     = g * clip_norm / max(||G||, clip_norm)     clip_by_global_norm
    m     = beta_1 * m + (1 - beta_1) * g             update_moments
    v     = beta_2 * v + (1 - beta_2) * g**2          update_moments
    m_hat = m / (1 - beta_1**t)                       lamb_direction
    v_hat = v / (1 - beta_2**t)                       lamb_direction
    r     = m_hat / (sqrt(v_hat) + epsilon) + lambda * w
                                                      lamb_direction
    phi   = ||w|| / ||r||                             trust_ratio
    w     = w - learning_rate * phi * r               apply_update

(clipping is optional and precedes the algorithm; beta_1**t and beta_2**t
are the `StepValues` of update t). Every function takes and returns plain
tensors and computes nothing else, so the same code runs inside the XLA
program, in an ordinary graph and eagerly; how the norms are taken and how
the results are stored is `tf_lamb.compiled`'s business.
"""

from typing import NamedTuple

import tensorflow as tf


class StepValues(NamedTuple):
    """The scalars one update uses for every variable (float32 tensors, or
    float64 ones for float64 variables)."""

    learning_rate: tf.Tensor
    beta_1: tf.Tensor
    beta_2: tf.Tensor
    beta_1_power: tf.Tensor  # beta_1**t; 0 without bias correction
    beta_2_power: tf.Tensor  # beta_2**t; 0 without bias correction

    @classmethod
    def at(cls, step, learning_rate, beta_1, beta_2, bias_correction=True):
        """The values of update `step` (t, counted from 1).

        Without bias correction the powers are 0, so m_hat = m, v_hat = v.
        """
        if bias_correction:
            beta_1_power = tf.pow(beta_1, step)
            beta_2_power = tf.pow(beta_2, step)
        else:
            beta_1_power = beta_2_power = tf.zeros([], step.dtype)
        return cls(learning_rate, beta_1, beta_2, beta_1_power, beta_2_power)


def clip_by_global_norm(gradients, clip_norm, global_norm):
    """g_i * clip_norm / max(global_norm, clip_norm), global_norm = ||g||.

    With a list of one gradient and its own norm, this is per-variable
    clipping (`clipnorm`).
    """
    scale = clip_scale(clip_norm, global_norm)
    return [g * scale for g in gradients]


def clip_scale(clip_norm, norm):
    """clip_norm / max(norm, clip_norm): the factor that clips to clip_norm
    a gradient of norm `norm` (elementwise over a tensor of norms)."""
    return clip_norm / tf.maximum(norm, clip_norm)


def update_moments(gradient, m, v, beta_1, beta_2):
    """Exponential moving averages of the gradient and its square.

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * g_t**2
    """
    m = m + (gradient - m) * (1.0 - beta_1)
    v = v + (tf.square(gradient) - v) * (1.0 - beta_2)
    return m, v


def _times_reciprocal(x, y):
    return x * tf.math.reciprocal(y)


def lamb_direction(m, v, weight, beta_1_power, beta_2_power, epsilon,
                   weight_decay, as_product=False):
    """The layer's update direction before the trust ratio.

    r_t = m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w,
    m_hat = m_t / (1 - beta_1**t),  v_hat = v_t / (1 - beta_2**t).

    With bias correction off, pass beta powers of 0 (m_hat = m_t, v_hat = v_t).
    `weight_decay` is a Python float: 0 drops the term from the program.
    `as_product` writes each division as a product with a reciprocal: the
    same r to rounding, in a form XLA does not merge with the quotient form
    (`tf_lamb.compiled` uses it to recompute r rather than store it).
    """
    divide = _times_reciprocal if as_product else tf.math.truediv
    m_hat = divide(m, 1.0 - beta_1_power)
    v_hat = divide(v, 1.0 - beta_2_power)
    direction = divide(m_hat, tf.sqrt(v_hat) + epsilon)
    if weight_decay:
        direction = direction + weight_decay * weight
    return direction


def trust_ratio(weight_norm, direction_norm, max_trust_ratio=None):
    """phi = ||w|| / ||r||, or 1 where either norm is zero; then min(phi, max).

    A zero weight norm (a freshly zero-initialised layer) or a zero direction
    (no gradient and no decay) leaves the plain Adam-style step in place.
    """
    both_positive = tf.logical_and(weight_norm > 0.0, direction_norm > 0.0)
    safe_direction_norm = tf.where(both_positive, direction_norm, 1.0)
    ratio = tf.where(both_positive, weight_norm / safe_direction_norm, 1.0)
    if max_trust_ratio is not None:
        ratio = tf.minimum(ratio, max_trust_ratio)
    return ratio


def apply_update(weight, direction, learning_rate, ratio=None):
    """w_{t+1} = w_t - learning_rate * phi * r_t.

    `ratio` None: a variable excluded from layer adaptation (phi = 1).
    """
    if ratio is not None:
        direction = ratio * direction
    return weight - learning_rate * direction
