"""`import tf_lamb` where TensorFlow is missing says what to install.

TensorFlow is not among tf_lamb's pip requirements, so an install without
it is possible (and documented: a machine that gets its own TensorFlow
later). The environment here is real: Python started with -S does not see
site-packages; a directory on its path links every package of this one
except TensorFlow's (Keras and its dependencies are there, as after
`pip install tf_lamb`), so TensorFlow's import fails in the import system
itself, as in a fresh venv.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def site_without_tensorflow(tmp_path_factory):
    keras_init = importlib.util.find_spec("keras").origin
    site = os.path.dirname(os.path.dirname(keras_init))
    links = tmp_path_factory.mktemp("site_without_tensorflow")
    for name in os.listdir(site):
        if not name.startswith(("tensorflow", "tf_lamb", "__editable__")):
            os.symlink(os.path.join(site, name), links / name)
    return str(links)


def _import_tf_lamb(*python_path):
    # The checkout first: this tf_lamb, not an installed one.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join((ROOT,) + python_path))
    return subprocess.run([sys.executable, "-S", "-c", "import tf_lamb"],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def test_without_tensorflow_one_import_error_names_what_to_install(
        site_without_tensorflow):
    completed = _import_tf_lamb(site_without_tensorflow)
    assert completed.returncode != 0
    lines = completed.stderr.strip().splitlines()
    assert lines[-1].startswith("ImportError: tf_lamb needs TensorFlow"), (
        completed.stderr)
    for install in ("pip install 'tf_lamb[tensorflow]'", "tensorflow-tpu",
                    "tensorflow-cpu"):
        assert install in lines[-1]
    # One error, raised by tf_lamb: no chained ModuleNotFoundError, no
    # frames from inside Keras.
    assert "ModuleNotFoundError" not in completed.stderr
    assert "keras" not in completed.stderr.replace("tf_lamb", "")
    assert len(lines) < 10, completed.stderr


def test_a_broken_tensorflow_keeps_its_own_error(tmp_path,
                                                site_without_tensorflow):
    """TensorFlow that is there but misses a dependency of its own is not
    reported as missing."""
    package = tmp_path / "tensorflow"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import a_dependency_that_is_not_installed\n")
    completed = _import_tf_lamb(str(tmp_path), site_without_tensorflow)
    assert completed.returncode != 0
    last = completed.stderr.strip().splitlines()[-1]
    assert last == ("ModuleNotFoundError: No module named "
                    "'a_dependency_that_is_not_installed'"), completed.stderr
