"""The run's own checkpoints in --model_dir: restoring with a fallback to an
older one, saving with checks, and the state a diverged run goes back to.

(`train/interop/init_checkpoints.py` is the other direction: reading
Google's and other runs' checkpoints into a model.)
"""

import json
import os
import re

import tensorflow as tf

from train.runtime import paths
from train.runtime.errors import CheckpointError
from train.runtime.errors import DivergenceError


def listed_checkpoints(directory):
    """The checkpoints the `checkpoint` state file of `directory` lists,
    newest first (whether or not their files are intact).

    `tf.train.get_checkpoint_state` has already joined `directory` onto
    the relative paths the state file holds (with `os.path.isabs`, which
    is False for `runs/x` and for every `gs://` path): joining again would
    name `runs/x/runs/x/ckpt-5`.
    """
    if not tf.io.gfile.isdir(directory):
        return []
    state = tf.train.get_checkpoint_state(directory)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [
        state.model_checkpoint_path]
    return list(reversed(paths))


# TensorFlow's decorations of an op's error message.
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\]")


def _first_line(error):
    message = _TF_NOISE.sub("", getattr(error, "message", None)
                            or str(error)).strip()
    return message.splitlines()[0] if message else type(error).__name__


class RunCheckpoints:
    """Saves and restores `trainer.checkpoint` in `directory`.

    `newest` is the path of the newest checkpoint known to be good (saved
    or restored by this object), or None.
    """

    def __init__(self, trainer, directory, max_to_keep):
        self.trainer = trainer
        self.directory = directory
        self.manager = tf.train.CheckpointManager(
            trainer.checkpoint, directory, max_to_keep=max_to_keep)
        self.newest = None
        # The update `newest` holds when this object saved it, else None.
        self.newest_step = None

    def restore(self, path, partial=False):
        """Restores `path`; raises what TensorFlow raises for an unreadable
        one (OpError, IndexError for a truncated file, ...) or
        AssertionError (another model's)."""
        status = self.trainer.checkpoint.restore(path)
        if partial:
            status.expect_partial()
        else:
            status.assert_existing_objects_matched()
        self.newest, self.newest_step = path, None
        return path

    def restore_newest(self, directory, partial=False):
        """Restores the newest readable checkpoint the state file of
        `directory` lists, warning for each newer one that cannot be read;
        returns its path, or None when none is listed. Raises
        CheckpointError when every listed checkpoint fails."""
        listed = listed_checkpoints(directory)
        failures = []
        for path in listed:
            try:
                self.restore(path, partial)
            # TensorFlow's reader raises many types for a damaged file; a
            # restore that fails part-way is overwritten by the next one.
            except Exception as error:  # pylint: disable=broad-except
                failures.append((path, _first_line(error)))
                continue
            for bad, problem in failures:
                print(f"Warning: checkpoint {bad} cannot be read ({problem});"
                      f" resuming from the previous one, {path}", flush=True)
            return path
        if failures:
            raise CheckpointError(
                f"No checkpoint in {directory} can be read: "
                + "; ".join(f"{p}: {why}" for p, why in failures)
                + ". Move them aside to start afresh, or restore "
                  "the files from a copy")
        return None

    def save(self, step):
        """Saves the state of update `step`; returns its path. Raises
        DivergenceError (nothing written) when a weight is not finite, and
        CheckpointError when the write fails (the previous checkpoint
        stays the newest listed)."""
        if not self.trainer.weights_finite():
            raise DivergenceError(
                f"A weight is not finite after update {step}; no checkpoint "
                f"was written (the newest good one is {self.newest}). Lower "
                f"--learning_rate and rerun")
        try:
            path = self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as error:
            target = os.path.join(self.directory, f"ckpt-{step}")
            raise CheckpointError(
                f"Cannot write checkpoint {target} ({_first_line(error)}); "
                f"the newest checkpoint is still "
                f"{self.newest or 'none'}. Make {self.directory} writable "
                f"(space, permissions), then rerun to resume")
        self.newest, self.newest_step = path, step
        return path


