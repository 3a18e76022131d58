"""The sequenced form (a TPU's): the gradients checked for inf/NaN a shape
at a time (`gradient_sums_by_shape`), then each variable updated in turn,
fenced from the next by an optimization barrier (`update_in_sequence`).

A TPU's compiler stages operands through its vector memory: few kernels
over the gradients leave most of them staged once, and the sequence keeps
the staging lowest while the trust ratios are written out
(docs/optimizer_performance.md).
"""

import tensorflow as tf

from tf_lamb import algorithm
from tf_lamb.compiled import numerics, shared
from tf_lamb.compiled.numerics import optimization_barrier

# `update_in_sequence` stacks the trust ratios this many at a time.
RATIOS_PER_STACK = 8


def update(grads, hyperparameters, update_count, state, settings):
    """One LAMB update of every variable in `state`, in the sequenced form
    (see `shared.update_one_by_one`)."""
    def gradient_sums(grads):
        if settings.clipnorm:  # which needs each gradient's own norm
            return (numerics.gradient_sums(
                *grads, use_matvec=settings.use_matvec),
                [g.dtype for g in grads])
        return gradient_sums_by_shape(grads)

    return shared.update_one_by_one(
        grads, hyperparameters, update_count, state, settings, gradient_sums,
        update_in_sequence)


def gradient_sums_by_shape(grads):
    """`numerics.gradient_sums` of the gradients of each shape and dtype
    together: ([(sum of sum(x**2), sum of sum((x * s)**2)) of each group],
    [the group's dtype]), groups in the order of their first gradient.

    Each group's pair comes from one pass that reads all of its gradients
    (sum_i x_i**2 element-wise, then summed), and the groups pass through
    an optimization barrier one after another. libtpu stages a gradient
    into vector memory for each kernel that reads it; with a kernel per
    gradient here, it staged most of them twice (here, then for their
    variable's update). A dozen kernels for BERT's 204 gradients, in turn,
    leave most staged once (docs/optimizer_performance.md).
    """
    groups = {}
    for g in grads:
        groups.setdefault((tuple(g.shape), g.dtype), []).append(g)
    sums, dtypes = [], []
    for (_, dtype), group in groups.items():
        if sums:
            passed = optimization_barrier(*sums[-1], *group)
            sums[-1], group = tuple(passed[:2]), passed[2:]
        scale = tf.constant(numerics.OVERFLOW_SAFE_SCALE[dtype], dtype)
        sums.append(numerics.summed_together(
            tf.add_n([tf.square(g) for g in group]),
            tf.add_n([tf.square(g * scale) for g in group])))
        dtypes.append(dtype)
    return sums, dtypes


def update_in_sequence(variables, grads, clippings, values, settings,
                       finite):
    """`new_values` of each variable in turn, last first, each
    finished before the next one starts: one variable's results and the
    next one's inputs pass through one optimization barrier; each gradient
    is clipped (`clippings`) after its barrier. Returns phi of the
    variables, a vector in their order.

    Once the trust ratios are a result of the program, libtpu runs every
    variable's moments and norms before any weight update and stages the
    new moments through its vector memory and back (BERT-base on a v5e:
    130.7 B/param by its cost analysis; 71.1 in this sequence, keras Lamb
    71.2). Last first: the gradients checked last may still be in vector
    memory when their variables update.

    The ratios are stacked `RATIOS_PER_STACK` at a time and the stacks
    pass through the barriers: in libtpu's buffer assignment the scalars
    that stay live sit 16 KiB apart, and 204 ratios kept to the end (or
    the two sums each is made of) were most of the step's scratch.
    """
    def assign(variable, results):
        ratio, new_weight, m, v = results
        variable.momentum.assign(m)
        variable.velocity.assign(v)
        variable.weight.assign(tf.cast(new_weight, variable.weight.dtype))
        return ratio

    stacks, ratios = [], []

    def keep(ratio):
        ratios.append(ratio)
        if len(ratios) == RATIOS_PER_STACK:
            stacks.append(tf.stack(ratios))
            del ratios[:]

    previous = None  # (variable, its results)
    for i in reversed(range(len(variables))):
        variable, gradient = variables[i], grads[i]
        inputs = [tf.cast(variable.weight.read_value(), gradient.dtype),
                  variable.momentum.read_value(),
                  variable.velocity.read_value(), gradient]
        if previous is not None:
            passed = optimization_barrier(*stacks, *previous[1], *inputs)
            stacks[:], passed = passed[:len(stacks)], passed[len(stacks):]
            keep(assign(previous[0], passed[:4]))
            inputs = passed[4:]
        weight, m_old, v_old, gradient = inputs
        previous = (variable, new_values(
            variable, weight, m_old, v_old, clippings[i](gradient),
            values[gradient.dtype], settings, finite))
    if previous is not None:
        keep(assign(*previous))
    if ratios:
        stacks.append(tf.stack(ratios))
    if not stacks:
        return tf.zeros([0])
    # Kept last first.
    return tf.reverse(tf.concat(stacks, 0), [0])


def new_values(variable, weight, m_old, v_old, gradient, values, settings,
               finite):
    """Algorithm 2 for one variable, as values: (phi, new weight, m, v),
    each kept at its old value where `finite` is false. `weight` is in
    the gradient's dtype."""
    m, v = shared.new_moments(gradient, m_old, v_old, values)
    m = shared.unless_nonfinite(finite, m, m_old)
    v = shared.unless_nonfinite(finite, v, v_old)
    r = shared.direction(m, v, weight, values, settings,
                         variable.weight_decay)
    if variable.layer_adaptation and not variable.weight_decay:
        # w made an operand of r (0 * w adds nothing to a finite w): libtpu
        # then sums ||w||**2 in the kernel of ||r||**2, where without weight
        # decay it took a kernel of its own (BERT-base: 204 kernels fewer).
        r = r + 0.0 * weight
    ratio = shared.trust_ratio(variable, weight, r, settings,
                               use_matvec=False)
    new_weight = shared.unless_nonfinite(
        finite, algorithm.apply_update(weight, r, values.learning_rate, ratio),
        weight)
    return shared.stored(ratio), new_weight, m, v
