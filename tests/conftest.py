import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPUs, so MirroredStrategy has two replicas on this machine.
# This must happen before TensorFlow initialises its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


import pytest  # noqa: E402

# The test files that take longest (minutes each, measured with
# `--durations=80` under `./dev.sh test`), longest first. dev.sh hands whole
# files to its two pytest-xdist workers in collection order
# (--no-loadscope-reorder): started first, a file of several minutes cannot
# be the one a worker is still running after the other has finished.
# Files not named here follow in their usual order.
LONGEST_FILES = (
    "test_train_compile_plan.py", "test_train_pretrain.py",
    "test_benchmarks_batch_scaling.py", "test_train_loop.py",
    "test_train_preemption.py", "test_benchmarks.py", "test_train_paths.py",
    "test_train_export_huggingface.py", "test_train_data_order.py",
    "test_train_distributed.py", "test_train_errors.py",
    "test_train_continue.py", "test_benchmarks_finetune.py",
    "test_train_failures.py", "test_benchmarks_hlo.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    # A stable sort: each file's tests stay together and in their order.
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

# The forms of tf_lamb's step (tf_lamb.compiled.FORMS) by the kind of device
# it runs on, all run here on the CPU. "gpu_split" is the GPU's form with
# thresholds lowered so that tiny variables take the path of large ones
# (partial sums) as well as that of small ones (stacks).
DEVICE_KINDS = ("cpu", "gpu", "gpu_split", "tpu")


@pytest.fixture(params=DEVICE_KINDS)
def device_kind(request, monkeypatch):
    """The test's optimizer steps take the form of this kind of device."""
    # Each constant and function is set in the module of tf_lamb.compiled
    # that reads it.
    from tf_lamb.compiled import forms, grouped
    kind = request.param
    if kind == "gpu_split":
        kind = "gpu"
        monkeypatch.setattr(grouped, "SMALL_VARIABLE_ELEMENTS", 8)
        monkeypatch.setattr(grouped, "PARTIAL_SUMS", 4)
    monkeypatch.setattr(forms, "device_kind", lambda device: kind)
    return request.param
