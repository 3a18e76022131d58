"""The update arithmetic of a pretraining run: its learning-rate schedule,
and how micro-batches (gradient accumulation) map to optimizer updates.

Linear warmup, then polynomial decay to `end_learning_rate` (You et al.,
2020, Section 4, after Goyal et al. and Devlin et al.).  With a second phase
(the paper's 128 -> 512 tokens mix), phase 2 starts its own warmup and decay
from its own peak rate, as the paper's re-warm-up does.
"""

import dataclasses

import keras
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class GradientAccumulation:
    """How micro-batches relate to optimizer updates.

    With `steps` micro-batches per update, each replica runs
    `global_batch / (replicas * steps)` examples at a time and adds up its
    own gradients; the optimizer is called once per update, with their mean
    (train.loop.trainer). Every conversion between micro-batches and
    updates lives here.
    """

    steps: int = 1

    def micro_batch_size(self, global_batch_size):
        """Examples of one micro-step over all replicas."""
        return global_batch_size // self.steps

    def updates(self, optimizer_calls):
        """Updates done after `optimizer_calls` calls (int or tensor)."""
        return optimizer_calls // self.steps

    def first_micro_batch(self, update):
        """The micro-batch (0-based) that starts update `update`."""
        return update * self.steps


def _warmup_poly(step, peak, warmup, total, end, power):
    """Rate at `step` (float32) of one phase of `total` steps."""
    total = max(total, 1)
    progress = tf.minimum(step, float(total)) / float(total)
    decayed = (peak - end) * tf.pow(1.0 - progress, power) + end
    if warmup > 0:
        warm = peak * (step + 1.0) / float(warmup)
        return tf.where(step < float(warmup), warm, decayed)
    return decayed


@keras.saving.register_keras_serializable(package="train")
class PretrainingSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Warmup + polynomial decay, optionally in two phases.

    Args:
        learning_rate: Peak rate of phase 1.
        phase1_steps: Optimizer updates of phase 1.
        warmup_steps: Linear warmup updates at the start of phase 1.
        end_learning_rate: Rate reached at the end of each phase.
        power: Exponent of the decay (1.0: linear, as BERT).
        phase2_steps: Updates of phase 2 (0: no phase 2).
        phase2_learning_rate, phase2_warmup_steps: Phase 2's peak and warmup.
        accumulation_steps: Optimizer calls per update, for an optimizer
            given `gradient_accumulation_steps` (it passes the count of
            calls, which is divided by this); 1 for train.pretrain, which
            calls the optimizer once per update.
    """

    def __init__(self, learning_rate, phase1_steps, warmup_steps=0,
                 end_learning_rate=0.0, power=1.0, phase2_steps=0,
                 phase2_learning_rate=None, phase2_warmup_steps=0,
                 accumulation_steps=1):
        self.learning_rate = float(learning_rate)
        self.phase1_steps = int(phase1_steps)
        self.warmup_steps = int(warmup_steps)
        self.end_learning_rate = float(end_learning_rate)
        self.power = float(power)
        self.phase2_steps = int(phase2_steps)
        self.phase2_learning_rate = float(
            learning_rate if phase2_learning_rate is None
            else phase2_learning_rate)
        self.phase2_warmup_steps = int(phase2_warmup_steps)
        self.accumulation_steps = int(accumulation_steps)

    def __call__(self, iterations):
        calls = tf.cast(iterations, tf.int64)
        return self.rate_at_update(
            GradientAccumulation(self.accumulation_steps).updates(calls))

    def rate_at_update(self, update):
        """The rate of update number `update` (0-based, int or tensor)."""
        step = tf.cast(update, tf.float32)
        rate = _warmup_poly(step, self.learning_rate, self.warmup_steps,
                            self.phase1_steps, self.end_learning_rate,
                            self.power)
        if self.phase2_steps:
            local = step - float(self.phase1_steps)
            rate2 = _warmup_poly(local, self.phase2_learning_rate,
                                 self.phase2_warmup_steps, self.phase2_steps,
                                 self.end_learning_rate, self.power)
            rate = tf.where(local >= 0.0, rate2, rate)
        return rate

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "phase1_steps": self.phase1_steps,
            "warmup_steps": self.warmup_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "phase2_steps": self.phase2_steps,
            "phase2_learning_rate": self.phase2_learning_rate,
            "phase2_warmup_steps": self.phase2_warmup_steps,
            "accumulation_steps": self.accumulation_steps,
        }


# The flag behind each setting of the schedule, for messages.
_FLAGS = {
    "learning_rate": "--learning_rate",
    "warmup_steps": "--warmup_steps",
    "end_learning_rate": "--end_learning_rate",
    "power": "--poly_power",
    "phase2_steps": "--phase2_steps",
    "phase2_learning_rate": "--phase2_learning_rate",
    "phase2_warmup_steps": "--phase2_warmup_steps",
}


def change_warning(old_config, new, step):
    """The one-line warning for a run resumed at update `step` whose
    schedule `new` differs from the one its checkpoint was trained with
    (`old_config`, a PretrainingSchedule's get_config()); None when the
    rates are the same. The run goes on with `new` (docs/pretraining.md):
    the rate then jumps, and this says from what to what."""
    old = PretrainingSchedule(**old_config)
    changes = []
    old_total = old.phase1_steps + old.phase2_steps
    new_total = new.phase1_steps + new.phase2_steps
    if old_total != new_total:
        changes.append(f"horizon (--num_train_steps) {old_total} -> "
                       f"{new_total} updates")
    now = new.get_config()
    for key, flag in _FLAGS.items():
        if old_config.get(key) != now[key]:
            changes.append(f"{flag} {old_config.get(key)} -> {now[key]}")
    if not changes:
        return None
    before = float(old.rate_at_update(step - 1))
    after = float(new.rate_at_update(step))
    return (f"Warning: resuming at update {step} with another learning-rate "
            f"schedule: {'; '.join(changes)}; the rate jumps from "
            f"{before:.3e} (update {step}) to {after:.3e} (update "
            f"{step + 1}). The schedule of the new flags is used from here "
            f"on")
