"""The LAMB optimizer for Keras 3 (TensorFlow backend)."""

import numbers
import re

import keras
import tensorflow as tf
from keras.optimizers import schedules


def _check_framework_versions(tensorflow_version, keras_version):
    """Raises ImportError outside the tested range (README).

    pip cannot enforce it: TensorFlow is not a requirement (it may be
    installed as tensorflow-tpu, tensorflow-cpu or a vendor build), and
    `--no-deps` skips Keras' bound. Before Keras 3.10 the iteration counter
    was advanced in the hook Lamb replaces: bias correction would stay at t=1.
    """
    for name, version, oldest in (("tensorflow", tensorflow_version, (2, 16)),
                                  ("keras", keras_version, (3, 10))):
        if _major_minor(version) < oldest:
            raise ImportError(
                f"tf_lamb needs {name}>={oldest[0]}.{oldest[1]}; found "
                f"{name} {version}")


def _major_minor(version):
    return tuple(int(n) for n in re.findall(r"\d+", version)[:2])


_check_framework_versions(tf.__version__, keras.__version__)

# The matvec form of the norms (sums_of_squares) pays off only where XLA:CPU
# fuses the squares into the matvec. On BERT-base shapes (README,
# Performance) TensorFlow 2.21's does; 2.16's does not, and plain reductions
# are faster there. 2.17-2.20 are unmeasured and get the plain form.
_MATVEC_NORMS_ON_CPU = _major_minor(tf.__version__) >= (2, 21)

# Slots of low-precision variables are kept in float32 so that v (a running
# mean of g**2) neither underflows nor loses the small (1 - beta_2) updates,
# and accumulated gradients keep their low bits.
_LOW_PRECISION = ("float16", "bfloat16")
_FLOAT32_STATE = ("momentum", "velocity", "gradient_accumulator")


# ---------------------------------------------------------------------------
# The algorithm, one named step per function (You et al., 2020, Algorithm 2).
# Every function takes and returns plain tensors, so the same code runs inside
# the XLA program, in an ordinary graph and eagerly.
# ---------------------------------------------------------------------------


def update_moments(gradient, m, v, beta_1, beta_2):
    """Exponential moving averages of the gradient and its square.

    m_t = beta_1 * m_{t-1} + (1 - beta_1) * g_t
    v_t = beta_2 * v_{t-1} + (1 - beta_2) * g_t**2
    """
    m = m + (gradient - m) * (1.0 - beta_1)
    v = v + (tf.square(gradient) - v) * (1.0 - beta_2)
    return m, v


def lamb_direction(m, v, weight, beta_1_power, beta_2_power, epsilon,
                   weight_decay, as_product=False):
    """The layer's update direction before the trust ratio.

    r_t = m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w,
    m_hat = m_t / (1 - beta_1**t),  v_hat = v_t / (1 - beta_2**t).

    With bias correction off, pass beta powers of 0 (m_hat = m_t, v_hat = v_t).
    `weight_decay` is a Python float: 0 drops the term from the program.
    `as_product` writes the divisions as products with reciprocals: the same
    r to rounding, in a form XLA will not merge with the quotient form.
    """
    if as_product:
        m_hat = m * (1.0 / (1.0 - beta_1_power))
        v_hat = v * (1.0 / (1.0 - beta_2_power))
        direction = m_hat * tf.math.reciprocal(tf.sqrt(v_hat) + epsilon)
    else:
        m_hat = m / (1.0 - beta_1_power)
        v_hat = v / (1.0 - beta_2_power)
        direction = m_hat / (tf.sqrt(v_hat) + epsilon)
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


