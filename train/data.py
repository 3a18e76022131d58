"""Where a run's examples come from: checked files, or examples made here.

Everything is decided from a `PretrainConfig` and returned; nothing here
changes the phases it is given. The checks (`find_source`, `train_files`)
write nothing; only `prepare_examples` writes, into the run's data
directory. Which model a run trains is `train.model_setup`'s.
"""

import dataclasses
import json
import os
import time
from typing import Callable, Optional

import tensorflow as tf

from train import corpus
from train import examples
from train import input_pipeline
from train import tokenization
from train.errors import InputError


@dataclasses.dataclass
class TextSource:
    """Documents to turn into examples, with what identifies them."""

    description: str
    documents: Callable[[], list]
    # Identifies the text's version (file sizes and times), so that examples
    # made from an older version of the text are not reused.
    fingerprint: Optional[list] = None


def train_files(config, phases, bert_config):
    """`phases` with the checked files of --train_files and
    --phase2_train_files."""
    result = []
    try:
        for phase, patterns in zip(phases, (config.train_files,
                                            config.phase2_train_files)):
            result.append(phase.with_files(input_pipeline.check_files(
                patterns, phase.seq_length, phase.predictions,
                bert_config.vocab_size)))
    except ValueError as error:
        raise InputError(str(error)) from None
    return result


def find_source(config):
    """The text to make examples from, or None with --train_files."""
    if config.train_files:
        return None
    if config.input_file:
        try:
            documents = corpus.read_documents(list(config.input_file))
        except ValueError as error:
            raise InputError(str(error)) from None
        if len(documents) < 2 and max(map(len, documents)) < 2:
            raise InputError(
                f"--input_file={','.join(config.input_file)} holds one "
                f"sentence; sentence pairs need two sentences or two "
                f"documents")
        stamps = []
        for pattern in config.input_file:
            for path in sorted(tf.io.gfile.glob(pattern)):
                stat = tf.io.gfile.stat(path)
                stamps.append(f"{path}@{stat.length}:{stat.mtime_nsec}")
        return TextSource("text files " + ",".join(config.input_file),
                          lambda: documents, stamps)
    if config.tfds_name:
        documents = load_tfds_documents(config)
        return TextSource(f"tfds {config.tfds_name}/{config.tfds_split}",
                          lambda: documents)
    return TextSource("the Python standard library's docstrings",
                      corpus.stdlib_documents)


def load_tfds_documents(config):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise InputError(
            "--tfds_name needs the tensorflow-datasets package, which is not "
            "installed (pip install tensorflow-datasets); or use "
            "--input_file / --train_files") from None
    try:
        dataset = tfds.load(config.tfds_name, split=config.tfds_split,
                            data_dir=config.tfds_data_dir, download=False)
    except Exception as error:  # tfds raises many kinds
        raise InputError(f"Cannot load --tfds_name={config.tfds_name} (split "
                         f"{config.tfds_split}) without download: "
                         f"{error}") from None
    documents = []
    for example in dataset.take(config.max_documents):
        if config.tfds_text_key not in example:
            raise InputError(f"--tfds_name={config.tfds_name} has no feature "
                             f"{config.tfds_text_key!r} (--tfds_text_key)")
        text = example[config.tfds_text_key].numpy().decode("utf-8",
                                                            "replace")
        sentences = corpus.split_sentences(text)
        if len(sentences) >= 2:
            documents.append(sentences)
    if not documents:
        raise InputError(f"--tfds_name={config.tfds_name} gave no document "
                         f"of two sentences or more")
    return documents


def _examples_key(config, source, phases, vocab_target):
    """What the examples in a data directory were made from."""
    return {
        "source": source.description,
        "phases": [[p.seq_length, p.predictions] for p in phases],
        "vocab_file": (os.path.abspath(config.vocab_file)
                       if config.vocab_file else None),
        "vocab_size": vocab_target,
        "masked_lm_prob": config.masked_lm_prob,
        "short_seq_prob": config.short_seq_prob,
        "dupe_factor": config.dupe_factor,
        "whole_word_mask": config.whole_word_mask,
        "do_lower_case": config.do_lower_case,
        "seed": config.seed,
        "writer": examples.EXAMPLES_VERSION,
        "fingerprint": source.fingerprint,
    }


def prepare_examples(data_dir, source, phases, config, bert_config):
    """Makes (or reuses) TFRecords for every phase in `data_dir`.

    Returns (phases with their files, vocabulary file). A vocabulary is
    learnt when --vocab_file is not given; with --bert_config_file it is
    padded with [unusedN] tokens to the model's vocab_size.
    """
    vocab_target = bert_config.vocab_size if bert_config else (
        config.vocab_size)
    key = _examples_key(config, source, phases, vocab_target)
    meta_path = os.path.join(data_dir, "metadata.json")
    vocab_file = config.vocab_file or os.path.join(data_dir, "vocab.txt")
    names = [os.path.join(data_dir, f"phase{i + 1}.tfrecord")
             for i in range(len(phases))]
    if tf.io.gfile.exists(meta_path):
        with tf.io.gfile.GFile(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("key") == key and all(map(tf.io.gfile.exists, names)):
            print(f"Reusing the examples in {data_dir}", flush=True)
            return ([p.with_files([n]) for p, n in zip(phases, names)],
                    vocab_file)
    started = time.time()
    print(f"Making pretraining examples from {source.description} in "
          f"{data_dir} ...", flush=True)
    tf.io.gfile.makedirs(data_dir)
    if tf.io.gfile.exists(meta_path):
        tf.io.gfile.remove(meta_path)
    documents = source.documents()
    if not config.vocab_file:
        vocab = tokenization.learn_vocab(documents, vocab_target,
                                         config.do_lower_case)
        if bert_config is not None:
            if len(vocab) > bert_config.vocab_size:
                vocab = vocab[:bert_config.vocab_size]
            vocab += [f"[unused{i}]"
                      for i in range(bert_config.vocab_size - len(vocab))]
        tokenization.write_vocab(vocab, vocab_file)
    tokens = tokenization.read_vocab(vocab_file)
    tokenized = tokenization.tokenize_documents(documents, vocab_file,
                                                config.do_lower_case)
    counts = []
    result = []
    for i, (phase, name) in enumerate(zip(phases, names)):
        instances = examples.create_instances(
            tokenized, examples.Vocab(tokens), phase.seq_length,
            phase.predictions, config.masked_lm_prob, config.short_seq_prob,
            config.dupe_factor, config.whole_word_mask, config.seed + i)
        if not instances:
            raise InputError(f"{source.description} gave no example (each "
                             f"needs two segments of text)")
        examples.write_instances(instances, [name], phase.seq_length,
                                 phase.predictions)
        result.append(phase.with_files([name]))
        counts.append(len(instances))
    examples.write_metadata(meta_path, key=key, examples=counts)
    print(f"  {len(documents)} documents -> {_counts_text(counts)}, "
          f"vocabulary of {len(tokens)} tokens "
          f"({time.time() - started:.0f}s)", flush=True)
    return result, vocab_file


def _counts_text(counts):
    """'1637 examples', or per phase '1637 examples (phase 1), 402 (phase
    2)': numbers, not a Python list."""
    if len(counts) == 1:
        return f"{counts[0]} examples"
    return ", ".join(f"{n}{' examples' if i == 0 else ''} (phase {i + 1})"
                     for i, n in enumerate(counts))
