"""What the controller does between calls of the compiled training loop,
each at its own interval: the log line and summaries, the checkpoint, the
evaluation (train/loop/controller.py fires them; the preemption and
divergence handling live there and in train/loop/checkpoints.py).

Each action has `due(step, phase_end)` and `__call__(step)`; `begin(step,
phase)` tells it a phase (or a stretch after a recovery) starts.
"""

import time

from train.loop import controller as controller_lib
from train.loop.metrics import scalar_summary
from train.runtime.errors import DivergenceError

# More skipped updates than this share of a log interval's updates draws a
# warning: dynamic loss scaling skips a few while it finds its scale, a
# healthy run few afterwards.
SKIPPED_WARNING_SHARE = 0.1
# This many updates in a row skipped, with every log interval among them
# wholly skipped, stops the run: dynamic loss scaling would have halved its
# scale as often (2**15 -> 2**-35 at 50), so no scale gives finite
# gradients.
SKIPPED_STOP_UPDATES = 50

_LOGGED = ("mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy",
           "learning_rate", "examples_per_second", "skipped_updates")


def format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LogAction:
    """Every --log_steps updates and at the end of each phase: one line on
    the chief, TensorBoard scalars (train/<name>, per-variable norms and
    trust ratios) and a record in `history`."""

    def __init__(self, trainer, config, writer, chief):
        self.trainer = trainer
        self.every = config.log_steps
        self.total = config.num_train_steps
        self.writer = writer
        self.chief = chief
        self.history = []
        self._skipping_since = None
        self.paths = [v.path for v in trainer.variables]
        self.batch_size = None

    def begin(self, step, phase):
        self.batch_size = phase.batch_size
        self._skipping_since = None
        self._restart(step)

    def _restart(self, step):
        self._started, self._start_step = time.time(), step
        self._skipped_before = int(self.trainer.skipped_updates.numpy())

    def exclude(self, seconds):
        """Leaves `seconds` (an evaluation's) out of the interval's time."""
        self._started += seconds

    def due(self, step, phase_end):
        return step % self.every == 0 or step == phase_end

    def __call__(self, step):
        stats = self.trainer.read_stats()
        elapsed = time.time() - self._started
        updates = step - self._start_step
        skipped_total = int(self.trainer.skipped_updates.numpy())
        skipped = skipped_total - self._skipped_before
        record = {"step": step, "learning_rate": self.trainer.learning_rate(
                      step - 1),
                  "examples_per_second": updates * self.batch_size / max(
                      elapsed, 1e-9),
                  "skipped_updates": skipped_total}
        for name in ("mlm_loss", "nsp_loss", "mlm_accuracy",
                     "nsp_accuracy"):
            record[name] = stats[name]
        if stats["loss_scale"] is not None:
            record["loss_scale"] = stats["loss_scale"]
        self.history.append(record)
        if self.chief:
            eta = (self.total - step) * elapsed / max(updates, 1)
            scale = (f"  loss_scale {record['loss_scale']:.3g}"
                     if "loss_scale" in record else "")
            print(f"step {step:>6}/{self.total}  mlm_loss "
                  f"{record['mlm_loss']:.4f}  nsp_loss "
                  f"{record['nsp_loss']:.4f}  mlm_acc "
                  f"{record['mlm_accuracy']:.4f}  lr "
                  f"{record['learning_rate']:.3e}  examples/s "
                  f"{record['examples_per_second']:.1f}  skipped "
                  f"{skipped_total}{scale}  eta {format_eta(eta)}",
                  flush=True)
            if updates and skipped > SKIPPED_WARNING_SHARE * updates:
                print(f"Warning: {skipped} of the {updates} updates up to "
                      f"{step} were skipped (gradients not finite)",
                      flush=True)
        self._write_summaries(step, record, stats)
        self._stop_if_every_update_is_skipped(step, updates, skipped, record)
        self._restart(step)

    def _stop_if_every_update_is_skipped(self, step, updates, skipped,
                                         record):
        """DivergenceError once every update of the last
        SKIPPED_STOP_UPDATES or more (whole log intervals) was skipped."""
        if not updates or skipped < updates:
            self._skipping_since = None
            return
        if self._skipping_since is None:
            self._skipping_since = self._start_step
        if step - self._skipping_since >= SKIPPED_STOP_UPDATES:
            scale = (f" (the loss scale is down to "
                     f"{record['loss_scale']:.1e})"
                     if "loss_scale" in record else "")
            raise DivergenceError(
                f"Every update from {self._skipping_since + 1} to {step} was "
                f"skipped: the gradients were not finite{scale}. Lower "
                f"--learning_rate or --loss_scale_factor, or train in "
                f"float32 or mixed_bfloat16")

    def _write_summaries(self, step, record, stats):
        with self.writer.as_default(step=step):
            for name in _LOGGED:
                scalar_summary(name, record[name])
            scalar_summary("loss", record["mlm_loss"] + record["nsp_loss"])
            if "loss_scale" in record:
                scalar_summary("loss_scale", record["loss_scale"])
            for path, weight, grad, ratio in zip(
                    self.paths, stats["weight_norms"], stats["grad_norms"],
                    stats["trust_ratios"]):
                scalar_summary(f"weight_norm/{path}", weight)
                scalar_summary(f"grad_norm/{path}", grad)
                if ratio is not None:
                    scalar_summary(f"trust_ratio/{path}", ratio)
        self.writer.flush()


class CheckpointAction:
    """Every --save_checkpoints_steps updates and after the last one."""

    def __init__(self, checkpoints, config):
        self.checkpoints = checkpoints
        self.every = config.save_checkpoints_steps
        self.total = config.num_train_steps

    def begin(self, step, phase):
        del step, phase

    def due(self, step, phase_end):
        del phase_end
        return step % self.every == 0 or step == self.total

    def __call__(self, step):
        self.checkpoints.save(step)


class EvalAction:
    """With --mode=train_and_eval: every --eval_every_steps updates or
    --eval_every_examples examples (the final evaluation, after the last
    update, is the run's own). With --stop_at_mlm_accuracy, the first
    evaluation whose held-out MLM accuracy reaches it saves a checkpoint
    of that update and sets `finished`, which ends the training
    (controller.Controller)."""

    def __init__(self, evaluate, config, log_action, phases, checkpoints):
        self.evaluate = evaluate
        self.config = config
        self.phases = phases
        self.total = config.num_train_steps
        self.log_action = log_action
        self.checkpoints = checkpoints
        self.newest = None
        self.finished = False
        self.checkpoint = None

    def begin(self, step, phase):
        del step, phase

    def due(self, step, phase_end):
        del phase_end
        return step < self.total and controller_lib.evaluation_due(
            step, self.config, self.phases)

    def __call__(self, step):
        started = time.time()
        self.newest = self.evaluate(step)
        self.log_action.exclude(time.time() - started)
        target = self.config.stop_at_mlm_accuracy
        if target is not None and (
                self.newest["masked_lm_accuracy"] >= target):
            # The checkpoint action ran before this one: reuse its save of
            # this update rather than write the same state twice.
            self.checkpoint = (self.checkpoints.newest
                               if self.checkpoints.newest_step == step
                               else self.checkpoints.save(step))
            self.finished = True