def sums_of_squares(*tensors, use_matvec=True):
    """[sum(x**2) for x in tensors], for tensors of one shape.

    With `use_matvec`, each tensor is viewed as rows of its last dimension,
    the rows of all the tensors are interleaved, and one matvec
    `square(rows) @ ones` sums them. XLA on CPU fuses that into a single
    streaming loop, where a large `reduce_sum(square(x))` becomes a
    reduce-window that writes x**2 out first (4-5x slower); and with w and
    r = f(w, m, v) interleaved, w, m and v are read once for both norms
    instead of once per norm. Without it, plain reductions: GPUs and TPUs
    fuse those well, and may run a float32 matvec at TF32 or bfloat16
    precision.

    The fused matvec is a property of TensorFlow 2.21's XLA:CPU. A newer
    XLA:CPU (jaxlib 0.10's) writes square(rows) out before the dot, and the
    whole BERT-base step takes 2.2x keras Lamb's time there
    (`benchmarks.run_hlo` on an `export_hlo --device_kind=cpu` export):
    re-measure this choice when TensorFlow's XLA moves.
    """
    if not use_matvec:
        # l2_loss = sum(x**2) / 2 is one kernel outside XLA, where
        # reduce_sum(square(x)) writes x**2 out first (2.2x slower); XLA
        # lowers both to the same reduction.
        return [2.0 * tf.nn.l2_loss(x) for x in tensors]
    columns = tensors[0].shape[-1] if tensors[0].shape.rank else 1
    # XLA:CPU runs this matvec 2-3x slower on rows longer than 2048 (4096
    # on BERT-large); a row split in halves is still a free reshape.
    while columns > 2048 and columns % 2 == 0:
        columns //= 2
    rows = tf.stack([tf.reshape(x, [-1, columns]) for x in tensors], axis=1)
    row_sums = tf.linalg.matvec(tf.square(tf.reshape(rows, [-1, columns])),
                                tf.ones([columns], rows.dtype))
    return tf.unstack(tf.reduce_sum(
        tf.reshape(row_sums, [-1, len(tensors)]), axis=0))


def clip_by_global_norm(gradients, clip_norm, global_norm):
    """g_i * clip_norm / max(global_norm, clip_norm), global_norm = ||g||."""
    scale = clip_norm / tf.maximum(global_norm, clip_norm)
    return [g * scale for g in gradients]


# ---------------------------------------------------------------------------


def _check(condition, argument, value, expectation):
    if not condition:
        raise ValueError(
            f"Argument `{argument}` {expectation}. "
            f"Received: {argument}={value!r}")


def _constant_value(value):
    """The number behind a float, int or constant tensor; None otherwise."""
    if isinstance(value, numbers.Real):
        return float(value)
    if tf.is_tensor(value) or isinstance(value, keras.Variable):
        try:
            return float(tf.get_static_value(tf.convert_to_tensor(value)))
        except (TypeError, ValueError):
            return None
    return None


def _check_beta(name, value):
    tensor_like = tf.is_tensor(value) or isinstance(
        value, (tf.Variable, keras.Variable))
    if callable(value) and not tensor_like:
        return  # evaluated at every step
    number = _constant_value(value)
    if number is None and tensor_like:
        return  # a variable: its value is read at every step
    _check(number is not None, name, value,
           "must be a float, a scalar tensor or a callable")
    _check(0.0 <= number < 1.0, name, value, "must be in [0, 1)")


def _check_non_negative(name, value):
    if value is None:
        return
    number = _constant_value(value)
    _check(number is not None and number >= 0.0, name, value,
           "must be a non-negative number or None")


def _checked_patterns(argument, names):
    """`names` as a tuple of regular expressions; ValueError if it isn't."""
    _check(names is None or (not isinstance(names, str) and all(
        isinstance(n, str) for n in names)), argument, names,
        "must be a list of regular expressions")
    for pattern in names or ():
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"Argument `{argument}` holds an invalid regular expression "
                f"{pattern!r}: {error}") from None
    return tuple(names or ())


