"""What every form of the update shares: the gradients' casts, the step's
scalars, the clipping rules, the inf/NaN rule's selects, the trust ratios
kept for summaries, and the frame of the forms that update the variables
one by one (`update_one_by_one`).

The per-variable bodies stay in their forms (`chained`, `sequenced`,
`grouped`): they differ on purpose, each written so that its compiler fuses
it well.
"""

import tensorflow as tf

from tf_lamb import algorithm
from tf_lamb.compiled import numerics


def compute_dtype(dtype):
    """The dtype LAMB computes a variable's update in: float64 for a
    float64 variable, float32 otherwise (the state of a float16 or bfloat16
    variable is float32)."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


def cast_gradients(grads, variables):
    """Each gradient in its variable's `compute_dtype`."""
    return [tf.cast(g, compute_dtype(v.weight.dtype))
            for g, v in zip(grads, variables)]


def step_values(update_count, hyperparameters, dtype, settings):
    """The StepValues of update `update_count + 1` in `dtype` (float64
    variables take their powers in float64; a float32-only program has no
    float64)."""
    return algorithm.StepValues.at(
        tf.cast(update_count + 1, dtype),
        *(tf.cast(h, dtype) for h in hyperparameters),
        bias_correction=settings.bias_correction)


# -- clipping -----------------------------------------------------------------
# Keras allows one of clipnorm, global_clipnorm and clipvalue:
#   clipnorm:         g_i * c / max(||g_i||, c)
#   global_clipnorm:  g_i * c / max(||G||, c),  ||G||**2 = sum_i ||g_i||**2
#   clipvalue:        min(max(g_i, -c), c)
# The norms come from `numerics.gradient_sums` pairs, which hold them even
# where a square overflowed.

def clip_value(g, settings):
    """g clipped to [-clipvalue, clipvalue] with `clipvalue`, else g."""
    if settings.clipvalue:
        return tf.clip_by_value(g, -settings.clipvalue, settings.clipvalue)
    return g


def clip_scale(clip_norm, squared_sum, scaled_sum):
    """c / max(||g||, c), ||g|| from its sums (`numerics.norm`)."""
    return algorithm.clip_scale(clip_norm,
                                numerics.norm(squared_sum, scaled_sum))


def clippings(grads, sums, sum_dtypes, settings):
    """For each gradient, the function that clips it as `settings` asks,
    from `sums`: `gradient_sums` pairs of dtypes `sum_dtypes`, one per
    gradient (which `clipnorm` needs) or per group of them
    (`sequenced.gradient_sums_by_shape`)."""
    if settings.clipnorm:
        return [lambda g, pair=pair: g * clip_scale(
                    tf.cast(settings.clipnorm, g.dtype), *pair)
                for pair in sums]
    if settings.global_clipnorm:
        dtype = numerics.widest(grads)
        squared = tf.add_n([numerics.squared_sum_in(dtype, pair, pair_dtype)
                            for pair_dtype, pair in zip(sum_dtypes, sums)])
        scaled = tf.add_n([numerics.scaled_sum_in(dtype, scaled, pair_dtype)
                           for pair_dtype, (_, scaled) in zip(sum_dtypes,
                                                              sums)])
        scale = clip_scale(tf.cast(settings.global_clipnorm, dtype), squared,
                           scaled)
        return [lambda g: g * tf.cast(scale, g.dtype)] * len(grads)
    return [lambda g: clip_value(g, settings)] * len(grads)


# -- the algorithm's steps with this step's values ----------------------------

def new_moments(gradient, m, v, values):
    """(m, v) after `gradient` (algorithm.update_moments)."""
    return algorithm.update_moments(gradient, m, v, values.beta_1,
                                    values.beta_2)


def direction(m, v, weight, values, settings, weight_decay,
              as_product=False):
    """r = m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w
    (algorithm.lamb_direction)."""
    return algorithm.lamb_direction(
        m, v, weight, values.beta_1_power, values.beta_2_power,
        settings.epsilon, weight_decay, as_product)


def trust_ratio(variable, weight, direction, settings, use_matvec):
    """phi = ||w|| / ||r|| of `variable`, None where it takes no layer
    adaptation."""
    if not variable.layer_adaptation:
        return None
    weight_squared, direction_squared = numerics.sums_of_squares(
        weight, direction, use_matvec=use_matvec)
    return algorithm.trust_ratio(tf.sqrt(weight_squared),
                                 tf.sqrt(direction_squared),
                                 settings.max_trust_ratio)


def stored(ratio):
    """phi as the optimizer's trust_ratios keep it (1 for no adaptation)."""
    return tf.constant(1.0) if ratio is None else tf.cast(ratio, tf.float32)


# -- the inf/NaN rule and the trust ratios kept -------------------------------

def unless_nonfinite(finite, new, old):
    """`new` where `finite` holds, else `old`; `new` when finite is None."""
    return new if finite is None else tf.where(finite, new, old)


def store_trust_ratios(state, update_variables, finite, jit_compile):
    """Runs `update_variables(finite)`, which returns phi of the variables
    of `state`, and keeps those in the optimizer's trust ratios where the
    step is finite."""
    trust_ratios = state.trust_ratios
    previous = trust_ratios.read_value()
    if jit_compile:
        # XLA updates variables in place only outside conditionals, so there
        # `finite` selects the old values element-wise.
        ratios = update_variables(finite)
    else:
        # Outside XLA each element-wise select is a pass of its own; a cond
        # skips the whole update instead.
        ratios = tf.cond(finite, lambda: update_variables(None),
                         lambda: tf.gather(previous, state.indices))
    trust_ratios.assign(tf.where(
        finite,
        tf.tensor_scatter_nd_update(previous, [[i] for i in state.indices],
                                    ratios),
        previous))


# -- the frame of the chained and sequenced forms -----------------------------

def update_one_by_one(grads, hyperparameters, update_count, state, settings,
                      gradient_sums, update_variables):
    """One update in a form that takes each variable's norms and update one
    after the other (chained, sequenced); returns whether it was finite.

    `gradient_sums(grads)` gives the `gradient_sums` pairs that the inf/NaN
    rule and clipping read, and their dtypes; `update_variables(variables,
    grads, clippings, values, settings, finite)` updates every variable,
    clipping its gradient, and returns their phi as a vector.
    """
    grads = cast_gradients(grads, state.variables)
    sums, sum_dtypes = gradient_sums(grads)
    # Decided on the summed gradients: the whole step is dropped, on every
    # replica alike, or taken.
    finite = numerics.all_finite([tf.cast(scaled, numerics.widest(grads))
                                  for _, scaled in sums])
    clips = clippings(grads, sums, sum_dtypes, settings)
    values = {dtype: step_values(update_count, hyperparameters, dtype,
                                 settings)
              for dtype in {g.dtype for g in grads}}
    store_trust_ratios(
        state,
        lambda finite: update_variables(state.variables, grads, clips,
                                        values, settings, finite),
        finite=finite, jit_compile=settings.jit_compile)
    return finite
