"""Where a run's examples come from: checked files, or examples made here.

Everything is decided from a `PretrainConfig` and returned; nothing here
changes the phases it is given. The checks (`find_source`, `train_files`)
write nothing; only `prepare_examples` writes, into the run's data
directory. Which model a run trains is `train.model.choice`'s.
"""

import collections
import contextlib
import dataclasses
import json
import math
import functools
import os
import tempfile
import time
import zlib
from typing import Callable, Optional

import tensorflow as tf

from train.data import corpus
from train.data import examples
from train.data import record_checks
from train.data import streaming
from train.data import tokenization
from train.runtime import paths
from train.runtime.errors import InputError


@dataclasses.dataclass
class TextSource:
    """Documents to turn into examples, with what identifies them."""

    description: str
    # The documents (lists of sentences), made in memory; None when the
    # text is read from `files`.
    documents: Optional[Callable[[], list]] = None
    # Identifies the text's version (file sizes and times), so that examples
    # made from an older version of the text are not reused.
    fingerprint: Optional[list] = None
    # Text files (glob patterns) streamed one unit at a time.
    files: Optional[list] = None


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


def is_heldout(document, share):
    """Whether `document` is held out: a checksum of its text falls in the
    first `share` of the range, so the split depends on the text alone,
    not on the order or the seed."""
    text = "\n".join(document).encode("utf-8", "replace")
    return zlib.crc32(text) % 10000 < share * 10000


def _kept(share, heldout, document):
    """A unit's filter (train.data.streaming.Settings.keep)."""
    return is_heldout(document, share) == heldout


def split_heldout(documents, share):
    """(training documents, held-out documents), by `is_heldout`."""
    train, heldout = [], []
    for document in documents:
        (heldout if is_heldout(document, share) else train).append(document)
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
    return baseline_of_counts(
        counts, [i for instance in instances for i in instance.masked_ids],
        [instance.is_random_next for instance in instances])


