"""Makes a Bazel-built program import the project only from its runfiles.

`./dev.sh setup` pip-installs the project into `.venv` in editable mode, and
Bazel's Python toolchain here is that venv's interpreter (see venv.bzl). The
editable install adds an import hook that finds `tf_lamb`, `train` and
`benchmarks` in the source tree, so a target whose `deps` forgot one of them
would still import it. `isolate()` removes that hook: a missing dependency edge
then fails under Bazel just as it would for anyone using the built target.
"""

import importlib
import sys

_EDITABLE_PREFIX = "__editable__"


def _from_editable_install(obj):
    return str(getattr(obj, "__module__", "")).startswith(_EDITABLE_PREFIX)


def isolate():
    """Drops setuptools' editable-install finders from the import system."""
    sys.meta_path[:] = [f for f in sys.meta_path if not _from_editable_install(f)]
    sys.path_hooks[:] = [h for h in sys.path_hooks if not _from_editable_install(h)]
    sys.path[:] = [p for p in sys.path if not str(p).startswith(_EDITABLE_PREFIX)]
    sys.path_importer_cache.clear()
    importlib.invalidate_caches()
