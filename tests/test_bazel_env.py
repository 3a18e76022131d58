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


# What each test file may import from the project, by the rule of
# tests/BUILD's _DEPS (and what //train and //benchmarks depend on). CI runs
# only the Bazel-specific tests under Bazel (.ci/bazel), so this is what
# keeps a test file's imports inside the deps its target gets.
_REACHABLE = {
    "test_train": {"tf_lamb", "train", "tests"},
    "test_benchmarks": {"tf_lamb", "train", "benchmarks", "tests"},
    "test_": {"tf_lamb", "tests"},
}
_PROJECT = {"tf_lamb", "train", "benchmarks", "tests"}


def _imported_packages(path, seen):
    """The project's top-level packages that `path` imports, directly or
    through the test helpers (tests.support, tests.references) it imports,
    at any depth of the module and of its functions."""
    import ast
    tree = ast.parse(open(path).read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}"
                                     for alias in node.names]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in _PROJECT:
                continue
            found.add(top)
            helper = os.path.join(os.path.dirname(os.path.dirname(path)),
                                  *name.split(".")) + ".py"
            if (top == "tests" and os.path.isfile(helper)
                    and helper not in seen):
                seen.add(helper)
                found |= _imported_packages(helper, seen)
    return found


@pytest.mark.skipif(UNDER_BAZEL, reason="reads every test file of the "
                    "checkout; a target's runfiles hold only its own")
def test_test_files_import_only_what_their_bazel_target_depends_on():
    here = os.path.dirname(os.path.abspath(__file__))
    checked = 0
    for name in sorted(os.listdir(here)):
        if not (name.startswith("test_") and name.endswith(".py")):
            continue
        prefix = next(p for p in _REACHABLE if name.startswith(p))
        path = os.path.join(here, name)
        imported = _imported_packages(path, {path})
        assert imported <= _REACHABLE[prefix], (
            f"{name} imports {sorted(imported - _REACHABLE[prefix])}, which "
            f"its target in tests/BUILD does not depend on")
        checked += 1
    assert checked > 40
