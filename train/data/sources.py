"""Where a run's examples come from: checked files, or examples made here.

Everything is decided from a `PretrainConfig` and returned; nothing here
changes the phases it is given. The checks (`find_source`, `train_files`)
write nothing; only `prepare_examples` writes, into the run's data
directory. Which model a run trains is `train.model.choice`'s.
"""

import collections
import dataclasses
import json
import math
import os
import time
import zlib
from typing import Callable, Optional

import tensorflow as tf

from train.data import corpus
from train.data import examples
from train.data import record_checks
from train.data import tokenization
from train.runtime import paths
from train.runtime.errors import InputError


@dataclasses.dataclass
class TextSource:
    """Documents to turn into examples, with what identifies them."""

    description: str
    documents: Callable[[], list]
    # Identifies the text's version (file sizes and times), so that examples
    # made from an older version of the text are not reused.
    fingerprint: Optional[list] = None


HELDOUT_FILE = "heldout.tfrecord"
# Enough held-out examples for a loss to two decimals, few enough that the
# end-of-run evaluation of the default model takes seconds.
MAX_HELDOUT_EXAMPLES = 512


@dataclasses.dataclass
class Heldout:
    """Examples of documents the run never trains on, made with its
    vocabulary at phase 1's lengths, and what a context-free predictor
    scores on them (`context_free_baseline`)."""

    file: str
    examples: int
    documents: int
    baseline: dict
    # The same documents' examples at each phase's lengths (the first is
    # `file`): a train_and_eval run evaluates each phase at its own.
    phase_files: Optional[list] = None

    def files_for(self, phase_index):
        return [(self.phase_files or [self.file])[phase_index]]


def split_heldout(documents, share):
    """(training documents, held-out documents): a document is held out
    when a checksum of its text falls in the first `share` of the range,
    so the split depends on the text alone, not on the order or the
    seed."""
    train, heldout = [], []
    for document in documents:
        text = "\n".join(document).encode("utf-8", "replace")
        (heldout if zlib.crc32(text) % 10000 < share * 10000
         else train).append(document)
    return train, heldout


def context_free_baseline(train_tokenized, instances):
    """What predicting a masked token without its context scores on
    `instances`: the cross-entropy (nats) of the training text's unigram
    frequencies (add-one smoothed) at the masked tokens, the accuracy of
    always predicting the most frequent training token, and of always
    predicting the commoner next-sentence label."""
    counts = collections.Counter(
        token for document in train_tokenized for sentence in document
        for word in sentence for token in word)
    total = sum(counts.values())
    most_frequent = counts.most_common(1)[0][0] if counts else 0
    masked = [i for instance in instances for i in instance.masked_ids]
    vocab = max([most_frequent] + masked + list(counts)) + 1
    cross_entropy = -sum(math.log((counts[i] + 1) / (total + vocab))
                         for i in masked) / max(len(masked), 1)
    random_next = sum(instance.is_random_next for instance in instances)
    return {
        "masked_lm_unigram_cross_entropy": cross_entropy,
        "masked_lm_most_frequent_accuracy":
            sum(i == most_frequent for i in masked) / max(len(masked), 1),
        "next_sentence_majority_accuracy":
            max(random_next, len(instances) - random_next)
            / max(len(instances), 1),
        "predictions": len(masked),
    }


