"""The training controller: runs updates in calls of the compiled loop and
fires the actions that are due between calls (in the spirit of
`orbit.Controller` with Model Garden's actions).

One call runs up to --steps_per_loop updates, and fewer when the end of a
phase, a log line, a checkpoint or an evaluation is due sooner
(`next_stop`), so every interval holds for any --steps_per_loop. After
each call, in this order:

- a diverged update (loss not finite or above --loss_upper_bound) sends
  the run back to its last good checkpoint (`checkpoints.DivergenceGuard`),
  or stops it with a DivergenceError;
- a stop request (SIGTERM/SIGINT on any worker, `preemption`) saves a
  checkpoint at the update reached and raises `errors.Preempted`;
- the due actions run: log line and summaries, checkpoint, evaluation.
"""

import time

from train.loop.preemption import StopOnSignals
from train.runtime.errors import Preempted


def intervals(config):
    """The update intervals of logs, checkpoints and (train_and_eval)
    evaluations."""
    result = [config.log_steps, config.save_checkpoints_steps]
    if config.mode == "train_and_eval" and config.eval_every_steps:
        result.append(config.eval_every_steps)
    return result


def next_stop(step, end, config):
    """The update after which the loop next hands control back: the end of
    the phase, or the next update a log, checkpoint or evaluation is due at,
    at most steps_per_loop updates away."""
    stop = min(end, step + config.steps_per_loop)
    for every in intervals(config):
        stop = min(stop, (step // every + 1) * every)
    return stop


class Controller:
    """Trains `trainer` through `phases` up to config.num_train_steps.

    Arguments: `actions` (see train/loop/actions.py), `checkpoints` (a
    train.loop.checkpoints.RunCheckpoints), `guard` (a DivergenceGuard), and
    `reading(phase)`, a context manager that turns a reading error of the
    phase's files into a DataError.
    """

    def __init__(self, trainer, config, phases, actions, checkpoints, guard,
                 reading):
        self.trainer = trainer
        self.config = config
        self.phases = phases
        self.actions = actions
        self.checkpoints = checkpoints
        self.guard = guard
        self.reading = reading
        self.examples_seen = 0
        self.train_seconds = 0.0
        self._announced = None

    def _phase_at(self, step):
        """(index, first update, end) of the phase that holds update
        `step` + 1."""
        begin = 0
        for index, phase in enumerate(self.phases):
            if step < begin + phase.steps:
                return index, begin, begin + phase.steps
            begin += phase.steps
        raise ValueError(f"Update {step} is past the last phase")

    def _start_phase(self, step):
        index, begin, end = self._phase_at(step)
        phase = self.phases[index]
        if len(self.phases) > 1 and self._announced != index:
            print(f"Phase {index + 1}: steps {step} -> {end}, "
                  f"{phase.seq_length} tokens, batch {phase.batch_size}",
                  flush=True)
        self._announced = index
        self.trainer.reset_stats()
        for action in self.actions:
            action.begin(step, phase)
        return self.trainer.distributed_iterator(index, step - begin), end

    def train(self, step):
        """Trains from update `step`; returns the update reached (the
        total). Raises Preempted, DivergenceError, CheckpointError or
        DataError."""
        started = time.time()
        with StopOnSignals(self.trainer.request_stop) as signals:
            step = self._train(step, signals)
        self.train_seconds = time.time() - started
        return step

    def _train(self, step, signals):
        total, iterator = self.config.num_train_steps, None
        while step < total:
            if iterator is None:
                iterator, end = self._start_phase(step)
            phase = self.phases[self._phase_at(step)[0]]
            with self.reading(phase):
                outcome = self.trainer.train_loop(
                    iterator, next_stop(step, end, self.config) - step)
            step += outcome.updates
            self.examples_seen += outcome.updates * phase.batch_size
            if outcome.diverged:
                step, iterator = self.guard.recover(step, outcome.loss), None
                continue
            if outcome.stop_requested:
                raise Preempted(step, self.checkpoints.save(step),
                                signals.signal_number)
            for action in self.actions:
                if action.due(step, end):
                    action(step)
            if step == end:
                iterator = None
        return step
