"""The same config and seed give the same files and weights in two separate
processes: vocab.txt and the TFRecords byte for byte, the checkpoint
tensor for tensor. (In one process, state left behind by the first run
could hide a difference; across processes, hash seeds and thread schedules
differ, which is what broke this before.)"""

import os
import subprocess

import numpy as np
import tensorflow as tf

from tests.support import train_testing as _testing

TINY_RUN = ["--num_train_steps=3", "--save_checkpoints_steps=3",
            "--max_seq_length=32", "--max_predictions_per_seq=5",
            "--train_batch_size=8", "--warmup_steps=1", "--shuffle_buffer=100",
            "--vocab_size=500", "--dupe_factor=1", "--export_dir=none",
            "--seed=5"]


def _run_both(commands, logs, envs, timeout=600):
    """Runs the commands at once; returns their exit codes (None if one was
    still running after `timeout` seconds and was killed)."""
    processes = []
    try:
        for command, log, env in zip(commands, logs, envs):
            processes.append(_testing.start(command, log, **env))
        codes = []
        for process in processes:
            try:
                codes.append(process.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes
    finally:
        for process in processes:
            _testing.kill(process)


def _tensors(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()}


def test_two_processes_give_identical_data_and_checkpoints(tmp_path):
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 150)
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    logs = [str(tmp_path / "a.log"), str(tmp_path / "b.log")]
    commands = [["-m", "train.pretrain", f"--model_dir={d}",
                 f"--input_file={text}"] + TINY_RUN for d in dirs]
    # Different Python hash seeds, as two unrelated processes get.
    codes = _run_both(commands, logs, [{"PYTHONHASHSEED": "1"},
                                       {"PYTHONHASHSEED": "2"}])
    for code, log in zip(codes, logs):
        assert code == 0, open(log).read()[-3000:]
    for name in ("vocab.txt", os.path.join("data", "vocab.txt"),
                 os.path.join("data", "phase1.tfrecord")):
        first, second = (open(os.path.join(d, name), "rb").read()
                         for d in dirs)
        assert len(first) > 1000 and first == second, name
    first, second = (_tensors(d) for d in dirs)
    assert sorted(first) == sorted(second)
    assert any("kernel" in name for name in first)
    for name, value in first.items():
        assert np.array_equal(value, second[name]), name


def test_create_pretraining_data_is_reproducible_across_processes(tmp_path):
    """The data binary, several output files: each byte the same."""
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 150)
    outputs = [tmp_path / "a", tmp_path / "b"]
    commands = [["-m", "train.create_pretraining_data",
                 f"--input_file={text}",
                 f"--output_file={out}/x.tfrecord,{out}/y.tfrecord",
                 "--max_seq_length=32", "--max_predictions_per_seq=5",
                 "--vocab_size=400", "--dupe_factor=2", "--random_seed=3"]
                for out in outputs]
    logs = [str(tmp_path / "a.log"), str(tmp_path / "b.log")]
    codes = _run_both(commands, logs, [{"PYTHONHASHSEED": "3"},
                                       {"PYTHONHASHSEED": "4"}])
    for code, log in zip(codes, logs):
        assert code == 0, open(log).read()[-3000:]
    for name in ("vocab.txt", "x.tfrecord", "y.tfrecord"):
        first, second = ((out / name).read_bytes() for out in outputs)
        assert len(first) > 1000 and first == second, name
    # A different seed gives other examples from the same vocabulary.
    other = tmp_path / "c"
    result = _testing.run(
        commands[0][:3] + [f"--output_file={other}/x.tfrecord,"
                           f"{other}/y.tfrecord",
                           "--max_seq_length=32",
                           "--max_predictions_per_seq=5", "--vocab_size=400",
                           "--dupe_factor=2", "--random_seed=4"],
        timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (other / "vocab.txt").read_bytes() == (
        outputs[0] / "vocab.txt").read_bytes()
    assert (other / "x.tfrecord").read_bytes() != (
        outputs[0] / "x.tfrecord").read_bytes()
