"""Smoke tests of the benchmarks: tiny shapes, two steps, the JSON's keys.

Speed is never asserted, only that the figures exist and are sane.
"""

import json
import math
import os
import subprocess
import sys

import pytest

from benchmarks import (example_creation, loopback_bytes, optimizer_step,
                        startup, train_step)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _positive(value):
    return (isinstance(value, (int, float)) and math.isfinite(value)
            and value > 0)


def _check_optimizer_step(result):
    for key in ("parameters", "floor_s", "bandwidth_gb_per_s",
                "tf_lamb_median_s", "tf_lamb_min_s", "baseline_median_s",
                "speedup_vs_keras", "ratio_to_floor"):
        assert _positive(result[key]), (key, result.get(key))
    assert result["parameters"] == optimizer_step.parameter_count(
        optimizer_step.bert_shapes(**optimizer_step.MODELS["tiny"]))
    assert result["tf_lamb"] in optimizer_step.TF_LAMB
    assert result["baseline"] in optimizer_step.KERAS_LAMB
    for name, candidate in result["candidates"].items():
        assert candidate["finite"], name
        assert _positive(candidate["median_s"]), name
        assert _positive(candidate["min_s"]), name
        assert candidate["min_s"] <= candidate["median_s"]
        assert len(candidate["times_s"]) == result["steps"] * result["rounds"]
        assert isinstance(candidate["rss_added_bytes"], int)
    json.dumps(result)  # the JSON line is valid


def test_bert_shapes_parameter_counts():
    count = lambda m: optimizer_step.parameter_count(  # noqa: E731
        optimizer_step.bert_shapes(**optimizer_step.MODELS[m]))
    assert 109e6 < count("base") < 111e6
    assert 334e6 < count("large") < 337e6


def test_optimizer_step_times_accumulation_cycles():
    result = optimizer_step.main([
        "--model=tiny", "--steps=2", "--warmup=1", "--isolation=none",
        "--gradient_accumulation_steps=3",
        "--candidates=tf_lamb_function,keras_lamb_xla",
        "--bandwidth_mb=8", "--bandwidth_repeats=2"])
    _check_optimizer_step(result)
    assert result["gradient_accumulation_steps"] == 3
    # Two accumulating calls (g, a -> a) and one update that also reads a.
    assert result["floor_bytes_per_param"] == 2 * 12 + 28 + 4


def test_optimizer_step_in_process(tmp_path):
    out = tmp_path / "result.json"
    result = optimizer_step.main([
        "--model=tiny", "--steps=2", "--warmup=1", "--isolation=none",
        "--rounds=2",
        "--bandwidth_mb=8", "--bandwidth_repeats=2", f"--json_out={out}"])
    _check_optimizer_step(result)
    assert set(result["candidates"]) == set(optimizer_step.DEFAULT_CANDIDATES)
    assert json.loads(out.read_text()) == json.loads(json.dumps(
        result, sort_keys=True))


def test_optimizer_step_command_line(tmp_path):
    """The real thing: one subprocess per candidate, JSON on stdout."""
    out = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.optimizer_step", "--model=tiny",
         "--steps=2", "--warmup=1", "--bandwidth_mb=8",
         "--bandwidth_repeats=2",
         "--candidates=tf_lamb_eager,tf_lamb_graph,keras_lamb_function",
         f"--json_out={out}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    printed = json.loads(completed.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    _check_optimizer_step(printed)
    # The headline compares the default (XLA) configurations.
    assert printed["tf_lamb"] == "tf_lamb_eager"
    assert set(printed["candidates"]) == {"tf_lamb_eager", "tf_lamb_graph",
                                          "keras_lamb_function"}
    peak = printed["tf_lamb_peak_rss_added_bytes"]
    assert peak is None or peak > 0


