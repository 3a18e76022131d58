"""The chained form (a CPU's, and every program outside XLA or with float64
variables): each variable's norms and update one after the other.

On a CPU the norms are matvecs (`numerics.sums_of_squares`, use_matvec):
XLA:CPU streams each variable once per norm, w, m and v read once for both
norms of the trust ratio.
"""

import tensorflow as tf

from tf_lamb import algorithm
from tf_lamb.compiled import numerics, shared


def update(grads, hyperparameters, update_count, state, settings):
    """One LAMB update of every variable in `state`, in the chained form;
    `update_count` updates were applied before. Returns whether the step
    was finite (a step whose gradients hold inf or NaN changes no variable
    and no slot)."""
    def gradient_sums(grads):
        return (numerics.gradient_sums(*grads, use_matvec=settings.use_matvec),
                [g.dtype for g in grads])

    return shared.update_one_by_one(
        grads, hyperparameters, update_count, state, settings, gradient_sums,
        update_variables)


def update_variables(variables, grads, clippings, values, settings, finite):
    """`update_variable` of each variable in turn; their phi, a vector."""
    ratios = [update_variable(variable, clip(g), values[g.dtype], settings,
                              finite)
              for variable, g, clip in zip(variables, grads, clippings)]
    return tf.stack(ratios)


def update_variable(variable, gradient, values, settings, finite):
    """Algorithm 2 for one variable; its trust ratio phi.

    `finite`: keep the old values where it is false (None: the caller has
    checked it already).
    """
    w, m_slot, v_slot = variable.weight, variable.momentum, variable.velocity
    weight = tf.cast(w.read_value(), gradient.dtype)
    m_old, v_old = m_slot.read_value(), v_slot.read_value()
    m, v = shared.new_moments(gradient, m_old, v_old, values)
    m_slot.assign(shared.unless_nonfinite(finite, m, m_old))
    v_slot.assign(shared.unless_nonfinite(finite, v, v_old))
    # Reading the slots back (rather than reusing m, v) lets XLA update them
    # in place: nothing after this point needs their old values.
    m, v = m_slot.read_value(), v_slot.read_value()

    def direction(as_product=False):
        return shared.direction(m, v, weight, values, settings,
                                variable.weight_decay, as_product)

    r = direction()
    ratio = shared.trust_ratio(variable, weight, r, settings,
                               settings.use_matvec)
    if ratio is not None and settings.jit_compile:
        # r again, in a form XLA does not share with the norm's pass, so r
        # is never written out: the norm's and the update's loops each read
        # w, m, v. Unfused graph ops keep r anyway.
        r = direction(as_product=True)
    new_weight = shared.unless_nonfinite(
        finite, algorithm.apply_update(weight, r, values.learning_rate, ratio),
        weight)
    w.assign(tf.cast(new_weight, w.dtype))
    return shared.stored(ratio)
