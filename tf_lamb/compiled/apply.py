"""One call of the optimizer: the replica sum, the program of each device,
and around the update of the form it takes (`forms.PASSES`), gradient
accumulation and EMA, each written so that XLA updates variables in
place."""

import tensorflow as tf

from tf_lamb.compiled import forms, shared


def apply_on_every_device(strategy, grads, hyperparameters, anchor,
                          run_program):
    """Sums `grads` over replicas, then calls `run_program(anchor_copy,
    grads, hyperparameters)` once per device (or once inside a TPU program),
    where every distributed variable resolves to that device's copy.

    `anchor` is any optimizer variable: its copy tells the device.
    """
    def update_all(strategy, grads, hyperparameters):
        strategy.extended.update(anchor.value, run_program,
                                 args=(grads, hyperparameters), group=False)

    replica_context = tf.distribute.get_replica_context()
    if replica_context is None:
        update_all(strategy, grads, hyperparameters)
        return
    # Clipping norms and trust ratios must see the global gradient, never
    # one replica's share. (One replica: the call alone would cost time.)
    if replica_context.num_replicas_in_sync > 1:
        grads = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    tf.__internal__.distribute.interim.maybe_merge_call(
        update_all, strategy, grads, hyperparameters)


def program(state_of_device, settings):
    """The step as a tf.function of (gradients, (lr, beta_1, beta_2)).

    `state_of_device()` gives the StepState when the function is traced,
    inside the update of one device, so the program captures that device's
    copies: each device needs a program of its own.
    """
    return tf.function(
        lambda grads, hyper: step(grads, hyper, state_of_device(), settings),
        jit_compile=settings.jit_compile, autograph=False,
        reduce_retracing=True)


def run_if(condition, body, jit_compile):
    """Runs `body(trip)`, trip = 0, if `condition` holds.

    Under XLA this is a while loop of zero or one trips: a loop updates its
    variables in place, where a conditional copies every variable that the
    branch not taken passes through (on an accumulating call, all of w, m
    and v). Outside XLA a `tf.cond` costs nothing extra.
    """
    def run():
        body(tf.constant(0))
        return tf.constant(True)

    if not jit_compile:
        tf.cond(condition, run, lambda: tf.constant(False))
        return

    def loop_body(trip):
        body(trip)
        return trip + 1

    tf.while_loop(lambda trip: trip < tf.cast(condition, tf.int32),
                  loop_body, [tf.constant(0)])


def step(grads, hyperparameters, state, settings):
    """One call: an update, or with gradient accumulation, a call that adds
    to the accumulators or one that updates with their mean.

    The update is the pass of `settings.form`: update(grads,
    hyperparameters, update_count, state, settings), `update_count` updates
    applied before, returns whether the step was finite; a step whose
    gradients hold inf or NaN changes no variable and no slot.
    """
    update = forms.PASSES[settings.form]
    iterations = state.iterations
    steps = settings.accumulation_steps
    if not steps:
        finite = update(grads, hyperparameters, iterations, state, settings)
        update_ema(state.averaged, iterations, finite, settings)
        return
    accumulators = [variable.accumulator for variable in state.variables]
    is_update_step = tf.equal((iterations + 1) % steps, 0)
    starts_cycle = tf.equal(iterations % steps, 0)

    def accumulate(trip):
        # The first call of a cycle overwrites the last cycle's mean, so no
        # pass over the accumulators is spent zeroing them.
        for a, g in zip(accumulators, grads):
            g = tf.cast(g, a.dtype)
            a.assign(tf.where(starts_cycle, g, a.read_value() + g))
        # Keras moves the averages at every call, the weights unchanged.
        update_ema(state.averaged, iterations // steps, None, settings)

    def take_mean(trip):
        # A loop of its own: inside the update's loop XLA would fuse the mean
        # into each pass that reads it and copy the old sums aside.
        for a, g in zip(accumulators, grads):
            a.assign((a.read_value() + tf.cast(g, a.dtype)) / steps)

    def apply_mean(trip):
        means = [a.read_value() for a in accumulators]
        if settings.jit_compile:
            # Times 1.0 from the trip count: XLA would otherwise hoist the
            # loop-invariant g**2 out of the loop as a full-size temporary
            # per variable, allocated even when no update runs.
            one = tf.cast(trip, tf.float32) + 1.0
            means = [m * tf.cast(one, m.dtype) for m in means]
        finite = update(means, hyperparameters, iterations // steps, state,
                        settings)
        update_ema(state.averaged, iterations // steps, finite, settings)

    run_if(tf.logical_not(is_update_step), accumulate, settings.jit_compile)
    run_if(is_update_step, take_mean, settings.jit_compile)
    run_if(is_update_step, apply_mean, settings.jit_compile)


def update_ema(averaged, updates, finite, settings):
    """average = momentum * average + (1 - momentum) * w for every (w,
    average) in `averaged`, at every call, as Keras' base optimizer does.
    `updates` is Keras' `optimizer.iterations` (updates before this call):
    momentum is 0 while it is 0 (the weights are copied in), and where
    `updates + 1` is a multiple of `ema_overwrite_frequency` the weights take
    their averages. Where `finite` is false (an update dropped by the inf/NaN
    rule), nothing changes."""
    if settings.ema_momentum is None or not averaged:
        return
    momentum = tf.where(updates > 0, settings.ema_momentum, 0.0)
    overwrite = None
    if settings.ema_overwrite_frequency:
        overwrite = tf.equal(
            (updates + 1) % settings.ema_overwrite_frequency, 0)
        if finite is not None:
            overwrite = tf.logical_and(finite, overwrite)
    for w, average in averaged:
        dtype = shared.compute_dtype(w.dtype)
        weight = tf.cast(w.read_value(), dtype)
        old_average = tf.cast(average.read_value(), dtype)
        w_momentum = tf.cast(momentum, dtype)
        new_average = shared.unless_nonfinite(
            finite, w_momentum * old_average + (1.0 - w_momentum) * weight,
            old_average)
        average.assign(tf.cast(new_average, average.dtype))
        if overwrite is not None:
            w.assign(tf.where(overwrite, tf.cast(new_average, w.dtype),
                              w.read_value()))
