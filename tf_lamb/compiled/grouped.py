"""The grouped form (a GPU's): every sum of squares of the step (the
gradients' for the inf/NaN rule and clipping, the weights' and the
directions' for the trust ratios) in one pass over all variables that
writes nothing, small variables stacked (`grouped_sums`), then one pass
per variable that writes w, m and v (`write_variables`).

A GPU launches a kernel per fusion: this form launches a third of keras
Lamb's kernels on an H100 (docs/optimizer_performance.md). Only float32
variables (and float16/bfloat16 ones) take it (`forms.update_form`): its
stacks are float32.
"""

import math

import tensorflow as tf

from tf_lamb import algorithm
from tf_lamb.compiled import numerics, shared
from tf_lamb.compiled.numerics import optimization_barrier

# A variable of at most this many elements is stacked with the others of its
# size and treatment, so that one kernel sums them all; BERT's biases and
# LayerNorm parameters are 0.2 % of its parameters but 60 % of its
# variables, and each kernel of their own costs a launch.
SMALL_VARIABLE_ELEMENTS = 1 << 16
# A larger variable's sums are taken in two stages: into this many partial
# sums each (one kernel per variable), then all partial sums at once. XLA
# splits a large reduction in two kernels anyway; done here, the second
# stage of every variable shares one kernel.
PARTIAL_SUMS = 256


def update(grads, hyperparameters, update_count, state, settings):
    """One LAMB update of every variable in `state`, in the grouped form;
    returns whether it was finite.

    With clipping by norm the directions need the clipped gradients, so
    the gradients' sums take a pass of their own first (`norm_sums`).
    """
    variables = state.variables
    grads = shared.cast_gradients(grads, variables)  # float32 here
    weights = [tf.cast(v.weight.read_value(), tf.float32) for v in variables]
    moments = [(v.momentum.read_value(), v.velocity.read_value())
               for v in variables]
    values = shared.step_values(update_count, hyperparameters, tf.float32,
                                settings)
    keys = [(v.weight_decay, v.layer_adaptation) for v in variables]
    finite, grad_scales, sums = norm_sums(grads, weights, moments, keys,
                                          values, settings)
    # phi = ||w|| / ||r||, 1 for a variable without layer adaptation.
    ratios = algorithm.trust_ratio(tf.sqrt(sums[:, 1]), tf.sqrt(sums[:, 2]),
                                   settings.max_trust_ratio)
    adapted = tf.constant([key[1] for key in keys])
    ratios = tf.where(adapted, ratios, 1.0)

    def update_variables(finite):
        write_variables(variables, grads, weights, moments, grad_scales,
                        ratios, values, settings, finite)
        return ratios

    shared.store_trust_ratios(state, update_variables, finite=finite,
                              jit_compile=True)
    return finite


def norm_sums(grads, weights, moments, keys, values, settings):
    """(finite, the gradients' clipping scales (None: no clipping by norm),
    [variables, 3] sums): per variable, sum((g * s)**2) (0 with clipping
    by norm, whose pass takes it), sum(w**2) and sum(r**2), r from the
    clipped gradient."""
    clip_by_norm = bool(settings.clipnorm or settings.global_clipnorm)

    def direction(key, g, w, m, v):
        m, v = shared.new_moments(g, m, v, values)
        return shared.direction(m, v, w, values, settings, key[0])

    overflow_safe = tf.constant(numerics.OVERFLOW_SAFE_SCALE[tf.float32])

    def norm_terms(key, g, w, m, v, grad_scale=None):
        # The unclipped g decides the inf/NaN rule, as in the other forms
        # (its scaled square: see numerics.gradient_sums).
        gradient_term = (None if clip_by_norm
                         else tf.square(g * overflow_safe))
        if not key[1]:
            return [gradient_term, None, None]
        g = shared.clip_value(g, settings)
        if grad_scale is not None:
            g = g * grad_scale
        return [gradient_term, tf.square(w),
                tf.square(direction(key, g, w, m, v))]

    if not clip_by_norm:
        sums = grouped_sums(
            [(g, w, m, v) for g, w, (m, v) in zip(grads, weights, moments)],
            keys, norm_terms)
        finite = numerics.all_finite(tf.unstack(sums[:, 0]))
        return finite, [None] * len(grads), sums
    grad_sums = grouped_sums(
        [(g,) for g in grads], [()] * len(grads),
        lambda key, g: [tf.square(g), tf.square(g * overflow_safe)])
    finite = numerics.all_finite(tf.unstack(grad_sums[:, 1]))
    grad_scales = tf.unstack(clip_scales(grad_sums, settings))
    # The scale travels as an input of each variable's terms, so stacked
    # variables take a stacked scale.
    sums = grouped_sums(
        [(g, w, m, v, tf.fill(tf.shape(g), s)) for g, w, (m, v), s
         in zip(grads, weights, moments, grad_scales)], keys,
        lambda key, g, w, m, v, s: norm_terms(key, g, w, m, v, s))
    return finite, grad_scales, sums


