"""The Bazel binaries start: `<binary> --help` works from the runfiles alone,
so each binary's deps bring every module it imports at start-up.

Runs under `bazel test //tests:test_bazel_binaries` only (the binaries are
its data); plain pytest skips it.
"""

import os
import subprocess

import pytest

# Binary target (its runfiles path) -> the module it runs.
BINARIES = {
    "train/pretrain": "train.pretrain",
    "train/create_pretraining_data": "train.create_pretraining_data",
    "benchmarks/optimizer_step": "benchmarks.optimizer_step",
    "benchmarks/train_step": "benchmarks.train_step",
}

pytestmark = pytest.mark.skipif(
    "TEST_SRCDIR" not in os.environ, reason="runs under bazel test")


@pytest.mark.parametrize("binary", sorted(BINARIES))
def test_help(binary):
    root = os.path.join(os.environ.get("TEST_SRCDIR", ""),
                        os.environ.get("TEST_WORKSPACE", ""))
    source = os.path.join(root, *BINARIES[binary].split(".")) + ".py"
    if not os.path.exists(source):
        pytest.skip(f"{BINARIES[binary]} is not written yet")
    completed = subprocess.run(
        [os.path.join(root, binary), "--help"], capture_output=True,
        text=True, timeout=240)
    output = completed.stdout + completed.stderr
    # argparse exits 0 after --help, absl's app.run 1.
    assert completed.returncode in (0, 1), output
    assert "Traceback" not in output, output
    assert "usage" in output.lower() or "flags:" in output, output
