"""Runs where users keep them: a bucket and relative paths.

`ram://` is TensorFlow's in-process file system, reached only through
`tf.io.gfile` and the ops that use it: a run whose every path is `ram://`
proves that nothing goes through Python's `open()` or `os.path`, as a
`gs://` run needs. It differs from Cloud Storage in two ways (shared/
README.md): a string prefix of a file counts as a directory, and opening a
file that exists for writing appends. The code is written to be right on
both (one write to a new name then a rename, a checkpoint found through
its `.index` file, files removed before they are rewritten); the fixture
is TensorFlow's ram:// as it is.
"""

import json
import os
import re
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing
from train.interop import exports
from train.runtime import paths
from train.runtime.errors import CheckpointError

SMALL = ["--max_seq_length=32", "--max_predictions_per_seq=5",
         "--train_batch_size=8", "--warmup_steps=1", "--shuffle_buffer=100",
         "--learning_rate=1e-2", "--dupe_factor=1", "--vocab_size=400",
         "--log_steps=2", "--save_checkpoints_steps=2"]


def _bucket():
    """A fresh ram:// folder: the stand-in for gs://bucket/run."""
    return f"ram://bucket-{uuid.uuid4().hex[:8]}"


def _listing(root):
    """Every file under `root`, relative to it."""
    found = set()
    for directory, _, files in tf.io.gfile.walk(root):
        for name in files:
            found.add(os.path.relpath(os.path.join(directory, name), root))
    return found


@pytest.fixture(scope="module")
def bucket_run(tmp_path_factory):
    """The command line (in this process, ram:// lives in one process)
    with its text, held-out records and model_dir all on ram://; the
    working directory is an empty local folder, which must stay empty."""
    cwd = tmp_path_factory.mktemp("cwd")
    local = tmp_path_factory.mktemp("local")
    bucket = _bucket()
    text = f"{bucket}/text/corpus.txt"
    tf.io.gfile.makedirs(f"{bucket}/text")
    train_testing.write_small_corpus(text, max_documents=150)
    # Held-out records of another text, made with the run's vocabulary
    # after the first run (the vocabulary is learnt by it).
    argv = [f"--input_file={text}", f"--model_dir={bucket}/run",
            "--num_train_steps=4"] + SMALL
    old_cwd = os.getcwd()
    os.chdir(cwd)
    try:
        first = train_testing.run_flags(argv)
        eval_text = str(local / "eval.txt")
        train_testing.write_small_corpus(eval_text, max_documents=40)
        eval_files, _ = _records_on_ram(bucket, eval_text,
                                        f"{bucket}/run/vocab.txt")
        second = train_testing.run_flags(
            argv[:2] + ["--num_train_steps=6", "--mode=train_and_eval",
                        f"--vocab_file={bucket}/run/vocab.txt",
                        f"--eval_files={eval_files[0]}",
                        "--eval_every_steps=2", "--eval_batch_size=8"]
            + SMALL)
        left_in_cwd = sorted(os.listdir(cwd))
    finally:
        os.chdir(old_cwd)
    return {"bucket": bucket, "run": f"{bucket}/run", "first": first,
            "second": second, "eval_files": eval_files, "argv": argv,
            "left_in_cwd": left_in_cwd}


def _records_on_ram(bucket, text, vocab):
    from train import create_pretraining_data as cpd
    documents = cpd.read_documents([text])
    outputs = [f"{bucket}/eval/eval-0.tfrecord"]
    cpd.create_pretraining_data(documents, outputs, vocab_file=vocab,
                                max_seq_length=32, max_predictions=5,
                                dupe_factor=1, seed=3)
    return outputs, vocab


def test_a_run_on_a_bucket_writes_there_and_resumes(bucket_run):
    run = bucket_run["run"]
    assert bucket_run["first"]["step"] == 4
    assert bucket_run["second"]["start_step"] == 4
    assert bucket_run["second"]["step"] == 6
    files = _listing(run)
    for name in ("bert_config.json", "vocab.txt", "flags.txt",
                 "schedule.json", "eval_results.txt", "checkpoint",
                 "ckpt-6.index", "data/metadata.json",
                 "data/phase1.tfrecord", "export/saved_model.pb"):
        assert name in files, (name, sorted(files))
    # By glob: ram:// lists `eval_results.txt` as `_results.txt` in a
    # folder `eval` (its string-prefix directories), and walk misses it.
    assert tf.io.gfile.glob(f"{run}/train/events.out.tfevents.*")
    assert tf.io.gfile.glob(f"{run}/eval/events.out.tfevents.*")
    # Rewritten on resume: whole, not appended to (ram:// appends when a
    # file that exists is opened for writing).
    json.loads(paths.read_text(f"{run}/schedule.json"))
    flags = paths.read_text(f"{run}/flags.txt")
    assert flags.count("--num_train_steps=") == 1
    assert "--num_train_steps=6" in flags
    results = paths.read_text(f"{run}/eval_results.txt")
    assert results.count("global_step = ") == 1
    assert "global_step = 6" in results
    assert not any(".tmp" in name for name in files)
    assert bucket_run["left_in_cwd"] == []


