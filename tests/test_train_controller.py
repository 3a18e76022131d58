"""The training controller and its actions (train/loop/controller.py,
train/loop/actions.py), the metrics module, and the stop on a real signal
inside one call of the compiled loop."""

import contextlib
import re
import os
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train import InputError, PretrainConfig
from train.config import Phase
from train.loop import actions
from train.loop import controller as controller_lib
from train.loop import metrics
from train.loop import trainer as trainer_lib
from train.loop.preemption import StopOnSignals
from train.model import bert
from train.runtime import errors


class FakeTrainer:
    """Counts updates like Trainer; `events` {update: ("diverge", loss) or
    ("stop",)} end a call after that update, as the compiled loop does."""

    def __init__(self, events=()):
        self.step = 0
        self.events = dict(events)
        self.calls = []

    def reset_stats(self):
        pass

    def distributed_iterator(self, phase_index, updates_done):
        return (phase_index, updates_done)

    def train_loop(self, iterator, updates=1):
        self.calls.append((self.step, updates))
        for done in range(1, updates + 1):
            self.step += 1
            event = self.events.pop(self.step, None)
            if event:
                return trainer_lib.LoopOutcome(
                    done, event[0] == "stop", event[0] == "diverge",
                    event[1] if event[0] == "diverge" else 1.0)
        return trainer_lib.LoopOutcome(updates, False, False, 1.0)

    def request_stop(self):
        pass


class Recorder:
    """An action due every `every` updates that records when it ran."""

    def __init__(self, every):
        self.every, self.ran, self.begun = every, [], []

    def begin(self, step, phase):
        self.begun.append(step)

    def due(self, step, phase_end):
        return step % self.every == 0

    def __call__(self, step):
        self.ran.append(step)


class FakeCheckpoints:
    def __init__(self):
        self.saved = []

    def save(self, step):
        self.saved.append(step)
        return f"ckpt-{step}"


class FakeGuard:
    """Sends `trainer` back to update `back_to` `trials` times, then
    raises."""

    def __init__(self, trainer, back_to, trials):
        self.trainer, self.back_to, self.trials = trainer, back_to, trials
        self.recovered = []

    def recover(self, step, loss):
        if len(self.recovered) == self.trials:
            raise errors.DivergenceError(f"diverged at {step}: {loss}")
        self.recovered.append((step, loss))
        self.trainer.step = self.back_to
        return self.back_to


def _controller(trainer, config, phases, recorders, guard=None):
    return controller_lib.Controller(
        trainer, config, phases, recorders, FakeCheckpoints(),
        guard or FakeGuard(trainer, 0, 0), lambda phase: contextlib.nullcontext())


def test_next_stop_with_evaluations():
    config = PretrainConfig(steps_per_loop=100, log_steps=50,
                            save_checkpoints_steps=40, mode="train_and_eval",
                            eval_files=("e",), eval_every_steps=30)
    assert controller_lib.intervals(config) == [50, 40, 30]
    stops, step = [], 0
    while step < 120:
        step = controller_lib.next_stop(step, 120, config)
        stops.append(step)
    assert stops == [30, 40, 50, 60, 80, 90, 100, 120]


@pytest.mark.parametrize("per_call", [1, 3, 100])
def test_actions_fire_at_their_intervals_for_any_steps_per_loop(per_call):
    config = PretrainConfig(num_train_steps=20, phase2_steps=8,
                            steps_per_loop=per_call, log_steps=5,
                            save_checkpoints_steps=7)
    phases = [Phase(12, 32, 5, 8), Phase(8, 64, 10, 8)]
    trainer = FakeTrainer()
    every5, every7 = Recorder(5), Recorder(7)
    controller = _controller(trainer, config, phases, [every5, every7])
    assert controller.train(0) == 20
    assert every5.ran == [5, 10, 15, 20]
    assert every7.ran == [7, 14]
    assert every5.begun == [0, 12]  # each phase
    # No call crosses a phase boundary or runs more than per_call updates.
    for start, updates in trainer.calls:
        assert updates <= per_call
        assert start >= 12 or start + updates <= 12
    assert controller.examples_seen == 20 * 8


