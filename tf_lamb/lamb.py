"""The LAMB optimizer for Keras 3 (TensorFlow backend): the Keras class.

The formulas are `tf_lamb.algorithm`; the compiled all-variables step that
applies them, `tf_lamb.compiled`; the argument rules, `tf_lamb.arguments`.
"""

import functools
import re

import keras
import tensorflow as tf

from tf_lamb import compiled
from tf_lamb.arguments import (check_arguments, checked_learning_rate,
                               checked_patterns, constant_value)

# Slots of low-precision variables are kept in float32 so that v (a running
# mean of g**2) neither underflows nor loses the small (1 - beta_2) updates,
# and accumulated gradients keep their low bits.
_LOW_PRECISION = ("float16", "bfloat16")
_FLOAT32_STATE = ("momentum", "velocity", "gradient_accumulator")


def _path(variable):
    """A keras.Variable's path; a tf.Variable's name, less its ":0"."""
    path = getattr(variable, "path", None)
    if path:
        return path
    name = variable.name
    return name[:-2] if name.endswith(":0") else name


def _tf_variable(variable):
    """The tf.Variable that holds `variable` (a keras.Variable's value, or a
    tf.Variable itself: its `value` is a method)."""
    if isinstance(variable, keras.Variable):
        return variable.value
    return variable


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
        learning_rate = checked_learning_rate(learning_rate)
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
        names = checked_patterns(argument, var_names)
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

    def _backend_apply_gradients(self, grads, trainable_variables):
        """The step: Keras' `apply()` calls it with the gradients (unscaled,
        before any clipping) of the variables to update."""
        # IndexedSlices (embedding lookups) become dense: every element of m
        # and v decays at every step, so a sparse update would be wrong.
        grads = [tf.convert_to_tensor(g) for g in grads]
        indices = tuple(self._get_variable_index(v)
                        for v in trainable_variables)
        compiled.apply_on_every_device(
            self._distribution_strategy, grads, self._hyperparameters(),
            anchor=self._momentums[indices[0]],
            run_program=functools.partial(self._run_program, indices))

    def _hyperparameters(self):
        """Learning rate and betas of this step, as float32 scalars."""
        def value(v):
            if callable(v) and not (tf.is_tensor(v)
                                    or isinstance(v, keras.Variable)):
                v = v()
            return tf.cast(tf.convert_to_tensor(v), tf.float32)
        return value(self.learning_rate), value(self.beta_1), value(
            self.beta_2)

    def _settings(self, indices, device):
        """What a program for the variables at `indices` on `device` bakes
        in, from the optimizer's attributes as they are now."""
        return compiled.Settings(
            epsilon=float(self.epsilon),
            max_trust_ratio=(None if self.max_trust_ratio is None
                             else float(self.max_trust_ratio)),
            bias_correction=bool(self.bias_correction),
            jit_compile=bool(self.jit_compile),
            use_matvec=compiled.norms_as_matvec(device, self.jit_compile),
            form=compiled.update_form(
                device, self.jit_compile,
                [self._trainable_variables[i].dtype for i in indices]),
            clipnorm=self.clipnorm, global_clipnorm=self.global_clipnorm,
            clipvalue=self.clipvalue,
            accumulation_steps=self.gradient_accumulation_steps,
            ema_momentum=self.ema_momentum if self.use_ema else None,
            ema_overwrite_frequency=self.ema_overwrite_frequency,
            weight_decay=self.weight_decay)

    def _run_program(self, indices, anchor, grads, hyperparameters):
        # A program captures the variables of the device it was traced for,
        # so each device (the anchor's copy tells which) gets its own. It
        # bakes in the attributes `_settings` reads: one set after the
        # first step (`optimizer.epsilon = 1e-3`, as Keras allows) makes a
        # new program.
        key = (anchor.device, indices)
        settings = self._settings(indices, anchor.device)
        built = self._programs.get(key)
        if built is None or built[0] != settings:
            built = (settings, compiled.program(
                functools.partial(self._step_state, indices), settings))
            self._programs[key] = built
        return built[1](list(grads), tuple(hyperparameters))

    def _step_state(self, indices):
        """The tensors of the variables at `indices` and of the optimizer
        (on the device whose update is being traced)."""
        def variable_state(index):
            variable = self._trainable_variables[index]
            decay = (self.weight_decay if self._use_weight_decay(variable)
                     else 0.0)
            return compiled.VariableState(
                weight=_tf_variable(variable),
                momentum=self._momentums[index].value,
                velocity=self._velocities[index].value,
                accumulator=(self._accumulated_gradients[index].value
                             if self.gradient_accumulation_steps else None),
                weight_decay=decay,
                layer_adaptation=self._use_layer_adaptation(variable))

        averaged = ()
        if self.use_ema:
            averaged = tuple(
                (_tf_variable(variable), average.value)
                for variable, average in zip(
                    self._trainable_variables,
                    self._model_variables_moving_average)
                if average is not None)
        return compiled.StepState(
            iterations=self._iterations.value,
            trust_ratios=self._trust_ratios.value, indices=indices,
            variables=tuple(variable_state(i) for i in indices),
            averaged=averaged)

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
            value = constant_value(config[beta])
            if value is not None:
                config[beta] = value
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras' base method writes the deserialized schedule back into the
        # dict it is given; work on a copy so the caller's config survives.
        return super().from_config(dict(config), custom_objects)