def check_arguments(learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                    epsilon=1e-7, weight_decay=None, clipnorm=None,
                    clipvalue=None, global_clipnorm=None, ema_momentum=0.99,
                    ema_overwrite_frequency=None, loss_scale_factor=None,
                    gradient_accumulation_steps=None, max_trust_ratio=None,
                    exclude_from_weight_decay=None,
                    exclude_from_layer_adaptation=None):
    """Raises ValueError naming the first of `Lamb`'s arguments that is bad.

    `Lamb.__init__` applies exactly these rules; programs that take the
    arguments from elsewhere (flags, a config file) call this to reject bad
    values before they change any state.
    """
    _checked_learning_rate(learning_rate)
    _check_beta("beta_1", beta_1)
    _check_beta("beta_2", beta_2)
    _check_non_negative("epsilon", epsilon)
    _check(isinstance(epsilon, numbers.Real), "epsilon", epsilon,
           "must be a float")
    _check_non_negative("weight_decay", weight_decay)
    for arg, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                       ("global_clipnorm", global_clipnorm)):
        _check_non_negative(arg, value)
    clip_args = {"clipnorm": clipnorm, "clipvalue": clipvalue,
                 "global_clipnorm": global_clipnorm}
    _check(sum(v is not None for v in clip_args.values()) <= 1,
           "clipnorm/clipvalue/global_clipnorm", clip_args,
           "allows only one of the three to be set")
    if max_trust_ratio is not None:
        _check(isinstance(max_trust_ratio, numbers.Real)
               and max_trust_ratio > 0, "max_trust_ratio",
               max_trust_ratio, "must be a positive number or None")
    if gradient_accumulation_steps is not None:
        _check(isinstance(gradient_accumulation_steps, numbers.Integral)
               and gradient_accumulation_steps >= 1,
               "gradient_accumulation_steps", gradient_accumulation_steps,
               "must be an integer >= 1 or None")
    if loss_scale_factor is not None:
        _check(_constant_value(loss_scale_factor) not in (None, 0.0)
               and _constant_value(loss_scale_factor) > 0,
               "loss_scale_factor", loss_scale_factor,
               "must be a positive number or None")
    _check(0.0 <= ema_momentum <= 1.0, "ema_momentum", ema_momentum,
           "must be in [0, 1]")
    if ema_overwrite_frequency is not None:
        _check(isinstance(ema_overwrite_frequency, numbers.Integral)
               and ema_overwrite_frequency >= 1,
               "ema_overwrite_frequency", ema_overwrite_frequency,
               "must be an integer >= 1 or None")
    _checked_patterns("exclude_from_weight_decay", exclude_from_weight_decay)
    _checked_patterns("exclude_from_layer_adaptation",
                      exclude_from_layer_adaptation)


def _checked_learning_rate(learning_rate):
    if isinstance(learning_rate, schedules.LearningRateSchedule):
        return learning_rate
    if callable(learning_rate) and not tf.is_tensor(learning_rate):
        return learning_rate
    number = _constant_value(learning_rate)
    _check(number is not None, "learning_rate", learning_rate,
           "must be a float, a LearningRateSchedule or a callable")
    _check(number >= 0.0, "learning_rate", learning_rate,
           "must be non-negative")
    return number


def _unless_nonfinite(finite, new, old):
    """`new` where `finite` holds, else `old`; `new` when finite is None."""
    return new if finite is None else tf.where(finite, new, old)


def _is_cpu(device):
    """Whether a variable placed on `device` (a device string) is on a CPU."""
    device_type = tf.DeviceSpec.from_string(device or "").device_type
    if device_type:
        return device_type.upper() == "CPU"
    return not (tf.config.list_logical_devices("GPU")
                or tf.config.list_logical_devices("TPU"))


def _path(variable):
    return getattr(variable, "path", None) or variable.name


