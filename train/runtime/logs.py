"""Quiet TensorFlow logs for the command-line programs.

TensorFlow prints INFO lines of its own (C++ notices about oneDNN, CUDA and
CPU instructions; Python notes on saving) that drown a program's output.
`quiet_tensorflow()`, which each program calls before TensorFlow is
imported, hides them unless they are asked for: absl's `--verbosity` (`-v`)
of 0 or more, or `TF_CPP_MIN_LOG_LEVEL=0` in the environment. Warnings and
errors still show. Nothing here changes what TensorFlow computes
(`TF_ENABLE_ONEDNN_OPTS` is left alone: only the notice goes).
"""

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import sys
import tempfile

from absl import logging as absl_logging

# TensorFlow's C++ log level: 1 hides INFO and keeps warnings and errors.
_CPP_LEVEL = "1"
# An INFO line of absl's C++ log: "I<mmdd> <time> <thread> <file>:<line>] ".
# (Before absl's InitializeLog, the seconds count from the epoch.)
_CPP_INFO = re.compile(r"I\d{4} \d\d:\d\d:\d+\.\d+ +\d+ \S+:\d+\] ")
# absl's note before its first line when nothing called InitializeLog.
_PRE_INIT = "WARNING: All log messages before absl::InitializeLog()"
# TensorFlow found no CUDA driver, so its failed cuInit is expected: on a
# machine without a GPU this line is no error.
_NO_DRIVER = "Could not find cuda drivers on your machine"
_CUINIT = re.compile(r"E\d{4} .*failed call to cuInit")
# Packages whose Python INFO lines are hidden: TensorFlow's code logs through
# absl's logger as well as through its own ("tensorflow").
_LIBRARIES = ("tensorflow", "keras", "tf_keras", "tensorboard")


def asked_verbosity(argv):
    """The value of absl's --verbosity (--v, -v) in `argv`, or None."""
    value = None
    names = ("--verbosity", "--v", "-v", "-verbosity")
    for i, arg in enumerate(argv[1:], 1):
        if arg == "--":
            break
        name, equals, text = arg.partition("=")
        if name not in names:
            continue
        if not equals:
            text = argv[i + 1] if i + 1 < len(argv) else ""
        try:
            value = int(text)
        except ValueError:
            pass  # absl's flag parser reports it
    return value


def tensorflow_info_wanted(argv, environ):
    verbosity = asked_verbosity(argv)
    return ((verbosity is not None and verbosity >= 0)
            or environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip() == "0")


def quiet_tensorflow(argv=None, environ=None):
    """Hides TensorFlow's INFO output in this process unless `argv` or
    `environ` ask for it (see the module's docstring). Returns whether it
    hid it. Call it before anything imports TensorFlow: its C++ log level
    is read once, when it loads."""
    argv = sys.argv if argv is None else argv
    environ = os.environ if environ is None else environ
    if tensorflow_info_wanted(argv, environ):
        return False
    # A level the user set is kept.
    environ.setdefault("TF_CPP_MIN_LOG_LEVEL", _CPP_LEVEL)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)
    absl_logging.get_absl_logger().addFilter(
        _LibraryInfoFilter(_library_dirs()))
    if "tensorflow" not in sys.modules:
        # Some notices are printed as TensorFlow loads and finds its devices,
        # before its log level applies: they are taken out of stderr.
        with _stderr_without_info():
            tf = importlib.import_module("tensorflow")
            tf.config.list_physical_devices()
    return True


class _LibraryInfoFilter(logging.Filter):
    """Drops INFO (and DEBUG) records logged from code under `dirs`."""

    def __init__(self, dirs):
        super().__init__()
        self.dirs = dirs

    def filter(self, record):
        return record.levelno > logging.INFO or not (
            os.path.realpath(record.pathname).startswith(self.dirs))


def _library_dirs():
    """The package directories of _LIBRARIES, found without importing."""
    dirs = []
    for name in _LIBRARIES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            dirs += [os.path.join(os.path.realpath(d), "")
                     for d in spec.submodule_search_locations]
    return tuple(dirs)


def drop_info_lines(text):
    """`text` (stderr output) without absl's C++ INFO lines, its note on
    InitializeLog and an expected cuInit failure."""
    no_driver = _NO_DRIVER in text
    return "".join(
        line for line in text.splitlines(keepends=True)
        if not (_CPP_INFO.match(line) or line.startswith(_PRE_INIT)
                or (no_driver and _CUINIT.match(line))))


@contextlib.contextmanager
def _stderr_without_info():
    """Collects what is written to file descriptor 2 in the block and
    writes it back, INFO lines left out, when the block ends."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
            sys.stderr.write(drop_info_lines(text))
            sys.stderr.flush()
