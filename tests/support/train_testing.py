"""Helpers shared by the tests of the train package (tests/test_train*.py).

Subprocesses get the repository root on PYTHONPATH (python_env), so that
they import `train` and `tests.*` as the tests do."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

from train import create_pretraining_data as cpd
from train.data import corpus

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def encoder_inputs(vocab_size, batch=3, length=12, seed=0):
    """(input_word_ids, input_mask, input_type_ids) as int32 arrays: random
    ids, the second row padded from the middle, a second segment from a
    third of the way in."""
    import numpy as np
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, vocab_size, (batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, length // 2:] = 0
    ids[1, length // 2:] = 0
    types = np.zeros_like(ids)
    types[:, length // 3:] = 1
    return ids, mask, types


def write_small_corpus(path, max_documents=300):
    """The first documents of the default corpus as a text file."""
    corpus.write_text_corpus(corpus.stdlib_documents(max_documents), path)
    return path


def make_records(directory, seq_length=32, predictions=5, vocab_file=None,
                 name="train", shards=2, max_documents=300, dupe_factor=2,
                 vocab_size=600):
    """Small TFRecords (and a learnt vocab.txt) in `directory`; returns
    (list of TFRecord files, vocab file)."""
    os.makedirs(directory, exist_ok=True)
    text = write_small_corpus(os.path.join(directory, "corpus.txt"),
                              max_documents)
    documents = cpd.read_documents([text])
    outputs = [os.path.join(directory, f"{name}-{i}.tfrecord")
               for i in range(shards)]
    vocab, _ = cpd.create_pretraining_data(
        documents, outputs, vocab_file=vocab_file,
        output_vocab_file=os.path.join(directory, "vocab.txt"),
        max_seq_length=seq_length, max_predictions=predictions,
        dupe_factor=dupe_factor, vocab_size=vocab_size, seed=7)
    return outputs, vocab


def one_shard(directory, seq_length, predictions):
    """One TFRecord shard of the first 120 documents: a dict of its file,
    vocabulary, serialized records and vocabulary size."""
    import tensorflow as tf
    files, vocab = make_records(directory, seq_length, predictions,
                                shards=1, max_documents=120, dupe_factor=1)
    with open(vocab, encoding="utf-8") as fh:
        vocab_size = len(fh.read().split("\n")) - 1
    return {"file": files[0], "vocab": vocab, "vocab_size": vocab_size,
            "serialized": [r.numpy() for r in
                           tf.data.TFRecordDataset(files)]}


# A BERT small enough for end-to-end runs of a few updates.
SMALL_BERT_CONFIG = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 64, "type_vocab_size": 2,
    "initializer_range": 0.02}


def small_run_files(root, eval_documents=None):
    """Records of the first 120 documents (32 tokens, 5 predictions), their
    vocabulary and a bert_config.json of SMALL_BERT_CONFIG for it, under
    the pathlib folder `root`; with `eval_documents`, also held-out records
    of the first that many documents. Returns a dict: files, vocab,
    vocab_size, bert_config_file, eval_files (or None)."""
    files, vocab = make_records(str(root / "train"), max_documents=120,
                                dupe_factor=1)
    eval_files = None
    if eval_documents:
        eval_files, _ = make_records(
            str(root / "eval"), vocab_file=vocab, name="eval", shards=1,
            max_documents=eval_documents, dupe_factor=1)
    with open(vocab) as f:
        vocab_size = len(f.read().splitlines())
    config_path = root / "bert_config.json"
    config_path.write_text(json.dumps(dict(SMALL_BERT_CONFIG,
                                           vocab_size=vocab_size)))
    return {"files": files, "vocab": vocab, "vocab_size": vocab_size,
            "bert_config_file": str(config_path), "eval_files": eval_files}


def record_flags(directory, max_documents=150):
    """--train_files and --vocab_file of small records made in `directory`
    (32 tokens, 5 predictions, one pass over the documents)."""
    files, vocab = make_records(directory, max_documents=max_documents,
                                dupe_factor=1)
    return [f"--train_files={','.join(files)}", f"--vocab_file={vocab}"]


def free_ports(count):
    """Ports free on 127.0.0.1 right now (kept open until all are found)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def python_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def start(args, log_path, **env):
    """Starts `python args...` in the repository root, output to a file."""
    log = open(log_path, "w")
    return subprocess.Popen([sys.executable] + list(args), cwd=REPO_ROOT,
                            env=python_env(**env), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def kill(process):
    """SIGKILL for a process started by `start`, if still running."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    process.wait()


def run(args, timeout=120, **env):
    """Runs `python args...`; returns the CompletedProcess."""
    return subprocess.run([sys.executable] + list(args), cwd=REPO_ROOT,
                          env=python_env(**env), capture_output=True,
                          text=True, timeout=timeout)


def run_flags(argv):
    """Parses `argv` (train.pretrain's flags, no program name) afresh and
    runs them in this process as the command line would."""
    from absl import flags
    from train import pretrain
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["pretrain"] + list(argv))
    return pretrain.run_from_flags(flags.FLAGS)


def parse_flags(argv):
    """train.pretrain's flags parsed afresh from `argv` (no program name)."""
    from absl import flags
    from train import pretrain  # noqa: F401  (defines the flags)
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["pretrain"] + list(argv))
    return flags.FLAGS


def run_workers(commands, log_paths, timeout, envs=None):
    """Starts one `python command...` per worker of a cluster on 127.0.0.1,
    each with its TF_CONFIG (and the variables of its dict in `envs`), and
    waits until all exit, one fails or `timeout` seconds pass; kills what
    is left by pid. Returns the exit codes (None for a worker that was
    still running)."""
    ports = free_ports(len(commands))
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes = []
    try:
        for index, (command, log_path) in enumerate(zip(commands,
                                                        log_paths)):
            tf_config = {"cluster": cluster,
                         "task": {"type": "worker", "index": index}}
            env = dict(envs[index]) if envs else {}
            env["TF_CONFIG"] = json.dumps(tf_config)
            processes.append(start(command, log_path, **env))
        deadline = time.time() + timeout
        while time.time() < deadline and any(
                p.poll() is None for p in processes):
            if any(p.poll() not in (None, 0) for p in processes):
                break
            time.sleep(0.5)
        return [p.poll() for p in processes]
    finally:
        for process in processes:
            kill(process)
