"""The exported XLA programs (benchmarks.export_hlo) run without TensorFlow
(benchmarks.run_hlo, through jaxlib) and compute what TensorFlow computes.

Each program is checked against TensorFlow's own result of the same step on
the tiny shapes: both the accelerator form of tf_lamb's norms (what a GPU
would run) and the CPU form.
"""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import export_hlo

# jax is the `hlo` extra: it needs NumPy 2, which TensorFlow 2.16 does
# not allow, so the oldest supported environment runs without it.
pytest.importorskip("jax", reason="benchmarks.run_hlo needs the hlo extra "
                    "(pip install -e '.[hlo]')")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600


def _run(module, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=TIMEOUT)


@pytest.fixture(scope="module", params=["gpu", "cpu"])
def exported(request, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f"hlo_{request.param}")
    completed = _run("benchmarks.export_hlo", "--model=tiny", "--values",
                     f"--device_kind={request.param}", f"--out_dir={out_dir}")
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out_dir


def _run_hlo(directory, tmp_path, *args):
    out = tmp_path / "result.json"
    completed = _run("benchmarks.run_hlo", str(directory), "--steps=2",
                     "--warmup=1", "--bandwidth_mb=8",
                     "--bandwidth_repeats=2", f"--json_out={out}", *args)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(out.read_text()), completed.stdout


def test_programs_reproduce_tensorflow(exported, tmp_path):
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["candidates"]) == set(export_hlo.CANDIDATES)
    result, stdout = _run_hlo(exported, tmp_path)
    assert result["parameters"] == manifest["parameters"] == 181864
    assert result["device"]["platform"] == "cpu"
    for name, candidate in result["candidates"].items():
        # One step from TensorFlow's inputs matches TensorFlow's results.
        assert candidate["max_relative_error_vs_tensorflow"] < 1e-5, name
        assert candidate["kernels"] > 0
        assert 0 < candidate["min_s"] <= candidate["median_s"]
        assert len(candidate["times_s"]) == 2
    for key in ("floor_s", "bandwidth_gb_per_s", "speedup_vs_keras",
                "ratio_to_floor"):
        assert result[key] > 0, key
    assert "memory-traffic floor" in stdout


def test_the_check_sees_a_wrong_result(exported, tmp_path):
    """With TensorFlow's results replaced by the inputs (as if the step had
    not run), the comparison reports the difference."""
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    manifest = json.loads((exported / "manifest.json").read_text())
    for name, entry in manifest["candidates"].items():
        (wrong / entry["hlo"]).write_bytes((exported / entry["hlo"])
                                           .read_bytes())
        values = dict(np.load(exported / entry["values"]))
        for key in list(values):
            if key.startswith("after_"):
                values[key] = values["before_" + key[len("after_"):]]
        np.savez(wrong / entry["values"], **values)
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    result, _ = _run_hlo(wrong, tmp_path, "--isolation=none")
    for name, candidate in result["candidates"].items():
        assert candidate["max_relative_error_vs_tensorflow"] > 1e-3, name


def test_bad_input_is_refused_before_anything_is_written(tmp_path):
    out_dir = tmp_path / "never"
    completed = _run("benchmarks.export_hlo", "--model=base", "--values",
                     f"--out_dir={out_dir}")
    assert completed.returncode == 2
    assert "--values" in completed.stderr
    assert not out_dir.exists()

    completed = _run("benchmarks.run_hlo", str(tmp_path))
    assert completed.returncode == 2
    assert "manifest.json" in completed.stderr


def test_profile_reads_device_kernels_from_a_trace(tmp_path):
    from benchmarks import profile_hlo
    # A perfetto trace as jax writes it: metadata names each process; only
    # the device's complete ("X") events are kernels.
    events = [
        {"ph": "M", "name": "process_name", "pid": 1,
         "args": {"name": "/host:CPU"}},
        {"ph": "M", "name": "process_name", "pid": 7,
         "args": {"name": "/device:GPU:0"}},
        {"ph": "X", "pid": 1, "name": "PjitFunction", "ts": 0, "dur": 900},
        {"ph": "X", "pid": 7, "name": "loop_fusion", "ts": 10, "dur": 30},
        {"ph": "X", "pid": 7, "name": "input_reduce_fusion", "ts": 50,
         "dur": 50},
        {"ph": "X", "pid": 7, "name": "loop_fusion", "ts": 400, "dur": 40},
    ]
    path = tmp_path / "perfetto_trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    seconds, kernels = profile_hlo.device_kernel_seconds(str(path), steps=2)
    assert seconds == pytest.approx(120e-6 / 2)
    assert kernels == 1.5
    events = [e for e in events if e.get("pid") != 7]
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    assert profile_hlo.device_kernel_seconds(str(path), 2) == (None, 0)


def test_profile_runs_the_exported_programs(exported, tmp_path):
    out = tmp_path / "profile.json"
    completed = _run("benchmarks.profile_hlo", str(exported), "--steps=2",
                     "--bandwidth_mb=8", f"--json_out={out}")
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads(out.read_text())
    (model,) = result["models"]
    assert set(model["candidates"]) == set(export_hlo.CANDIDATES)
    for candidate in model["candidates"].values():
        assert candidate["call_s"] > 0 and candidate["chained_s"] > 0
        # A CPU has no device kernels in the trace: none is made up.
        assert candidate["kernel_s"] is None
    assert "kernel speed-up vs keras" in completed.stdout
