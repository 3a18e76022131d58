"""Faults of a real `python -m train.pretrain` process: SIGTERM/SIGINT
mid-call (one device, and MultiWorkerMirrored with the signal sent to one
worker only), and a diverging learning rate (docs/failures.md)."""

import json
import os
import re
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train.runtime import errors

SMALL = ["--max_seq_length=32", "--max_predictions_per_seq=5",
         "--train_batch_size=8", "--warmup_steps=1", "--shuffle_buffer=100",
         "--learning_rate=1e-2", "--export_dir=none"]
# Calls of the compiled loop of up to 100 updates, ending early only where
# a log line (every 150) is due: 0-100, 100-150, 150-250, 250-300, ...
LONG_CALLS = ["--steps_per_loop=100", "--log_steps=150",
              "--save_checkpoints_steps=1000"]
# The signal is sent when this line appears, so it lands inside the call
# from 150 to 250, or a later one (that a stop lands inside a call, not
# at its end, is test_train_controller's
# test_a_real_signal_stops_a_call_of_100_updates_inside_it).
STARTED = r"^step\s+150/"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _testing.record_flags(str(tmp_path_factory.mktemp("records")))


def _checkpoint_values(model_dir):
    """The training state in the newest checkpoint (without the saver's
    own count of saves)."""
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if not name.startswith(("_CHECKPOINTABLE", "save_counter"))}