def clip_scales(grad_sums, settings):
    """Each gradient's clipping factor (shared.clip_scale), from the
    [gradients, 2] sums (sum(g**2), sum((g * s)**2))."""
    if settings.clipnorm:
        return shared.clip_scale(settings.clipnorm, grad_sums[:, 0],
                                 grad_sums[:, 1])
    return tf.fill([grad_sums.shape[0]], shared.clip_scale(
        settings.global_clipnorm, tf.reduce_sum(grad_sums[:, 0]),
        tf.reduce_sum(grad_sums[:, 1])))


def write_variables(variables, grads, weights, moments, grad_scales, ratios,
                    values, settings, finite):
    """w, m and v of every variable, phi taken from `ratios`; where `finite`
    is false, their old values."""
    for i, variable in enumerate(variables):
        # Through a barrier of its own, a variable's tensors share no
        # operand with another's: XLA then writes its w, m and v in one
        # kernel (reading g, m, v, w once), and joins such kernels of
        # many variables. Without it XLA joins the w of many variables
        # and writes each m and v apart, reading g, m, v twice.
        g, w, m_old, v_old = optimization_barrier(
            grads[i], weights[i], *moments[i])
        g = shared.clip_value(g, settings)
        if grad_scales[i] is not None:
            g = g * grad_scales[i]
        m, v = shared.new_moments(g, m_old, v_old, values)
        # r again, in a form XLA does not share with the sums' pass, so
        # that neither pass writes it out.
        r = shared.direction(m, v, w, values, settings,
                             variable.weight_decay, as_product=True)
        new_weight = algorithm.apply_update(
            w, r, values.learning_rate,
            ratios[i] if variable.layer_adaptation else None)
        variable.momentum.assign(shared.unless_nonfinite(finite, m, m_old))
        variable.velocity.assign(shared.unless_nonfinite(finite, v, v_old))
        variable.weight.assign(tf.cast(
            shared.unless_nonfinite(finite, new_weight, w),
            variable.weight.dtype))


# -- the sums' pass -----------------------------------------------------------

def grouped_sums(inputs, keys, terms):
    """sum(t) of every term t of every variable, as a [variables, k] tensor.

    `inputs[i]` holds variable i's tensors (each of its shape), and
    `terms(key, *tensors)` returns k element-wise terms of them, None for a
    term that is 0. Variables of one size and one `keys[i]` are stacked and
    summed by one reduction. No term is written out: each reduction fuses
    the terms it sums.
    """
    small, large = {}, {}
    for i, tensors in enumerate(inputs):
        size = tensors[0].shape.num_elements()
        if size <= SMALL_VARIABLE_ELEMENTS:
            small.setdefault((size, keys[i]), []).append(i)
        else:
            large.setdefault((math.gcd(size, PARTIAL_SUMS), keys[i]),
                             []).append(i)
    rows, layouts = {}, {}  # variable -> its non-zero sums; which terms
    _stacked_sums(inputs, small, terms, rows, layouts)
    _partial_sums(inputs, keys, large, terms, rows, layouts)

    def full_row(i):
        present = iter(tf.unstack(rows[i]) if rows.get(i) is not None
                       else ())
        return tf.stack([tf.constant(0.0) if t is None else next(present)
                         for t in layouts[i]])

    return tf.stack([full_row(i) for i in range(len(inputs))])


def _stacked_sums(inputs, small, terms, rows, layouts):
    """The sums of the small variables: those of one size and key stacked,
    each term summed over the stack by one reduction."""
    for (_, key), members in small.items():
        stacked = [tf.stack([tf.reshape(inputs[i][j], [-1]) for i in members])
                   for j in range(len(inputs[members[0]]))]
        term_list = terms(key, *stacked)
        present = [tf.reduce_sum(t, axis=-1) for t in term_list
                   if t is not None]
        sums = (tf.unstack(tf.stack(present, axis=-1)) if present
                else [None] * len(members))
        for i, row in zip(members, sums):
            rows[i], layouts[i] = row, term_list


def _partial_sums(inputs, keys, large, terms, rows, layouts):
    """The sums of the large variables: `PARTIAL_SUMS` (or fewer) partial
    sums of each, then the partial sums of all of a group at once."""
    for (parts, _), members in large.items():
        partial_sums, summed = [], []
        for i in members:
            layouts[i] = terms(keys[i], *inputs[i])
            present = [tf.reshape(t, [parts, -1]) for t in layouts[i]
                       if t is not None]
            if present:
                partial_sums.append(tf.reduce_sum(tf.stack(present), axis=-1))
                summed.append(i)
        if partial_sums:
            for i, row in zip(summed, tf.unstack(tf.reduce_sum(
                    tf.stack(partial_sums), axis=-1))):
                rows[i] = row