def baseline_of_counts(counts, masked, random_next):
    """`context_free_baseline` from the training text's WordPiece counts,
    the masked ids of the examples and their next-sentence labels."""
    total = sum(counts.values())
    most_frequent = counts.most_common(1)[0][0] if counts else 0
    vocab = max([most_frequent] + masked + list(counts)) + 1
    cross_entropy = -sum(math.log((counts[i] + 1) / (total + vocab))
                         for i in masked) / max(len(masked), 1)
    randoms = sum(random_next)
    return {
        "masked_lm_unigram_cross_entropy": cross_entropy,
        "masked_lm_most_frequent_accuracy":
            sum(i == most_frequent for i in masked) / max(len(masked), 1),
        "next_sentence_majority_accuracy":
            max(randoms, len(random_next) - randoms)
            / max(len(random_next), 1),
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
        _check_pairs(list(config.input_file))
        stamps = []
        for pattern in config.input_file:
            for path in sorted(tf.io.gfile.glob(pattern)):
                stat = tf.io.gfile.stat(path)
                stamps.append(f"{path}@{stat.length}:{stat.mtime_nsec}")
        return TextSource("text files " + ",".join(config.input_file),
                          fingerprint=stamps, files=list(config.input_file))
    if config.tfds_name:
        documents = load_tfds_documents(config)
        return TextSource(f"tfds {config.tfds_name}/{config.tfds_split}",
                          lambda: documents)
    return TextSource("the Python standard library's docstrings",
                      corpus.stdlib_documents)


def _check_pairs(patterns):
    """InputError unless the files hold a sentence pair: two documents or
    a document of two sentences (read until one is found)."""
    documents = 0
    try:
        for document in streaming.iter_documents(patterns):
            documents += 1
            if documents >= 2 or len(document) >= 2:
                return
    except ValueError as error:
        raise InputError(str(error)) from None
    if not documents:
        raise InputError(f"No text in {','.join(patterns)}")
    raise InputError(
        f"--input_file={','.join(patterns)} holds one sentence; sentence "
        f"pairs need two sentences or two documents")


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
    with _text_files(source) as files:
        units = streaming.plan_units(files)
        if not config.vocab_file:
            _learn_vocab(units, vocab_target, config, bert_config,
                         vocab_file, source)
        tokens = tokenization.read_vocab(vocab_file)
        result, counts, documents, pieces = _write_phases(
            units, phases, names, vocab_file, config, source)
        heldout = _write_heldout(data_dir, units, pieces, phases, config)
    examples.write_metadata(
        meta_path, key=key, examples=counts,
        heldout=dataclasses.asdict(heldout) if heldout else None)
    print(f"  {documents} documents -> {_counts_text(counts)}, "
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


@contextlib.contextmanager
def _text_files(source):
    """The source's text files: its own, or its documents written to a
    temporary file, so that every source is streamed by the same code."""
    if source.files:
        yield source.files
        return
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "corpus.txt")
        corpus.write_text_corpus(source.documents(), path)
        yield [path]


def _settings(vocab_file, config, phase, dupe_factor, seed, keep,
              count_pieces=False):
    return streaming.Settings(
        vocab_file, config.do_lower_case, phase.seq_length,
        phase.predictions, config.masked_lm_prob, config.short_seq_prob,
        dupe_factor, config.whole_word_mask, seed, keep, count_pieces)


def _no_training_documents(config, source):
    return InputError(f"--heldout_share={config.heldout_share} holds out "
                      f"every document of {source.description}")


def _learn_vocab(units, vocab_target, config, bert_config, vocab_file,
                 source):
    """Learns the vocabulary from the training documents' word counts
    (streamed) and writes it; with a bert_config, padded with [unusedN] to
    its vocab_size."""
    counts, documents = streaming.count_words(
        units, config.do_lower_case,
        keep=functools.partial(_kept, config.heldout_share, False))
    if not documents:
        raise _no_training_documents(config, source)
    vocab = tokenization.learn_vocab_from_counts(counts, vocab_target)
    if bert_config is not None:
        if len(vocab) > bert_config.vocab_size:
            vocab = vocab[:bert_config.vocab_size]
        vocab += [f"[unused{i}]"
                  for i in range(bert_config.vocab_size - len(vocab))]
    tokenization.write_vocab(vocab, vocab_file)


def _write_phases(units, phases, names, vocab_file, config, source):
    """Each phase's examples from the training documents; returns (phases
    with their files, examples per phase, training documents, their
    WordPiece counts)."""
    keep = functools.partial(_kept, config.heldout_share, False)
    pieces = collections.Counter()
    result, counts, documents = [], [], 0
    for i, (phase, name) in enumerate(zip(phases, names)):
        settings = _settings(vocab_file, config, phase, config.dupe_factor,
                             config.seed + i, keep, count_pieces=i == 0)
        count, documents = streaming.write_examples(
            units, settings, [name],
            on_result=lambda r: r.pieces and pieces.update(r.pieces))
        if not documents:
            raise _no_training_documents(config, source)
        if not count:
            raise InputError(f"{source.description} gave no example (each "
                             f"needs two segments of text)")
        result.append(phase.with_files([name]))
        counts.append(count)
    return result, counts, documents, pieces


def _write_heldout(data_dir, units, train_pieces, phases, config):
    """The held-out examples at each phase's lengths (the first
    MAX_HELDOUT_EXAMPLES of each, in the units' order) and the context-free
    baseline of phase 1's, or None."""
    if not config.heldout_share:
        return None
    keep = functools.partial(_kept, config.heldout_share, True)
    files, first = [], None
    for index, phase in enumerate(phases):
        settings = _settings(_vocab_path(data_dir, config), config, phase, 1,
                             config.seed + 1000 + index, keep)
        records, documents = [], 0
        for unit_result in streaming.run_units(streaming.unit_examples,
                                               units, settings):
            documents += unit_result.documents
            records += unit_result.records[
                :MAX_HELDOUT_EXAMPLES - len(records)]
        if not records:
            return None
        # Phase 1's name is the one runs before phase 2 had its own.
        path = os.path.join(data_dir, HELDOUT_FILE if index == 0 else
                            f"heldout_phase{index + 1}.tfrecord")
        _write_records(path, records)
        files.append(path)
        first = first or (records, documents)
    records, documents = first
    return Heldout(file=files[0], examples=len(records), documents=documents,
                   baseline=_records_baseline(train_pieces, records),
                   phase_files=files)


def _write_records(path, records):
    if tf.io.gfile.exists(path):
        tf.io.gfile.remove(path)
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


def _records_baseline(train_pieces, records):
    """The context-free baseline (baseline_of_counts) of serialized
    examples."""
    masked, random_next = [], []
    for record in records:
        feature = tf.train.Example.FromString(record).features.feature
        count = int(sum(feature["masked_lm_weights"].float_list.value))
        masked += feature["masked_lm_ids"].int64_list.value[:count]
        random_next.append(
            feature["next_sentence_labels"].int64_list.value[0] == 1)
    return baseline_of_counts(train_pieces, masked, random_next)


def _vocab_path(data_dir, config):
    return config.vocab_file or os.path.join(data_dir, "vocab.txt")


def _counts_text(counts):
    """'1637 examples', or per phase '1637 examples (phase 1), 402 (phase
    2)': numbers, not a Python list."""
    if len(counts) == 1:
        return f"{counts[0]} examples"
    return ", ".join(f"{n}{' examples' if i == 0 else ''} (phase {i + 1})"
                     for i, n in enumerate(counts))
