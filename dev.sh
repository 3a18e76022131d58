#!/usr/bin/env bash
# Set-up and entry points in one place; see README.md.
#   ./dev.sh demo [flags]   default BERT pretraining demo (python -m train.pretrain)
#   ./dev.sh test [args]    the whole test suite (pytest, two processes)
#   ./dev.sh setup          only create/refresh the virtual environment
# The first call creates .venv with Python 3.11 and installs the project into
# it; later calls reuse it and reinstall only when setup.cfg changed. The
# install maps only tf_lamb; train/ and benchmarks/ are found because every
# command here runs from the checkout's root (docs/install.md).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
  fi
  local stamp="$VENV/.tf_lamb-installed"
  local want
  local extras=tensorflow,train,test,hlo,study,mlperf
  want=$( (cat setup.cfg pyproject.toml; echo "$extras hub keras-hub") | sha256sum | cut -d' ' -f1)
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    # pip's download cache (~/.cache/pip) makes reinstalls fast; nothing
    # depends on it being there.
    "$VENV/bin/python" -m pip install --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -e ".[$extras]"
    # For the tests only, not dependencies of tf_lamb: the SavedModel export
    # is fine-tuned through tensorflow_hub.KerasLayer, which needs tf-keras
    # of TensorFlow's minor version (the test skips without them).
    local tf_minor
    tf_minor=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(".".join(m.version("tensorflow").split(".")[:2]))')
    "$VENV/bin/python" -m pip install "tensorflow-hub>=0.16" "tf-keras==$tf_minor.*" ||
      echo "dev.sh: tensorflow-hub/tf-keras not installed; their test will skip" >&2
    # KerasHub loads the Hugging Face export; its text ops need
    # tensorflow-text of TensorFlow's minor version.
    "$VENV/bin/python" -m pip install "keras-hub>=0.20" "tensorflow-text==$tf_minor.*" ||
      echo "dev.sh: keras-hub/tensorflow-text not installed; their tests will skip" >&2
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  setup) setup ;;
  demo) setup; exec "$VENV/bin/python" -m train.pretrain "$@" ;;
  test)
    setup
    # pytest exits 5 when it collects nothing: that is a failure here too.
    # Two processes (pytest-xdist), each test file whole in one of them so
    # that a file's shared runs (module fixtures) are made once: a lone
    # TensorFlow process leaves a core idle while it imports, traces and
    # waits on its subprocesses. Files go out longest first
    # (tests/conftest.py), not largest first. TEST_WORKERS=0 runs in this
    # process.
    exec "$VENV/bin/python" -m pytest -n "${TEST_WORKERS:-2}" --dist loadfile \
      --no-loadscope-reorder "$@" ;;
  *) echo "usage: $0 {demo|test|setup} [args...]" >&2; exit 2 ;;
esac
