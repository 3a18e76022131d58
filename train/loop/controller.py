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
- the due actions run: log line and summaries, checkpoint, evaluation;
- an evaluation that reached --stop_at_mlm_accuracy ends the training.
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


def examples_at(step, phases):
    """Training examples in the first `step` updates (each phase's updates
    at its own batch size): MLPerf's sample count, its `epoch_num`."""
    total = 0
    for phase in phases:
        updates = min(step, phase.steps)
        total += updates * phase.batch_size
        step -= updates
    return total + step * (phases[-1].batch_size if phases else 0)


def evaluation_due(step, config, phases):
    """Whether a periodic evaluation follows update `step`: every
    --eval_every_steps updates, or after the update whose examples reach
    the next multiple of --eval_every_examples."""
    if config.mode != "train_and_eval" or step < 1:
        return False
    if config.eval_every_steps:
        return step % config.eval_every_steps == 0
    if config.eval_every_examples:
        every = config.eval_every_examples
        return (examples_at(step, phases) // every
                > examples_at(step - 1, phases) // every)
    return False


def next_evaluation(step, config, phases):
    """The first update after `step` a periodic evaluation follows, or None
    (none is scheduled before the end of the run)."""
    if not (config.eval_every_steps or config.eval_every_examples) or (
            config.mode != "train_and_eval"):
        return None
    if config.eval_every_steps:
        return (step // config.eval_every_steps + 1) * config.eval_every_steps
    # Updates are whole: the first one whose examples reach the next
    # multiple, found by walking the phases' batch sizes.
    every = config.eval_every_examples
    target = (examples_at(step, phases) // every + 1) * every
    update = step
    while update < config.num_train_steps:
        update += 1
        if examples_at(update, phases) >= target:
            return update
    return None


def next_stop(step, end, config, phases=()):
    """The update after which the loop next hands control back: the end of
    the phase, or the next update a log, checkpoint or evaluation is due at,
    at most steps_per_loop updates away."""
    stop = min(end, step + config.steps_per_loop)
    for every in intervals(config):
        stop = min(stop, (step // every + 1) * every)
    if phases and config.eval_every_examples:
        evaluation = next_evaluation(step, config, phases)
        if evaluation is not None:
            stop = min(stop, evaluation)
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
                    iterator, next_stop(step, end, self.config,
                                        self.phases) - step)
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
            # An evaluation that reached --stop_at_mlm_accuracy ends the
            # run here, its checkpoint saved (actions.EvalAction).
            if any(getattr(action, "finished", False)
                   for action in self.actions):
                return step
            if step == end:
                iterator = None
        return step