def _wait_for(log_path, pattern, processes, timeout):
    """Waits until the log matches `pattern`; False if a process ended or
    time ran out first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if re.search(pattern, open(log_path).read(), re.M):
            return True
        if any(p.poll() is not None for p in processes):
            return False
        time.sleep(0.1)
    return False


def _wait(processes, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline and any(p.poll() is None
                                         for p in processes):
        time.sleep(0.2)
    return [p.poll() for p in processes]


def _stop_line(text):
    lines = re.findall(r"^Stopped at update (\d+) \((.*?)\); saved (\S+)\. "
                       r"Resume with the same command", text, re.M)
    assert len(lines) == 1, text[-3000:]
    step, cause, path = lines[0]
    return int(step), cause, path


def _interrupt(args, log, signal_number):
    """Runs the command line, sends `signal_number` once the log line of
    update 150 is out; returns (exit status, output)."""
    process = _testing.start(["-m", "train.pretrain"] + args, log)
    try:
        assert _wait_for(log, STARTED, [process], 240), (
            open(log).read()[-3000:])
        os.kill(process.pid, signal_number)
        code = _wait([process], 120)[0]
    finally:
        _testing.kill(process)
    return code, open(log).read()


def test_sigterm_mid_call_saves_and_resume_equals_uninterrupted(records,
                                                               tmp_path):
    args = SMALL + records + LONG_CALLS + ["--num_train_steps=400"]
    stopped_dir = str(tmp_path / "stopped")
    code, text = _interrupt(args + [f"--model_dir={stopped_dir}"],
                            str(tmp_path / "stopped.log"), signal.SIGTERM)
    assert code == errors.EXIT_SIGTERM == 143, text[-3000:]
    assert "Traceback" not in text
    step, cause, path = _stop_line(text)
    assert cause == "SIGTERM received"
    assert 150 < step < 400, step
    assert path == os.path.join(stopped_dir, f"ckpt-{step}")
    assert tf.train.latest_checkpoint(stopped_dir) == path
    resumed = _testing.run_flags(args + [f"--model_dir={stopped_dir}"])
    assert resumed["start_step"] == step and resumed["step"] == 400
    whole_dir = str(tmp_path / "whole")
    _testing.run_flags(args + [f"--model_dir={whole_dir}"])
    a, b = _checkpoint_values(stopped_dir), _checkpoint_values(whole_dir)
    assert a.keys() == b.keys() and any("optimizer" in k for k in a)
    for name in a:
        scale = max(float(np.max(np.abs(a[name]))), 1e-30)
        error = float(np.max(np.abs(a[name] - b[name]))) / scale
        assert error <= 1e-6, (name, error)


def test_sigint_stops_with_status_130(records, tmp_path):
    model_dir = str(tmp_path / "run")
    code, text = _interrupt(
        SMALL + records + LONG_CALLS + ["--num_train_steps=2000",
                                        f"--model_dir={model_dir}"],
        str(tmp_path / "run.log"), signal.SIGINT)
    assert code == errors.EXIT_SIGINT == 130, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    step, cause, path = _stop_line(text)
    assert cause == "SIGINT received"
    assert tf.train.latest_checkpoint(model_dir).endswith(f"ckpt-{step}")


def test_multi_worker_stop_on_one_worker_saves_at_the_same_update(
        records, tmp_path):
    model_dir = str(tmp_path / "run")
    args = ["-m", "train.pretrain"] + SMALL + records + LONG_CALLS + [
        "--strategy=multi_worker", f"--model_dir={model_dir}",
        "--num_train_steps=3000"]
    ports = _testing.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    logs = [str(tmp_path / f"worker{i}.log") for i in range(2)]
    processes = []
    try:
        for index, log in enumerate(logs):
            processes.append(_testing.start(args, log, TF_CONFIG=json.dumps(
                {"cluster": cluster,
                 "task": {"type": "worker", "index": index}})))
        assert _wait_for(logs[0], STARTED, processes, 240), (
            "\n\n".join(open(log).read()[-3000:] for log in logs))
        # Only worker 1 (not the chief) is told to stop.
        os.kill(processes[1].pid, signal.SIGTERM)
        codes = _wait(processes, 120)
    finally:
        for process in processes:
            _testing.kill(process)
    texts = [open(log).read() for log in logs]
    assert codes == [143, 143], "\n\n".join(t[-3000:] for t in texts)
    (chief_step, chief_cause, chief_path), (step, cause, _) = (
        _stop_line(texts[0]), _stop_line(texts[1]))
    assert chief_step == step and 150 < step < 3000
    assert chief_cause == "another worker was preempted"
    assert cause == "SIGTERM received"
    assert chief_path == os.path.join(model_dir, f"ckpt-{step}")
    assert tf.train.latest_checkpoint(model_dir) == chief_path
    assert not any("Traceback" in t for t in texts)


def test_learning_rate_1e4_stops_with_one_line(records, tmp_path):
    model_dir = str(tmp_path / "run")
    result = _testing.run(["-m", "train.pretrain"] + SMALL + records + [
        "--learning_rate=1e4", "--num_train_steps=20", "--log_steps=5",
        "--save_checkpoints_steps=10", f"--model_dir={model_dir}"],
        timeout=300)
    assert result.returncode == errors.EXIT_DIVERGED == 3, (
        result.stdout + result.stderr)[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    errors_printed = re.findall(r"^Error: .*", result.stderr, re.M)
    assert len(errors_printed) == 1, result.stderr[-3000:]
    match = re.match(r"Error: Training diverged at update (\d+): loss "
                     r"(\S+) \(limit --loss_upper_bound=1e\+06\) at learning "
                     r"rate (\S+), after 1 recovery trial\(s\)\. Lower "
                     r"--learning_rate", errors_printed[0])
    assert match, errors_printed[0]
    assert float(match.group(2)) > 1e6 or not np.isfinite(
        float(match.group(2)))
    assert float(match.group(3)) > 1e3
    # The one recovery trial went back to the start and diverged again.
    assert re.search(r"^Warning: loss \S+ at update \d+ .*back to update 0 "
                     r".*trial 1 of 1", result.stdout, re.M)
    # Nothing diverged was saved: the newest checkpoint is the starting
    # state the recovery went back to.
    assert tf.train.latest_checkpoint(model_dir) == os.path.join(
        model_dir, "ckpt-0")