def train_files(config, phases, bert_config):
    """`phases` with the checked files of --train_files and
    --phase2_train_files."""
    result = []
    try:
        for phase, patterns in zip(phases, (config.train_files,
                                            config.phase2_train_files)):
            result.append(phase.with_files(record_checks.check_files(
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
        "vocab_file": (paths.absolute(config.vocab_file)
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
        "heldout_share": config.heldout_share,
    }


def prepare_examples(data_dir, source, phases, config, bert_config):
    """Makes (or reuses) TFRecords for every phase in `data_dir`.

    Returns (phases with their files, vocabulary file, Heldout or None).
    A vocabulary is learnt when --vocab_file is not given (from the
    training documents only); with --bert_config_file it is padded with
    [unusedN] tokens to the model's vocab_size. With --heldout_share the
    held-out documents' examples go to data/heldout.tfrecord.
    """
    vocab_target = bert_config.vocab_size if bert_config else (
        config.vocab_size)
    key = _examples_key(config, source, phases, vocab_target)
    meta_path = os.path.join(data_dir, "metadata.json")
    vocab_file = _vocab_path(data_dir, config)
    names = [os.path.join(data_dir, f"phase{i + 1}.tfrecord")
             for i in range(len(phases))]
    if tf.io.gfile.exists(meta_path):
        with tf.io.gfile.GFile(meta_path) as fh:
            meta = json.load(fh)
        heldout = (Heldout(**meta["heldout"]) if meta.get("heldout")
                   else None)
        if meta.get("key") == key and all(map(tf.io.gfile.exists, names)) \
                and _heldout_complete(heldout, len(phases)):
            print(f"Reusing the examples in {data_dir}", flush=True)
            return ([p.with_files([n]) for p, n in zip(phases, names)],
                    vocab_file, heldout)
    started = time.time()
    print(f"Making pretraining examples from {source.description} in "
          f"{data_dir} ...", flush=True)
    tf.io.gfile.makedirs(data_dir)
    if tf.io.gfile.exists(meta_path):
        tf.io.gfile.remove(meta_path)
    documents, heldout_documents = split_heldout(source.documents(),
                                                 config.heldout_share)
    if not documents:
        raise InputError(f"--heldout_share={config.heldout_share} holds out "
                         f"every document of {source.description}")
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
    heldout = _write_heldout(data_dir, heldout_documents, tokenized, tokens,
                             phases, config)
    examples.write_metadata(
        meta_path, key=key, examples=counts,
        heldout=dataclasses.asdict(heldout) if heldout else None)
    print(f"  {len(documents)} documents -> {_counts_text(counts)}, "
          f"vocabulary of {len(tokens)} tokens "
          f"({time.time() - started:.0f}s)"
          + (f"; {heldout.documents} held-out documents -> "
             f"{heldout.examples} examples" if heldout else ""), flush=True)
    return result, vocab_file, heldout


def _heldout_complete(heldout, phases):
    """Whether examples made before hold a held-out file for each of the
    `phases` (those of an earlier version have phase 1's alone)."""
    if heldout is None:
        return True
    files = heldout.phase_files or [heldout.file]
    return len(files) == phases and all(map(tf.io.gfile.exists, files))


def _write_heldout(data_dir, documents, train_tokenized, tokens, phases,
                   config):
    """The held-out examples, at each phase's lengths, and the context-free
    baseline of phase 1's, or None."""
    if not documents:
        return None
    tokenized = tokenization.tokenize_documents(documents, _vocab_path(
        data_dir, config), config.do_lower_case)
    files, first = [], None
    for index, phase in enumerate(phases):
        instances = examples.create_instances(
            tokenized, examples.Vocab(tokens), phase.seq_length,
            phase.predictions, config.masked_lm_prob, config.short_seq_prob,
            1, config.whole_word_mask,
            config.seed + 1000 + index)[:MAX_HELDOUT_EXAMPLES]
        if not instances:
            return None
        # Phase 1's name is the one runs before phase 2 had its own.
        path = os.path.join(data_dir, HELDOUT_FILE if index == 0 else
                            f"heldout_phase{index + 1}.tfrecord")
        examples.write_instances(instances, [path], phase.seq_length,
                                 phase.predictions)
        files.append(path)
        first = first or instances
    return Heldout(file=files[0], examples=len(first),
                   documents=len(documents),
                   baseline=context_free_baseline(train_tokenized, first),
                   phase_files=files)


def _vocab_path(data_dir, config):
    return config.vocab_file or os.path.join(data_dir, "vocab.txt")


def _counts_text(counts):
    """'1637 examples', or per phase '1637 examples (phase 1), 402 (phase
    2)': numbers, not a Python list."""
    if len(counts) == 1:
        return f"{counts[0]} examples"
    return ", ".join(f"{n}{' examples' if i == 0 else ''} (phase {i + 1})"
                     for i, n in enumerate(counts))
