import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

# Two logical CPUs, so MirroredStrategy has two replicas on this machine.
# This must happen before TensorFlow initialises its devices.
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)


import pytest  # noqa: E402

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
