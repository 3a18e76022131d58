"""train.pretrain under MirroredStrategy (2 logical CPUs) and
MultiWorkerMirroredStrategy (2 processes on 127.0.0.1), each in its own
processes since devices must be configured before TensorFlow starts."""

import json
import os
import re
import signal
import tempfile
import threading
import time

import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train import PretrainConfig, run_pretraining
from train.loop import trainer as trainer_lib
from train.runtime import scratch

SMALL = ["--max_seq_length=32", "--max_predictions_per_seq=5",
         "--warmup_steps=1", "--shuffle_buffer=100", "--log_steps=1",
         "--learning_rate=1e-2"]

MIRRORED_SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tests.support import train_testing
from train import InputError
args = sys.argv[1:]
try:
    train_testing.run_flags(args + ["--train_batch_size=9"])
except InputError as error:
    print("BATCH_ERROR", error)
result = train_testing.run_flags(args + ["--train_batch_size=8"])
trainer = result["trainer"]
print("REPLICAS", trainer.replicas)
for variable in trainer.variables:
    copies = trainer.strategy.experimental_local_results(variable.value)
    assert len(copies) == 2, variable.path
    np.testing.assert_array_equal(copies[0].numpy(), copies[1].numpy())
print("LOSSES", [h["mlm_loss"] for h in result["history"]])
print("MIRRORED_OK")
"""


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _testing.record_flags(str(tmp_path_factory.mktemp("records")))


def test_mirrored_two_replicas(records, tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    model_dir = tmp_path / "run"
    result = _testing.run(
        [str(script)] + SMALL + records + [
            "--strategy=mirrored", f"--model_dir={model_dir}",
            "--num_train_steps=4", "--save_checkpoints_steps=2"],
        timeout=300)
    out = result.stdout
    assert "MIRRORED_OK" in out, (out + result.stderr)[-4000:]
    assert "--train_batch_size=9 is not divisible by the 2 replica" in out
    assert "REPLICAS 2" in out
    assert "mirrored strategy (MirroredStrategy) with 2 replica(s)" in out
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")


class _Watch:
    """Every path that appears under `directory` while it runs, polled
    (what a process makes and deletes before it ends is seen too)."""

    def __init__(self, directory):
        self.directory, self.seen = str(directory), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while True:
            for root, dirs, files in os.walk(self.directory):
                self.seen.update(os.path.relpath(os.path.join(root, name),
                                                 self.directory)
                                 for name in dirs + files)
            if self._stop.wait(0.05):
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()

    def written(self):
        """What appeared, less the Python source TensorFlow's autograph
        writes there for each function it converts, in every process (the
        chief's too), and deletes when the process exits."""
        return {path for path in self.seen
                if not re.fullmatch(r"__autograph_generated_file\w+\.py",
                                    path)}


def test_multi_worker_two_processes(records, tmp_path):
    model_dir = tmp_path / "run"
    args = ["-m", "train.pretrain"] + SMALL + records + [
        "--strategy=multi_worker", f"--model_dir={model_dir}",
        "--num_train_steps=4", "--save_checkpoints_steps=2",
        "--train_batch_size=8"]
    logs = [str(tmp_path / f"worker{index}.log") for index in range(2)]
    # A temporary directory of each worker's own, watched while they run:
    # the non-chief's must stay empty (its checkpoints go to ram://).
    temps = [tmp_path / f"tmp{index}" for index in range(2)]
    for temp in temps:
        temp.mkdir()
    with _Watch(temps[1]) as other_temp:
        codes = _testing.run_workers(
            [args, args], logs, timeout=300,
            envs=[{"TMPDIR": str(temp)} for temp in temps])
    assert other_temp.written() == set()
    texts = [open(log).read() for log in logs]
    assert codes == [0, 0], "\n\n".join(t[-3000:] for t in texts)
    chief, other = texts
    assert "multi_worker strategy" in chief
    assert "with 2 replica(s)" in chief
    steps = [int(s) for s in re.findall(r"^step\s+(\d+)/4", chief, re.M)]
    assert steps == [1, 2, 3, 4]
    assert not re.search(r"^step\s+\d+/4", other, re.M)
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")
    assert (model_dir / "export" / "saved_model.pb").exists()
    assert sorted(os.listdir(model_dir / "train"))


def test_a_worker_that_is_not_the_chief_writes_only_to_memory(
        tmp_path, monkeypatch):
    """A whole run as a non-chief worker (examples made from text, held-out
    evaluation, checkpoints, a divergence guard): model_dir is never made,
    nothing appears under the temporary directory, and the ram:// work
    directory that held its files is gone at the end."""
    corpus = _testing.write_small_corpus(str(tmp_path / "corpus.txt"), 150)
    model_dir = tmp_path / "run"
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setattr(trainer_lib, "is_chief", lambda strategy: False)
    held = {}
    remove = scratch.remove

    def listing_then_remove(directory):
        held["work_dir"] = directory
        for name in ("checkpoints", "data"):
            held[name] = sorted(os.path.basename(path) for path in
                                tf.io.gfile.glob(f"{directory}{name}/*"))
        remove(directory)
        held["after"] = tf.io.gfile.exists(directory)

    monkeypatch.setattr(scratch, "remove", listing_then_remove)
    with _Watch(temp) as watched:
        result = run_pretraining(PretrainConfig(
            model_dir=str(model_dir), input_file=(corpus,),
            num_train_steps=4, save_checkpoints_steps=2, log_steps=2,
            max_seq_length=32, max_predictions_per_seq=5, warmup_steps=1,
            train_batch_size=8, dupe_factor=1, vocab_size=500,
            heldout_share=0.2))
    assert result["step"] == 4
    assert not model_dir.exists()
    assert watched.written() == set()
    work_dir = held["work_dir"]
    assert re.fullmatch(r"ram://worker-\d+-[0-9a-f]{32}/", work_dir)
    assert held["data"] == ["heldout.tfrecord", "metadata.json",
                            "phase1.tfrecord", "vocab.txt"]
    # One copy kept: the newest, which a divergence would go back to.
    assert held["checkpoints"] == ["checkpoint", "ckpt-4.data-00000-of-00001",
                                   "ckpt-4.index"]
    assert result["vocab_file"].startswith(work_dir)
    assert held["after"] is False


def _lone_worker(tmp_path, name, *args):
    """Worker 0 of a 2-worker cluster on 127.0.0.1 whose worker 1 never
    starts; returns (process, log path, the two addresses)."""
    addresses = [f"127.0.0.1:{port}" for port in _testing.free_ports(2)]
    tf_config = {"cluster": {"worker": addresses},
                 "task": {"type": "worker", "index": 0}}
    log = tmp_path / f"{name}.log"
    process = _testing.start(
        ["-m", "train.pretrain", "--strategy=multi_worker",
         f"--model_dir={tmp_path / name}"] + list(args), str(log),
        TF_CONFIG=json.dumps(tf_config))
    return process, log, addresses


def _wait_for(condition, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline and not condition():
        time.sleep(0.2)
    return condition()


def test_a_lone_worker_says_what_it_waits_for_and_stops_on_signals(
        tmp_path):
    """Worker 0 without worker 1 used to hang in silence inside
    TensorFlow, deaf to SIGTERM and SIGINT. Now it says once for which
    worker it waits; SIGTERM and SIGINT end it at once with 143 and 130,
    and --worker_wait_seconds with an error; nothing is written."""
    workers = {
        "term": _lone_worker(tmp_path, "term"),
        "int": _lone_worker(tmp_path, "int"),
        "timeout": _lone_worker(tmp_path, "timeout",
                                "--worker_wait_seconds=3"),
    }
    try:
        for name, (process, log, (own, other)) in workers.items():
            waiting = (f"Waiting for worker 1 ({other}) of TF_CONFIG's "
                       f"cluster to start (this is worker 0, {own})")
            assert _wait_for(lambda: waiting in log.read_text(), 120), (
                name, log.read_text()[-3000:])
        for name, number in (("term", signal.SIGTERM),
                             ("int", signal.SIGINT)):
            os.kill(workers[name][0].pid, number)
        for name, status in (("term", 143), ("int", 130), ("timeout", 1)):
            process, log, (own, other) = workers[name]
            assert _wait_for(lambda: process.poll() is not None, 30), (
                name, log.read_text()[-3000:])
            lines = log.read_text().strip().splitlines()
            assert process.returncode == status, (name, lines)
            assert sum("Waiting for" in line for line in lines) == 1
            assert not (tmp_path / name).exists()
        for name, signal_name in (("term", "SIGTERM"), ("int", "SIGINT")):
            assert workers[name][1].read_text().strip().splitlines()[-1] == (
                f"Stopped while waiting for the other workers "
                f"({signal_name} received); nothing was trained or written")
        other = workers["timeout"][2][1]
        assert workers["timeout"][1].read_text().strip().splitlines()[-1] == (
            f"Error: No answer from worker 1 ({other}) of TF_CONFIG's "
            f"cluster within --worker_wait_seconds=3: start every worker "
            f"with the same cluster, or raise --worker_wait_seconds")
    finally:
        for process, _, _ in workers.values():
            _testing.kill(process)
