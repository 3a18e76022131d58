"""The rules for `Lamb`'s arguments: a ValueError naming the first bad one.

Kept apart from the class so that a program taking the arguments from
elsewhere (flags, a config file) can reject bad values before it changes any
state (`tf_lamb.check_arguments`).
"""

import numbers
import re

import keras
import tensorflow as tf
from keras.optimizers import schedules


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
    checked_learning_rate(learning_rate)
    _check_beta("beta_1", beta_1)
    _check_beta("beta_2", beta_2)
    _check_non_negative("epsilon", epsilon)
    _check(isinstance(epsilon, numbers.Real), "epsilon", epsilon,
           "must be a float")
    _check_non_negative("weight_decay", weight_decay)
    _check_clipping(clipnorm, clipvalue, global_clipnorm)
    if max_trust_ratio is not None:
        _check(isinstance(max_trust_ratio, numbers.Real)
               and max_trust_ratio > 0, "max_trust_ratio",
               max_trust_ratio, "must be a positive number or None")
    _check_count("gradient_accumulation_steps", gradient_accumulation_steps)
    if loss_scale_factor is not None:
        _check(constant_value(loss_scale_factor) not in (None, 0.0)
               and constant_value(loss_scale_factor) > 0,
               "loss_scale_factor", loss_scale_factor,
               "must be a positive number or None")
    _check(0.0 <= ema_momentum <= 1.0, "ema_momentum", ema_momentum,
           "must be in [0, 1]")
    _check_count("ema_overwrite_frequency", ema_overwrite_frequency)
    checked_patterns("exclude_from_weight_decay", exclude_from_weight_decay)
    checked_patterns("exclude_from_layer_adaptation",
                     exclude_from_layer_adaptation)


def checked_learning_rate(learning_rate):
    """A schedule or callable as it is, a constant as a float."""
    # A variable would be read once here and copied: assigning to it later
    # would change nothing, silently.
    _check(not isinstance(learning_rate, (keras.Variable, tf.Variable)),
           "learning_rate", learning_rate,
           "must not be a variable (its later values would be ignored); "
           "pass a float, a LearningRateSchedule or a callable such as "
           "`lambda: variable`, or assign optimizer.learning_rate")
    if isinstance(learning_rate, schedules.LearningRateSchedule):
        return learning_rate
    if callable(learning_rate) and not tf.is_tensor(learning_rate):
        return learning_rate
    number = constant_value(learning_rate)
    _check(number is not None, "learning_rate", learning_rate,
           "must be a float, a LearningRateSchedule or a callable")
    _check(number >= 0.0, "learning_rate", learning_rate,
           "must be non-negative")
    return number


def checked_patterns(argument, names):
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


def constant_value(value):
    """The number behind a float, int or constant tensor; None otherwise."""
    if isinstance(value, numbers.Real):
        return float(value)
    if tf.is_tensor(value) or isinstance(value, keras.Variable):
        try:
            return float(tf.get_static_value(tf.convert_to_tensor(value)))
        except (TypeError, ValueError):
            return None
    return None


def _check(condition, argument, value, expectation):
    if not condition:
        raise ValueError(
            f"Argument `{argument}` {expectation}. "
            f"Received: {argument}={value!r}")


def _check_beta(name, value):
    tensor_like = tf.is_tensor(value) or isinstance(
        value, (tf.Variable, keras.Variable))
    if callable(value) and not tensor_like:
        return  # evaluated at every step
    number = constant_value(value)
    if number is None and tensor_like:
        return  # a variable: its value is read at every step
    _check(number is not None, name, value,
           "must be a float, a scalar tensor or a callable")
    _check(0.0 <= number < 1.0, name, value, "must be in [0, 1)")


def _check_non_negative(name, value):
    if value is None:
        return
    number = constant_value(value)
    _check(number is not None and number >= 0.0, name, value,
           "must be a non-negative number or None")


def _check_clipping(clipnorm, clipvalue, global_clipnorm):
    clip_args = {"clipnorm": clipnorm, "clipvalue": clipvalue,
                 "global_clipnorm": global_clipnorm}
    for argument, value in clip_args.items():
        _check_non_negative(argument, value)
    _check(sum(v is not None for v in clip_args.values()) <= 1,
           "clipnorm/clipvalue/global_clipnorm", clip_args,
           "allows only one of the three to be set")


def _check_count(name, value):
    if value is not None:
        _check(isinstance(value, numbers.Integral) and value >= 1, name,
               value, "must be an integer >= 1 or None")
