"""Every error a pretraining run reports to its user, and the exit status
`python -m train.pretrain` gives each (see docs/failures.md).

Each message is one line that names the problem and what to change; the
command line prints it without a traceback.
"""

import signal

# Exit statuses of `python -m train.pretrain`. 128 + signal number for a
# stop on a signal follows the shell's convention, so a supervisor that
# already reads 143 as "terminated" keeps doing so.
EXIT_BAD_INPUT = 1  # InputError, DataError
EXIT_DIVERGED = 3  # DivergenceError
EXIT_CHECKPOINT = 4  # CheckpointError
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143
EXIT_SIGINT = 128 + signal.SIGINT  # 130


class InputError(ValueError):
    """Bad settings or data; the message names the problem."""


class DataError(ValueError):
    """A TFRecord file that cannot be used; the message is one line that
    names the file (and the byte offset of the bad record when known)."""


class DivergenceError(RuntimeError):
    """The loss stayed non-finite or above --loss_upper_bound after every
    allowed recovery; the message names the update, loss and rate."""

    exit_status = EXIT_DIVERGED


class CheckpointError(RuntimeError):
    """A checkpoint of the run that cannot be written, or no checkpoint in
    --model_dir that can be read; the message names the file."""

    exit_status = EXIT_CHECKPOINT


class Preempted(Exception):
    """The run stopped on SIGTERM or SIGINT (on this worker or another one)
    after saving a checkpoint at the update it reached.

    Attributes: `step` (updates done and saved), `checkpoint` (its path),
    `signal_number` (the signal this process received, or None when another
    worker received it), `exit_status`.
    """

    def __init__(self, step, checkpoint, signal_number):
        self.step = step
        self.checkpoint = checkpoint
        self.signal_number = signal_number
        if signal_number is None:
            cause = "another worker was preempted"
        else:
            cause = f"{signal.Signals(signal_number).name} received"
        super().__init__(
            f"Stopped at update {step} ({cause}); saved {checkpoint}. "
            f"Resume with the same command: it continues from the newest "
            f"checkpoint in --model_dir")

    @property
    def exit_status(self):
        return 128 + (self.signal_number or signal.SIGTERM)


class Interrupted(Exception):
    """SIGTERM or SIGINT before anything was trained or written (while this
    worker waited for the other workers of its cluster).

    Attributes: `signal_number`, `exit_status` (128 + its number).
    """

    def __init__(self, signal_number, while_doing):
        self.signal_number = signal_number
        super().__init__(
            f"Stopped {while_doing} ({signal.Signals(signal_number).name} "
            f"received); nothing was trained or written")

    @property
    def exit_status(self):
        return 128 + self.signal_number
