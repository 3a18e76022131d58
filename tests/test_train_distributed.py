"""train.pretrain under MirroredStrategy (2 logical CPUs) and
MultiWorkerMirroredStrategy (2 processes on 127.0.0.1), each in its own
processes since devices must be configured before TensorFlow starts."""

import os
import re

import pytest
import tensorflow as tf

from tests.support import train_testing as _testing

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


def test_multi_worker_two_processes(records, tmp_path):
    model_dir = tmp_path / "run"
    args = ["-m", "train.pretrain"] + SMALL + records + [
        "--strategy=multi_worker", f"--model_dir={model_dir}",
        "--num_train_steps=4", "--save_checkpoints_steps=2",
        "--train_batch_size=8"]
    logs = [str(tmp_path / f"worker{index}.log") for index in range(2)]
    codes = _testing.run_workers([args, args], logs, timeout=300)
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