@keras.saving.register_keras_serializable(package="tf_lamb")
class Lamb(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Moments optimizer for Batch training (LAMB).

    LAMB is Adam with a per-layer trust ratio: each variable's step is scaled
    by the ratio of the variable's norm to the norm of its Adam-plus-decay
    direction, which keeps very large batches stable (BERT in 76 minutes).
    For a variable `w` with gradient `g` at update `t`:

    ```
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * g**2
    m_hat = m / (1 - beta_1**t);  v_hat = v / (1 - beta_2**t)
    r = m_hat / (sqrt(v_hat) + epsilon) + weight_decay * w
    phi = ||w|| / ||r||   (1 where either norm is 0; min(phi, max_trust_ratio))
    w = w - learning_rate * phi * r
    ```

    Weight decay is part of `r` and so passes through the trust ratio, as in
    the paper; unlike `keras.optimizers.Lamb`, no decoupled decay is applied on
    top of it. Gradients are summed across replicas before any norm (clipping
    or trust ratio) is taken, and the whole step for all variables runs as one
    XLA program. A step whose aggregated gradients hold inf or NaN changes no
    variable and no slot (the iteration counter still advances).

    Args:
        learning_rate: A float, a
            `keras.optimizers.schedules.LearningRateSchedule`, or a callable
            that takes no arguments and returns the learning rate. Defaults to
            `0.001`.
        beta_1: A float, a scalar tensor, or a callable with no arguments
            returning one; the decay rate of the first moment. Defaults to
            `0.9`.
        beta_2: Like `beta_1`, for the second moment. Defaults to `0.999`.
        epsilon: Added to `sqrt(v_hat)` for numerical stability. Defaults to
            `1e-7`.
        weight_decay: Float or None, the decay rate `lambda` inside `r`.
        clipnorm: Float. Each variable's aggregated gradient is clipped to
            this norm.
        clipvalue: Float. Each element of the aggregated gradients is clipped
            to `[-clipvalue, clipvalue]`.
        global_clipnorm: Float. The aggregated gradients of all variables are
            scaled so that their joint norm is at most this value.
        use_ema: Boolean. Keep an exponential moving average of the weights.
        ema_momentum: Float in [0, 1], the EMA momentum: `average =
            ema_momentum * average + (1 - ema_momentum) * weight`.
        ema_overwrite_frequency: Int or None. Every this many updates the
            weights are overwritten by their averages; with None, call
            `finalize_variable_values` (`fit()` does so at its end).
        loss_scale_factor: Float or None. Gradients are divided by it before
            the update (the loss was multiplied by it).
        gradient_accumulation_steps: Int or None. The variables are updated
            every this many calls with the mean of the gradients received
            since the last update; `t` above counts these updates, and a
            learning-rate schedule sees the count of calls.
        name: String, the name scope of the optimizer's variables.
        max_trust_ratio: Float or None. Upper bound of `phi`.
        bias_correction: Boolean. With False, `m_hat = m` and `v_hat = v`.
        jit_compile: Boolean. Run the step as one XLA-compiled program.
        **kwargs: `exclude_from_weight_decay` and
            `exclude_from_layer_adaptation`, lists of regular expressions as
            taken by the methods of those names (as in TF Addons' LAMB, the
            layer-adaptation list defaults to the weight-decay list when only
            the latter is given here).

    Reference:
        - [You et al., 2020](https://arxiv.org/abs/1904.00962), Algorithm 2.
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        weight_decay=None,
        clipnorm=None,
        clipvalue=None,
        global_clipnorm=None,
        use_ema=False,
        ema_momentum=0.99,
        ema_overwrite_frequency=None,
        loss_scale_factor=None,
        gradient_accumulation_steps=None,
        name="lamb",
        max_trust_ratio=None,
        bias_correction=True,
        jit_compile=True,
        **kwargs,
    ):
        wd_names = kwargs.pop("exclude_from_weight_decay", None)
        adaptation_names = kwargs.pop("exclude_from_layer_adaptation", None)
        if kwargs:
            raise ValueError(
                f"Argument(s) not recognized by Lamb: {sorted(kwargs)}")
        check_arguments(
            learning_rate, beta_1, beta_2, epsilon, weight_decay, clipnorm,
            clipvalue, global_clipnorm, ema_momentum, ema_overwrite_frequency,
            loss_scale_factor, gradient_accumulation_steps, max_trust_ratio,
            wd_names, adaptation_names)
        learning_rate = _checked_learning_rate(learning_rate)
        if gradient_accumulation_steps == 1:
            gradient_accumulation_steps = None

        super().__init__(
            learning_rate=learning_rate,
            name=name,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
        )
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = float(epsilon)
        self.max_trust_ratio = (None if max_trust_ratio is None
                                else float(max_trust_ratio))
        self.bias_correction = bool(bias_correction)
        self.jit_compile = bool(jit_compile)
        # Compiled steps, one per device and set of variables; kept out of
        # Keras/TF tracking, which would try to save them.
        object.__setattr__(self, "_programs", {})
        self._weight_decay_exclusions = ((), ())
        self._adaptation_exclusions = ((), ())
        if wd_names is not None:
            self.exclude_from_weight_decay(var_names=wd_names)
            if adaptation_names is None:
                adaptation_names = wd_names
        if adaptation_names is not None:
            self.exclude_from_layer_adaptation(var_names=adaptation_names)

    # -- exclusions ---------------------------------------------------------

    def _exclusions(self, var_list, var_names, argument):
        names = _checked_patterns(argument, var_names)
        ids = tuple(self._var_key(v) for v in var_list or ())
        self._programs.clear()  # the exclusions are baked into the programs
        return ids, names

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude variables from weight decay.

        Args:
            var_list: A list of variables to exclude.
            var_names: A list of regular expressions; a variable whose path
                (e.g. `encoder/layer_0/attention/output/bias`) matches any of
                them is excluded. BERT's usual choice is
                `["LayerNorm", "layer_norm", "bias"]`.
        """
        self._weight_decay_exclusions = self._exclusions(
            var_list, var_names, "exclude_from_weight_decay")

    def exclude_from_layer_adaptation(self, var_list=None, var_names=None):
        """Exclude variables from the trust ratio (their phi is 1).

        Args:
            var_list: A list of variables to exclude.
            var_names: A list of regular expressions searched in the
                variable's path, as for `exclude_from_weight_decay`.
        """
        self._adaptation_exclusions = self._exclusions(
            var_list, var_names, "exclude_from_layer_adaptation")

    def _is_excluded(self, variable, exclusions):
        ids, names = exclusions
        if self._var_key(variable) in ids:
            return True
        path = _path(variable)
        return any(re.search(pattern, path) for pattern in names)

    def _use_weight_decay(self, variable):
        return bool(self.weight_decay) and not self._is_excluded(
            variable, self._weight_decay_exclusions)

    def _use_layer_adaptation(self, variable):
        return not self._is_excluded(variable, self._adaptation_exclusions)

    # -- slots ----------------------------------------------------------------

    def add_variable_from_reference(self, reference_variable, name=None,
                                    initializer="zeros"):
        """An optimizer variable shaped like `reference_variable`.

        LAMB's own state of a float16 or bfloat16 variable (m, v and the
        gradient accumulator) is float32. EMA averages keep the variable's
        dtype, as in Keras: `keras.callbacks.SwapEMAWeights` swaps them with
        the weights by adding one to the other.
        """
        if (name not in _FLOAT32_STATE
                or reference_variable.dtype not in _LOW_PRECISION):
            return super().add_variable_from_reference(
                reference_variable, name=name, initializer=initializer)
        tf_variable = getattr(reference_variable, "value", reference_variable)
        with self._distribution_strategy.extended.colocate_vars_with(
                tf_variable):
            return self.add_variable(
                shape=reference_variable.shape, initializer=initializer,
                dtype="float32",
                name=f"{_path(reference_variable).replace('/', '_')}_{name}")

    def build(self, var_list):
        """Creates the first and second moment slot of every variable."""
        if self.built:
            return
        super().build(var_list)
        self._momentums = []
        self._velocities = []
        for variable in var_list:
            # Keras' apply() assigns such a variable its gradient and never
            # passes it to the step (keras.Variable's public attribute).
            if getattr(variable, "overwrite_with_gradient", False):
                self._momentums.append(None)
                self._velocities.append(None)
                continue
            self._momentums.append(
                self.add_variable_from_reference(variable, "momentum"))
            self._velocities.append(
                self.add_variable_from_reference(variable, "velocity"))
        self._trust_ratios = self.add_variable(
            shape=(len(var_list),), initializer="ones", dtype="float32",
            name="trust_ratios")

    @property
    def trust_ratios(self):
        """phi of the last applied update, one per variable (build order).

        1 for variables excluded from layer adaptation or not updated yet;
        meant for summaries such as TensorBoard's per-layer trust ratio.
        """
        return self._trust_ratios

    # -- the step -------------------------------------------------------------

    def _hyperparameters(self):
        """Learning rate and betas of this step, as float32 scalars."""
        def value(v):
            if callable(v) and not (tf.is_tensor(v)
                                    or isinstance(v, keras.Variable)):
                v = v()
            return tf.cast(tf.convert_to_tensor(v), tf.float32)
        return value(self.learning_rate), value(self.beta_1), value(
            self.beta_2)

    def _backend_apply_gradients(self, grads, trainable_variables):
        # IndexedSlices (embedding lookups) become dense: every element of m
        # and v decays at every step, so a sparse update would be wrong.
        grads = [tf.convert_to_tensor(g) for g in grads]
        hyper = self._hyperparameters()
        replica_context = tf.distribute.get_replica_context()
        if replica_context is not None:
            # Sum over replicas first: clipping norms and trust ratios must
            # see the global gradient, never one replica's share. (With one
            # replica the sum is the gradient; the call alone costs ~1 ms.)
            if replica_context.num_replicas_in_sync > 1:
                grads = replica_context.all_reduce(
                    tf.distribute.ReduceOp.SUM, grads)
            tf.__internal__.distribute.interim.maybe_merge_call(
                self._update_all_replicas, self._distribution_strategy,
                grads, trainable_variables, hyper)
        else:
            self._update_all_replicas(self._distribution_strategy, grads,
                                      trainable_variables, hyper)

    def _update_all_replicas(self, strategy, grads, variables, hyper):
        # One `update` for all variables: the strategy calls `_replica_step`
        # once per device (or once inside a TPU program), where every
        # distributed variable resolves to that device's copy.
        indices = tuple(self._get_variable_index(v) for v in variables)
        anchor = self._momentums[indices[0]].value
        strategy.extended.update(anchor, self._replica_step,
                                 args=(grads, hyper, indices), group=False)

    def _replica_step(self, anchor, grads, hyper, indices):
        # A program captures the variables of the device it was traced for,
        # so each device (the anchor's copy tells which) gets its own.
        key = (anchor.device, indices)
        program = self._programs.get(key)
        if program is None:
            use_matvec = (self.jit_compile and _is_cpu(anchor.device)
                          and _MATVEC_NORMS_ON_CPU)
            program = tf.function(
                lambda g, h: self._step(g, h, indices, use_matvec),
                jit_compile=self.jit_compile, autograph=False,
                reduce_retracing=True)
            self._programs[key] = program
        return program(list(grads), tuple(hyper))

    def _step(self, grads, hyper, indices, use_matvec):
        """The whole optimizer step for the variables at `indices`.

        `use_matvec` picks the form of the norms (see `sums_of_squares`).
        """
        learning_rate, beta_1, beta_2 = hyper
        iterations = self._iterations.value
        steps = self.gradient_accumulation_steps
        if not steps:
            self._update(grads, indices, learning_rate, beta_1, beta_2,
                         iterations, use_matvec)
            return
        accumulators = [self._accumulated_gradients[i].value
                        for i in indices]
        is_update_step = tf.equal((iterations + 1) % steps, 0)
        starts_cycle = tf.equal(iterations % steps, 0)

        def accumulate(trip):
            # The first call of a cycle overwrites the last cycle's mean, so
            # no pass over the accumulators is spent zeroing them.
            for a, g in zip(accumulators, grads):
                g = tf.cast(g, a.dtype)
                a.assign(tf.where(starts_cycle, g, a.read_value() + g))

        def take_mean(trip):
            # A loop of its own: inside the update's loop XLA would fuse the
            # mean into each pass that reads it and copy the old sums aside.
            for a, g in zip(accumulators, grads):
                a.assign((a.read_value() + tf.cast(g, a.dtype)) / steps)

        def apply_mean(trip):
            means = [a.read_value() for a in accumulators]
            if self.jit_compile:
                # Times 1.0 from the trip count: XLA would otherwise hoist
                # the loop-invariant g**2 out of the loop as a full-size
                # temporary per variable, allocated even when no update runs.
                one = tf.cast(trip, tf.float32) + 1.0
                means = [tf.cast(m, tf.float32) * one for m in means]
            self._update(means, indices, learning_rate, beta_1, beta_2,
                         iterations // steps, use_matvec)

        self._run_if(tf.logical_not(is_update_step), accumulate)
        self._run_if(is_update_step, take_mean)
        self._run_if(is_update_step, apply_mean)

    def _run_if(self, condition, body):
        """Runs `body(trip)`, trip = 0, if `condition` holds.

        Under XLA this is a while loop of zero or one trips: a loop updates
        its variables in place, where a conditional copies every variable
        that the branch not taken passes through (on an accumulating call,
        all of w, m and v). Outside XLA a `tf.cond` costs nothing extra.
        """
        def run():
            body(tf.constant(0))
            return tf.constant(True)

        if not self.jit_compile:
            tf.cond(condition, run, lambda: tf.constant(False))
            return

        def loop_body(trip):
            body(trip)
            return trip + 1

        tf.while_loop(lambda trip: trip < tf.cast(condition, tf.int32),
                      loop_body, [tf.constant(0)])

    def _update(self, grads, indices, learning_rate, beta_1, beta_2,
                update_count, use_matvec):
        """One LAMB update; `update_count` updates were applied before."""
        grads = [tf.cast(g, tf.float32) for g in grads]
        grad_squared_norms = [sums_of_squares(g, use_matvec=use_matvec)[0]
                              for g in grads]
        # The global gradient norm is needed for global_clipnorm anyway, and
        # it is inf/NaN exactly when some gradient is: then the whole step is
        # dropped, on every replica alike (the gradients are already summed).
        finite = tf.math.is_finite(tf.add_n(grad_squared_norms))
        grads = self._clipped(grads, grad_squared_norms)
        step = tf.cast(update_count + 1, tf.float32)
        if self.bias_correction:
            beta_1_power = tf.pow(beta_1, step)
            beta_2_power = tf.pow(beta_2, step)
        else:
            beta_1_power = beta_2_power = tf.constant(0.0)

        def update(finite):
            ratios = [self._update_variable(
                i, g, finite, learning_rate, beta_1, beta_2, beta_1_power,
                beta_2_power, use_matvec) for i, g in zip(indices, grads)]
            if self.use_ema:
                self._update_ema(indices, update_count, finite)
            return tf.stack(ratios)

        previous = self._trust_ratios.value.read_value()
        if self.jit_compile:
            # XLA updates variables in place only outside conditionals, so
            # there `finite` selects the old values element-wise.
            ratios = update(finite)
        else:
            # Outside XLA each element-wise select is a pass of its own (a
            # third of the step); a cond skips the whole update instead.
            ratios = tf.cond(finite, lambda: update(None),
                             lambda: tf.gather(previous, indices))
        self._trust_ratios.value.assign(tf.where(
            finite,
            tf.tensor_scatter_nd_update(previous, [[i] for i in indices],
                                        ratios),
            previous))

    def _update_variable(self, index, gradient, finite, learning_rate,
                         beta_1, beta_2, beta_1_power, beta_2_power,
                         use_matvec):
        # `finite`: keep the old values where it is false (None: the caller
        # has checked it already).
        variable = self._trainable_variables[index]
        w = variable.value
        m_slot = self._momentums[index].value
        v_slot = self._velocities[index].value
        weight = tf.cast(w.read_value(), tf.float32)
        m_old, v_old = m_slot.read_value(), v_slot.read_value()
        m, v = update_moments(gradient, m_old, v_old, beta_1, beta_2)
        m_slot.assign(_unless_nonfinite(finite, m, m_old))
        v_slot.assign(_unless_nonfinite(finite, v, v_old))
        # Reading the slots back (rather than reusing m, v) lets XLA update
        # them in place: nothing after this point needs their old values.
        m, v = m_slot.read_value(), v_slot.read_value()
        decay = self.weight_decay if self._use_weight_decay(variable) else 0.0
        direction = lamb_direction(m, v, weight, beta_1_power, beta_2_power,
                                   self.epsilon, decay)
        if self._use_layer_adaptation(variable):
            weight_squared, direction_squared = sums_of_squares(
                weight, direction, use_matvec=use_matvec)
            ratio = trust_ratio(tf.sqrt(weight_squared),
                                tf.sqrt(direction_squared),
                                self.max_trust_ratio)
            if self.jit_compile:
                # r again, in a form XLA does not share with the norm's pass,
                # so r is never written out: the norm's and the update's
                # loops each read w, m, v (28 B/param in all, instead of 32
                # with r stored). Unfused graph ops keep r anyway.
                direction = lamb_direction(
                    m, v, weight, beta_1_power, beta_2_power, self.epsilon,
                    decay, as_product=True)
            direction = ratio * direction
        else:
            ratio = tf.constant(1.0)
        new_weight = _unless_nonfinite(
            finite, weight - learning_rate * direction, weight)
        w.assign(tf.cast(new_weight, w.dtype))
        return ratio

    def _clipped(self, grads, squared_norms):
        if self.clipnorm:
            return [g * (self.clipnorm / tf.maximum(tf.sqrt(sq), self.clipnorm))
                    for g, sq in zip(grads, squared_norms)]
        if self.global_clipnorm:
            return clip_by_global_norm(grads, self.global_clipnorm,
                                       tf.sqrt(tf.add_n(squared_norms)))
        if self.clipvalue:
            return [tf.clip_by_value(g, -self.clipvalue, self.clipvalue)
                    for g in grads]
        return grads

    def _update_ema(self, indices, update_count, finite):
        # The first update copies the weights, as Keras' base optimizer does.
        momentum = tf.where(update_count > 0, self.ema_momentum, 0.0)
        overwrite = None
        if self.ema_overwrite_frequency:
            overwrite = tf.equal(
                (update_count + 1) % self.ema_overwrite_frequency, 0)
            if finite is not None:
                overwrite = tf.logical_and(finite, overwrite)
        for i in indices:
            w = self._trainable_variables[i].value
            average = self._model_variables_moving_average[i].value
            weight = tf.cast(w.read_value(), tf.float32)
            new_average = (momentum * tf.cast(average.read_value(), tf.float32)
                           + (1.0 - momentum) * weight)
            new_average = _unless_nonfinite(
                finite, new_average,
                tf.cast(average.read_value(), tf.float32))
            average.assign(tf.cast(new_average, average.dtype))
            if overwrite is not None:
                w.assign(tf.where(overwrite, tf.cast(new_average, w.dtype),
                                  w.read_value()))

    # -- config ---------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "max_trust_ratio": self.max_trust_ratio,
            "bias_correction": self.bias_correction,
            "jit_compile": self.jit_compile,
            "exclude_from_weight_decay": list(
                self._weight_decay_exclusions[1]),
            "exclude_from_layer_adaptation": list(
                self._adaptation_exclusions[1]),
        })
        for beta in ("beta_1", "beta_2"):
            value = _constant_value(config[beta])
            if value is not None:
                config[beta] = value
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras' base method writes the deserialized schedule back into the
        # dict it is given; work on a copy so the caller's config survives.
        return super().from_config(dict(config), custom_objects)