def test_train_step_in_process():
    result = train_step.main([
        "--layers=1", "--hidden=32", "--heads=2", "--vocab=100",
        "--seq_len=16", "--batch=2", "--steps=2", "--warmup=1",
        "--isolation=none"])
    for key in ("fwd_bwd_s", "tf_lamb_step_s", "keras_lamb_step_s",
                "step_speedup_vs_keras"):
        assert _positive(result[key]), (key, result.get(key))
    for key in ("tf_lamb_optimizer_fraction",
                "keras_lamb_optimizer_fraction"):
        assert math.isfinite(result[key]) and result[key] < 1.0
    assert set(result["candidates"]) == set(train_step.CANDIDATES)
    for name, candidate in result["candidates"].items():
        assert candidate["finite"], name
        assert _positive(candidate["median_s"]), name
    # Same seed and data: the optimizers start from the same loss.
    losses = {c["first_loss"] for c in result["candidates"].values()}
    assert len(losses) == 1
    json.dumps(result)


def test_startup_times_check_files_on_shards(tmp_path):
    result = startup.main(["--shards=3", "--records=5", "--seq_len=16",
                           "--predictions=3", "--repeats=2",
                           f"--dir={tmp_path}"])
    assert result["shards"] == 3 and len(result["check_files_s"]) == 2
    assert all(_positive(t) for t in result["check_files_s"])
    assert result["min_s"] <= result["median_s"]
    assert result["shard_bytes"] == os.path.getsize(
        tmp_path / "shard-00002.tfrecord")
    json.dumps(result)


@pytest.mark.parametrize("argv", [["--steps=0"], ["--candidates=sgd"],
                                  ["--model=huge"]])
def test_optimizer_step_bad_flags(argv):
    with pytest.raises(SystemExit):
        optimizer_step.parse_args(argv)


def test_resume_benchmark_in_process(tmp_path):
    """benchmarks.resume on a few default-corpus documents: a row per
    resume point (each checked by the benchmark to start at the position
    asked for) and the replay, with ratios to the first."""
    from benchmarks import resume
    out = tmp_path / "resume.json"
    result = resume.main([
        "--max_documents=60", "--dupe_factor=1", "--vocab_size=600",
        "--updates=0,50,5000", "--batch=8", "--shuffle_buffer=20",
        "--replay_updates=20", "--repeats=1", f"--data_dir={tmp_path}",
        f"--json_out={out}"])
    assert [(r["updates"], r["mode"]) for r in result["rows"]] == [
        (0, "position"), (50, "position"), (5000, "position"),
        (20, "replay")]
    # 5000 updates of 8 go round the data many times.
    assert result["records"] < 5000 * 8
    for row in result["rows"]:
        assert _positive(row["seconds"]) and _positive(row["ratio_to_first"])
    assert result["rows"][0]["ratio_to_first"] == 1.0
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))


def test_loopback_bytes_counts_what_crosses_127_0_0_1():
    """The counter benchmarks.loopback_bytes reads grows by at least what
    a socket pair on 127.0.0.1 exchanges."""
    import socket
    import threading
    payload = b"x" * (4 << 20)
    received = []
    server = socket.create_server(("127.0.0.1", 0))

    def receive():
        peer, _ = server.accept()
        with peer:
            while chunk := peer.recv(1 << 16):
                received.append(len(chunk))

    before = loopback_bytes.loopback_bytes()
    with server:
        receiver = threading.Thread(target=receive)
        receiver.start()
        with socket.create_connection(server.getsockname()) as client:
            client.sendall(payload)
        receiver.join(timeout=60)
    assert sum(received) == len(payload)
    assert loopback_bytes.loopback_bytes() - before >= len(payload)


def test_example_creation_repeats_whole_documents_and_reads_memory(
        tmp_path):
    """The benchmark's text is whole documents of the corpus, repeated to
    the size asked for; the memory of a process tree is read from /proc
    (this process's own, at least what it holds in a fresh 20 MB)."""
    text = "One sentence here.\nAnother one.\n\nA second document.\n\n"
    path = str(tmp_path / "t.txt")
    size = example_creation.repeat_corpus(path, 0.001, text)
    data = open(path).read()
    assert 1000 - len(text) < size <= 1000 + len(text)
    assert data.endswith("\n\n") and data.count(text) >= 1000 // len(text)
    held = bytearray(20 * 10 ** 6)
    held[::4096] = b"x" * len(held[::4096])
    assert example_creation.tree_rss(os.getpid()) > 20e6
