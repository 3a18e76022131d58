"""How the tests run: the project's virtual environment, and, under
`bazel test`, only the code that the target's deps bring."""

import importlib.util
import os
import sys

import pytest

import tf_lamb

UNDER_BAZEL = "TEST_SRCDIR" in os.environ
bazel_only = pytest.mark.skipif(not UNDER_BAZEL, reason="runs under bazel test")


def test_runs_in_the_project_virtual_environment():
    # dev.sh and Bazel's toolchain (tools/bazel/venv.bzl) both use .venv.
    assert sys.prefix != sys.base_prefix, sys.executable
    assert os.path.isfile(os.path.join(sys.prefix, "pyvenv.cfg"))
    assert importlib.util.find_spec("tensorflow") is not None
    assert importlib.util.find_spec("keras") is not None


@bazel_only
def test_tf_lamb_comes_from_the_runfiles():
    runfiles = os.path.abspath(os.environ["TEST_SRCDIR"])
    assert os.path.abspath(tf_lamb.__file__).startswith(runfiles + os.sep)


@bazel_only
def test_packages_outside_deps_are_not_importable():
    # tests/BUILD gives this file //tf_lamb only; the venv's editable install
    # of the project must not make up for a missing dependency edge.
    assert importlib.util.find_spec("train") is None
    assert importlib.util.find_spec("benchmarks") is None
