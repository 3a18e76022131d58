"""The TensorFlow and Keras tf_lamb runs on, checked once on import.

TensorFlow is not among tf_lamb's pip requirements (it comes as
`tensorflow`, `tensorflow-cpu`, `tensorflow-tpu` or a vendor build), so its
absence and its version are checked here, with a message that says what to
install, before anything else of tf_lamb imports it.
"""

import re

try:
    import tensorflow as tf
except ModuleNotFoundError as error:
    if error.name != "tensorflow":
        raise  # TensorFlow is there but broken: its own error says why
    raise ImportError(
        "tf_lamb needs TensorFlow, which is not installed: pip install "
        "'tf_lamb[tensorflow]', or your platform's build of TensorFlow "
        "(tensorflow-tpu, tensorflow-cpu, a vendor's).") from None

import keras  # noqa: E402  (after the check: Keras imports TensorFlow too)

# The oldest releases tested (setup.cfg, .ci/oldest).
OLDEST = {"tensorflow": (2, 16), "keras": (3, 10)}


def major_minor(version):
    """(major, minor) of a version string such as "2.22.0-dev20270101"."""
    return tuple(int(n) for n in re.findall(r"\d+", version)[:2])


def check_versions(tensorflow_version, keras_version):
    """Raises ImportError outside the tested range.

    pip cannot enforce it: TensorFlow is not a requirement, and `--no-deps`
    skips Keras' bound. Before Keras 3.10 the iteration counter was advanced
    in the hook Lamb replaces: bias correction would stay at t=1.
    """
    for name, version in (("tensorflow", tensorflow_version),
                          ("keras", keras_version)):
        oldest = OLDEST[name]
        if major_minor(version) < oldest:
            raise ImportError(
                f"tf_lamb needs {name}>={oldest[0]}.{oldest[1]}; found "
                f"{name} {version}")


check_versions(tf.__version__, keras.__version__)