class BestCheckpoint:
    """The checkpoint of the best held-out MLM accuracy so far, kept apart
    from the rolling ones (which --keep_checkpoint_max rotates out): its own
    CheckpointManager (one checkpoint) in `directory`, and `record_name`
    there, a JSON of the accuracy, the update and the checkpoint's path.

    The record is read back when a run resumes, so a later evaluation must
    beat the best of the earlier runs too; a tie keeps the earlier update.
    """

    def __init__(self, trainer, directory, record_name):
        self.trainer = trainer
        self.directory = directory
        self.record_path = os.path.join(directory, record_name)
        self.manager = tf.train.CheckpointManager(
            trainer.checkpoint, directory, max_to_keep=1)
        self.record = self._read_record()

    def _read_record(self):
        if not tf.io.gfile.exists(self.record_path):
            return None
        try:
            with tf.io.gfile.GFile(self.record_path) as fh:
                return json.load(fh)
        except (ValueError, tf.errors.OpError):
            return None  # a damaged record: the next evaluation replaces it

    def consider(self, step, metrics):
        """Saves update `step` when its held-out MLM accuracy (`metrics`, an
        evaluation's) beats the best so far; returns the record if it
        did, else None. Raises CheckpointError when the write fails."""
        accuracy = float(metrics["masked_lm_accuracy"])
        if self.record is not None and (
                accuracy <= self.record["masked_lm_accuracy"]):
            return None
        try:
            path = self.manager.save(checkpoint_number=step)
            record = {"masked_lm_accuracy": accuracy, "step": int(step),
                      "checkpoint": path,
                      "masked_lm_loss": float(metrics["masked_lm_loss"])}
            paths.write_atomically(self.record_path,
                                   json.dumps(record, indent=2) + "\n")
        except (tf.errors.OpError, OSError) as error:
            raise CheckpointError(
                f"Cannot write the best checkpoint in {self.directory} "
                f"({_first_line(error)}). Make it writable, then rerun to "
                f"resume") from None
        self.record = record
        return record


class DivergenceGuard:
    """Sends a diverged run back to its newest good checkpoint, at most
    `max_trials` times; then raises DivergenceError.

    A run that starts with no checkpoint saves its starting state as the
    first one (`ckpt-<step>`, normally ckpt-0) in the run's directory: the
    point a divergence before the first regular save goes back to, and
    what a run preempted that early resumes from. It is an ordinary
    checkpoint, rotated out like the others, so nothing is left behind on
    the host's disk.
    """

    def __init__(self, trainer, checkpoints, config):
        self.trainer = trainer
        self.checkpoints = checkpoints
        self.config = config
        self.trials = 0

    def __enter__(self):
        if self.config.recovery_max_trials and (
                self.checkpoints.newest is None):
            self.checkpoints.save(int(self.trainer.step.numpy()))
        return self

    def __exit__(self, *exc_info):
        return False

    def recover(self, step, loss):
        """Restores the recovery point after update `step` diverged with
        `loss`; returns the update restored."""
        rate = self.trainer.learning_rate(step - 1)
        back_to = self.checkpoints.newest
        if self.trials >= self.config.recovery_max_trials or not back_to:
            resume = (f"rerun to resume from {self.checkpoints.newest}"
                      if self.checkpoints.newest else "rerun")
            raise DivergenceError(
                f"Training diverged at update {step}: loss {loss:.4g} "
                f"(limit --loss_upper_bound={self.config.loss_upper_bound:g})"
                f" at learning rate {rate:.4g}, after {self.trials} "
                f"recovery trial(s). Lower --learning_rate (or lengthen "
                f"--warmup_steps), then {resume}")
        self.trials += 1
        self.checkpoints.restore(back_to)
        restored = int(self.trainer.step.numpy())
        print(f"Warning: loss {loss:.4g} at update {step} (learning rate "
              f"{rate:.4g}); back to update {restored} ({back_to}), trial "
              f"{self.trials} of {self.config.recovery_max_trials}",
              flush=True)
        return restored