def test_eval_mode_on_a_bucket_equals_the_training_runs_eval(bucket_run):
    run = bucket_run["run"]
    result = train_testing.run_flags(
        [f"--model_dir={run}", "--mode=eval",
         f"--eval_files={bucket_run['eval_files'][0]}",
         "--eval_batch_size=8", "--max_seq_length=32",
         "--max_predictions_per_seq=5"])
    trained = bucket_run["second"]["eval"]
    assert result["eval"]["global_step"] == 6
    np.testing.assert_allclose(result["eval"]["masked_lm_loss"],
                               trained["masked_lm_loss"], rtol=1e-5)


def test_init_checkpoint_and_exports_on_a_bucket(bucket_run):
    run, bucket = bucket_run["run"], bucket_run["bucket"]
    started = train_testing.run_flags(
        [f"--input_file={bucket}/text/corpus.txt",
         f"--model_dir={bucket}/second", f"--init_checkpoint={run}/ckpt-6",
         f"--vocab_file={run}/vocab.txt", f"--bert_config_file="
         f"{run}/bert_config.json", "--num_train_steps=1",
         "--export_dir=none"] + SMALL)
    assert started["step"] == 1
    out = f"{bucket}/exports"
    exports.export_saved_model(run, f"{out}/hub")
    exports.export_google_checkpoint(run, f"{out}/google")
    exports.export_huggingface(run, f"{out}/hf")
    files = _listing(out)
    assert "hub/saved_model.pb" in files
    assert "google/bert_model.ckpt.index" in files
    assert {"hf/config.json", "hf/model.safetensors",
            "hf/vocab.txt"} <= files
    # The Google checkpoint holds the run's weights.
    # The prefix's own reader: on ram:// a prefix also counts as a folder.
    reader = tf.compat.v1.train.NewCheckpointReader
    exported = reader(f"{out}/google/bert_model.ckpt")
    loaded = exports.load_run(run).model
    table = exported.get_tensor("bert/embeddings/word_embeddings")
    same_shape = [v for v in loaded.weights
                  if tuple(v.shape) == table.shape]
    assert len(same_shape) == 1
    np.testing.assert_array_equal(table, same_shape[0].numpy())


def _cli(cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "train.pretrain", *args], cwd=cwd,
        env=train_testing.python_env(), capture_output=True, text=True,
        timeout=600)


def test_cli_twice_with_a_relative_model_dir_resumes(tmp_path):
    train_testing.write_small_corpus(str(tmp_path / "corpus.txt"),
                                     max_documents=120)
    common = ["--model_dir=runs/pretrain", "--input_file=corpus.txt",
              "--export_dir=none"] + SMALL
    first = _cli(tmp_path, "--num_train_steps=2", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = _cli(tmp_path, "--num_train_steps=4", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.search(r"^Resumed from runs/pretrain/ckpt-2$", second.stdout,
                     re.M), second.stdout[-2000:]
    assert re.search(r"^step\s+4/4", second.stdout, re.M)
    assert (tmp_path / "runs" / "pretrain" / "ckpt-4.index").exists()


def test_a_failed_resume_changes_no_file(tmp_path):
    """A run that stops because no checkpoint can be read leaves flags.txt,
    schedule.json and the rest as the run that wrote them left them."""
    train_testing.write_small_corpus(str(tmp_path / "corpus.txt"),
                                     max_documents=120)
    run = tmp_path / "run"
    common = [f"--model_dir={run}", f"--input_file={tmp_path}/corpus.txt",
              "--export_dir=none"] + SMALL
    train_testing.run_flags(["--num_train_steps=2"] + common)
    for index in run.glob("ckpt-*.index"):
        index.write_bytes(b"not a checkpoint index")
    before = {path: path.read_bytes() for path in run.rglob("*")
              if path.is_file()}
    with pytest.raises(CheckpointError, match="can be read"):
        train_testing.run_flags(["--num_train_steps=5",
                                 "--learning_rate=3e-3"] + common)
    after = {path: path.read_bytes() for path in run.rglob("*")
             if path.is_file()}
    assert after == before


def test_the_starting_state_is_a_checkpoint_of_the_run(tmp_path,
                                                      monkeypatch):
    """The divergence guard's starting point is ckpt-0 in model_dir, not a
    copy of the state in the host's temporary directory."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    train_testing.write_small_corpus(str(tmp_path / "corpus.txt"),
                                     max_documents=120)
    run = tmp_path / "run"
    result = train_testing.run_flags(
        [f"--model_dir={run}", f"--input_file={tmp_path}/corpus.txt",
         "--export_dir=none", "--num_train_steps=1",
         "--keep_checkpoint_max=5"] + SMALL)
    assert result["step"] == 1
    assert (run / "ckpt-0.index").exists()
    assert list(scratch.iterdir()) == []
