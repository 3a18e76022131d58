"""What a step's program is built with (`Settings`) and the tensors it
reads and writes (`StepState`, `VariableState`)."""

import dataclasses
from typing import NamedTuple, Optional

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a program is built with: Python values baked into it."""

    epsilon: float
    max_trust_ratio: Optional[float]
    bias_correction: bool
    jit_compile: bool
    use_matvec: bool  # the form of the norms, see numerics.sums_of_squares
    form: str = "chained"  # of the update, see forms.FORMS
    clipnorm: Optional[float] = None
    global_clipnorm: Optional[float] = None
    clipvalue: Optional[float] = None
    accumulation_steps: Optional[int] = None
    ema_momentum: Optional[float] = None  # None: no EMA
    ema_overwrite_frequency: Optional[int] = None
    # The optimizer's weight decay, which each VariableState bakes in (0
    # for an excluded variable); here so that a new value makes a new
    # program.
    weight_decay: Optional[float] = None


class VariableState(NamedTuple):
    """One variable's tensors in a step (this device's copies), and how LAMB
    treats it."""

    weight: tf.Variable
    momentum: tf.Variable
    velocity: tf.Variable
    accumulator: Optional[tf.Variable]  # gradient accumulation only
    weight_decay: float  # 0: no decay (excluded, or none asked for)
    layer_adaptation: bool  # False: phi = 1


class StepState(NamedTuple):
    """The optimizer's tensors a step reads and writes."""

    iterations: tf.Variable  # calls so far
    trust_ratios: tf.Variable  # phi of every variable of the optimizer
    indices: tuple  # the variables' places in trust_ratios
    variables: tuple  # their VariableStates
    # EMA only: (weight, average) of every trainable variable of the
    # optimizer, updated at every call as Keras does, whether or not the
    # variable has a gradient in this call.
    averaged: tuple = ()