def test_divergence_goes_back_and_retries_then_raises():
    config = PretrainConfig(num_train_steps=30, steps_per_loop=10,
                            log_steps=10, save_checkpoints_steps=10)
    trainer = FakeTrainer({14: ("diverge", 1e9)})
    guard = FakeGuard(trainer, back_to=10, trials=1)
    recorder = Recorder(10)
    controller = _controller(trainer, config, [Phase(30, 32, 5, 8)],
                             [recorder], guard)
    assert controller.train(0) == 30
    assert guard.recovered == [(14, 1e9)]
    # The retry restarted the data at update 10 and ran on from there.
    assert (10, 10) in trainer.calls
    assert recorder.ran == [10, 20, 30]
    assert recorder.begun == [0, 10]
    trainer = FakeTrainer({4: ("diverge", float("nan"))})
    with pytest.raises(errors.DivergenceError, match="diverged at 4: nan"):
        _controller(trainer, config, [Phase(30, 32, 5, 8)], [],
                    FakeGuard(trainer, 0, 0)).train(0)


def test_a_stop_request_saves_the_update_reached_and_raises():
    config = PretrainConfig(num_train_steps=300, steps_per_loop=100,
                            log_steps=100, save_checkpoints_steps=100)
    trainer = FakeTrainer({137: ("stop",)})
    recorder = Recorder(100)
    controller = _controller(trainer, config, [Phase(300, 32, 5, 8)],
                             [recorder])
    with pytest.raises(errors.Preempted) as raised:
        controller.train(0)
    assert raised.value.step == 137
    assert raised.value.checkpoint == "ckpt-137"
    assert controller.checkpoints.saved == [137]
    assert recorder.ran == [100]  # no action after the stop
    # No signal reached this process: another worker was preempted.
    assert raised.value.signal_number is None
    assert raised.value.exit_status == errors.EXIT_SIGTERM == 143
    assert "another worker was preempted" in str(raised.value)


class FakeLoggedTrainer:
    def __init__(self, skipped, loss_scale=None):
        self.skipped_updates = _Value(0)
        self.skipped = skipped
        self.variables = []
        self.loss_scale = loss_scale

    def read_stats(self):
        return {"mlm_loss": 2.0, "nsp_loss": 0.5, "mlm_accuracy": 0.25,
                "nsp_accuracy": 0.75, "weight_norms": [], "grad_norms": [],
                "trust_ratios": [], "loss_scale": self.loss_scale}

    def learning_rate(self, update):
        return 0.001 * update


class _Value:
    def __init__(self, value):
        self.value = value

    def numpy(self):
        return self.value


class _NoWriter:
    @contextlib.contextmanager
    def as_default(self, step):
        yield

    def flush(self):
        pass


def test_log_action_records_and_warns_on_skipped_updates(capsys,
                                                         monkeypatch):
    written = {}
    monkeypatch.setattr(actions, "scalar_summary",
                        lambda name, value: written.__setitem__(name, value))
    trainer = FakeLoggedTrainer(skipped=0)
    config = PretrainConfig(log_steps=10, num_train_steps=40)
    log = actions.LogAction(trainer, config, _NoWriter(), chief=True)
    log.begin(0, Phase(40, 32, 5, 8))
    assert log.due(10, 40) and not log.due(11, 40) and log.due(13, 13)
    trainer.skipped_updates.value = 1  # 1 of 10: at the limit, no warning
    log(10)
    trainer.skipped_updates.value = 3  # 2 of 10 more: over it
    log(20)
    out = capsys.readouterr().out
    assert re.search(r"^step\s+10/40 .* skipped 1 ", out, re.M)
    assert re.search(r"^step\s+20/40 .* skipped 3 ", out, re.M)
    warnings = re.findall(r"^Warning: .*", out, re.M)
    assert warnings == ["Warning: 2 of the 10 updates up to 20 were skipped "
                        "(gradients not finite)"]
    assert [h["skipped_updates"] for h in log.history] == [1, 3]
    assert log.history[-1]["learning_rate"] == pytest.approx(0.019)
    assert written["skipped_updates"] == 3 and written["loss"] == 2.5


def test_a_long_stretch_of_skipped_updates_stops_the_run(capsys,
                                                         monkeypatch):
    """Log intervals of 10 updates: one wholly skipped, one with an update
    applied, then 50 skipped in a row stop the run; the loss scale is in
    each line, TensorBoard and the message."""
    written = {}
    monkeypatch.setattr(actions, "scalar_summary",
                        lambda name, value: written.__setitem__(name, value))
    trainer = FakeLoggedTrainer(skipped=0, loss_scale=2.0 ** 15)
    config = PretrainConfig(log_steps=10, num_train_steps=200)
    log = actions.LogAction(trainer, config, _NoWriter(), chief=True)
    log.begin(0, Phase(200, 32, 5, 8))
    trainer.skipped_updates.value = 10
    log(10)
    trainer.skipped_updates.value = 19  # one applied: the stretch restarts
    log(20)
    for step in range(30, 70, 10):  # 40 skipped in a row
        trainer.skipped_updates.value += 10
        trainer.loss_scale /= 2.0 ** 10
        log(step)
    assert written["loss_scale"] == trainer.loss_scale
    assert log.history[-1]["loss_scale"] == trainer.loss_scale
    trainer.skipped_updates.value += 10
    with pytest.raises(errors.DivergenceError) as raised:
        log(70)
    assert str(raised.value).startswith(
        "Every update from 21 to 70 was skipped: the gradients were not "
        "finite (the loss scale is down to 3.0e-08)")
    assert actions.SKIPPED_STOP_UPDATES == 50
    out = capsys.readouterr().out
    assert re.search(r"^step\s+10/200 .* skipped 10  loss_scale 3.28e\+04 ", out,
                     re.M), out


def test_means_from_sums_against_numpy():
    rng = np.random.default_rng(0)
    per_token = rng.uniform(0, 5, 40)
    weights = (rng.uniform(size=40) > 0.3).astype(float)
    correct = (rng.uniform(size=40) > 0.5).astype(float)
    nsp = rng.uniform(0, 1, 8)
    sums = {"mlm_loss_sum": (per_token * weights).sum(),
            "mlm_weight": weights.sum(),
            "mlm_correct": (correct * weights).sum(),
            "nsp_loss_sum": nsp.sum(), "nsp_count": 8.0, "nsp_correct": 3.0}
    means = metrics.means_from_sums(sums)
    assert means["mlm_loss"] == pytest.approx(
        np.average(per_token, weights=weights))
    assert means["mlm_accuracy"] == pytest.approx(
        np.average(correct, weights=weights))
    assert means["nsp_loss"] == pytest.approx(nsp.mean())
    assert means["nsp_accuracy"] == 3 / 8
    assert means["loss"] == pytest.approx(means["mlm_loss"] + nsp.mean())
    empty = metrics.means_from_sums(dict.fromkeys(metrics.SUM_NAMES, 0.0))
    assert empty == dict(mlm_loss=0.0, mlm_accuracy=0.0, nsp_loss=0.0,
                         nsp_accuracy=0.0, loss=0.0)


@pytest.mark.parametrize("changes, match", [
    ({"loss_upper_bound": 0.0}, "--loss_upper_bound must be > 0"),
    ({"loss_upper_bound": float("nan")}, "--loss_upper_bound must be > 0"),
    ({"recovery_max_trials": -1}, "--recovery_max_trials must be >= 0"),
])
def test_config_rejects_bad_failure_settings(changes, match):
    with pytest.raises(InputError, match=match):
        PretrainConfig(**changes)


def test_a_real_signal_stops_a_call_of_100_updates_inside_it(tmp_path):
    """SIGTERM to this process while one call of the compiled loop runs 100
    updates: the call returns after the update in progress, and the
    previous handler is back afterwards."""
    files, vocab = _testing.make_records(str(tmp_path / "records"),
                                         max_documents=60, dupe_factor=1)
    config = PretrainConfig(
        max_seq_length=32, max_predictions_per_seq=5, train_batch_size=8,
        warmup_steps=1, shuffle_buffer=100, train_files=tuple(files),
        vocab_file=vocab, num_train_steps=200, model_dir=str(tmp_path))
    phases = [config.phases()[0].with_files(files)]
    bert_config = bert.BertConfig.for_size("tiny", 600)
    trainer = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                                  bert_config, phases)
    iterator = trainer.distributed_iterator(0, 0)
    trainer.train_loop(iterator, 1)  # traced and compiled here
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignals(trainer.request_stop) as watch:
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        outcome = trainer.train_loop(iterator, 100)
        timer.join()
    assert watch.signal_number == signal.SIGTERM
    assert outcome.stop_requested and not outcome.diverged
    assert 1 <= outcome.updates < 100, outcome
    assert int(trainer.step.numpy()) == 1 + outcome.updates
    assert signal.getsignal(signal.SIGTERM) is before
