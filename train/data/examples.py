"""Sentence-pair examples for BERT pretraining (masked LM + next sentence),
made from tokenized documents and written as TFRecords.

The records have the features of Google BERT's create_pretraining_data.py
(train/data/features.py), with Google's number of masks per example. One
seeded `random.Random` draws every choice, so the same documents,
vocabulary and seed give the same records.
"""

import collections
import json
import random

import tensorflow as tf

from train.data import features
from train.data.tokenization import SPECIAL_TOKENS
from train.runtime import paths

# Changes whenever the same text, vocabulary size and flags give other
# examples, so that a cache of examples (train.pretrain's data directory) is
# remade: 2 = Google's tokenization (no NFKC) and Google's count of masks;
# 3 = the deterministic vocabulary learner; 4 = streamed units
# (train.data.streaming): per-unit seeds, the next sentence drawn within a
# unit.
EXAMPLES_VERSION = 4

Instance = collections.namedtuple(
    "Instance", ["tokens", "segment_ids", "masked_positions", "masked_ids",
                 "is_random_next"])


class Vocab:
    """The ids the example generator needs."""

    def __init__(self, tokens):
        index = {t: i for i, t in enumerate(tokens)}
        self.size = len(tokens)
        self.cls, self.sep = index["[CLS]"], index["[SEP]"]
        self.mask = index["[MASK]"]
        special = {index[t] for t in SPECIAL_TOKENS if t in index}
        # Random replacements are ordinary tokens, never a special one.
        self.ordinary = [i for i in range(len(tokens)) if i not in special
                         and not (tokens[i].startswith("[")
                                  and tokens[i].endswith("]"))]


def _flatten(sentences):
    """Sentences of words of pieces -> (piece ids, word-start flags)."""
    ids, starts = [], []
    for sentence in sentences:
        for word in sentence:
            for j, piece in enumerate(word):
                ids.append(piece)
                starts.append(j == 0)
    return ids, starts


def _truncate_pair(a, b, max_tokens, rng):
    """Drops pieces from the front or back of the longer segment."""
    while len(a[0]) + len(b[0]) > max_tokens:
        longer = a if len(a[0]) > len(b[0]) else b
        if rng.random() < 0.5:
            del longer[0][0], longer[1][0]
        else:
            longer[0].pop()
            longer[1].pop()


def mask_tokens(tokens, word_starts, vocab, masked_lm_prob, max_predictions,
                whole_word_mask, rng):
    """Chooses round(masked_lm_prob * len(tokens)) ordinary tokens (at
    least 1, at most max_predictions; Google's count, which includes [CLS]
    and [SEP]s in the length), replacing 80% of them
    by [MASK], 10% by a random token and leaving 10% unchanged.

    Returns (new tokens, sorted positions, original ids at the positions).
    """
    groups = []
    for i, token in enumerate(tokens):
        if token in (vocab.cls, vocab.sep):
            continue
        if whole_word_mask and groups and not word_starts[i] and (
                groups[-1][-1] == i - 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    # Google's count: a share of all the tokens, [CLS] and [SEP]s included.
    wanted = min(max_predictions,
                 max(1, int(round(len(tokens) * masked_lm_prob))))
    rng.shuffle(groups)
    output = list(tokens)
    chosen = []
    for group in groups:
        if len(chosen) >= wanted:
            break
        if len(chosen) + len(group) > wanted:
            continue
        for i in group:
            r = rng.random()
            if r < 0.8:
                output[i] = vocab.mask
            elif r >= 0.9:
                output[i] = rng.choice(vocab.ordinary)
            chosen.append(i)
    chosen.sort()
    return output, chosen, [tokens[i] for i in chosen]


def _document_instances(documents, index, vocab, max_seq_length,
                        short_seq_prob, masked_lm_prob, max_predictions,
                        whole_word_mask, rng):
    document = documents[index]
    max_tokens = max_seq_length - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_tokens)
    instances, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += sum(len(w) for w in document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = _flatten(chunk[:a_end])
            random_next = len(chunk) == 1 or rng.random() < 0.5
            if random_next and len(documents) > 1:
                b_target = max(1, target - len(a[0]))
                other = index
                for _ in range(10):
                    other = rng.randrange(len(documents))
                    if other != index:
                        break
                other_doc = documents[other]
                start = rng.randrange(len(other_doc))
                b_sentences, b_length = [], 0
                for sentence in other_doc[start:]:
                    b_sentences.append(sentence)
                    b_length += sum(len(w) for w in sentence)
                    if b_length >= b_target:
                        break
                b = _flatten(b_sentences)
                i -= len(chunk) - a_end  # unused sentences come back
            else:
                random_next = False
                b = _flatten(chunk[a_end:])
            a, b = (list(a[0]), list(a[1])), (list(b[0]), list(b[1]))
            _truncate_pair(a, b, max_tokens, rng)
            if a[0] and b[0]:
                tokens = [vocab.cls] + a[0] + [vocab.sep] + b[0] + [vocab.sep]
                starts = [True] + a[1] + [True] + b[1] + [True]
                segments = [0] * (len(a[0]) + 2) + [1] * (len(b[0]) + 1)
                masked, positions, ids = mask_tokens(
                    tokens, starts, vocab, masked_lm_prob, max_predictions,
                    whole_word_mask, rng)
                instances.append(Instance(masked, segments, positions, ids,
                                          random_next))
            chunk, length = [], 0
            target = max_tokens
            if rng.random() < short_seq_prob:
                target = rng.randint(2, max_tokens)
        i += 1
    return instances


def create_instances(documents, vocab,
                     max_seq_length=features.MAX_SEQ_LENGTH,
                     max_predictions=features.MAX_PREDICTIONS_PER_SEQ,
                     masked_lm_prob=features.MASKED_LM_PROB,
                     short_seq_prob=features.SHORT_SEQ_PROB,
                     dupe_factor=features.DUPE_FACTOR,
                     whole_word_mask=False, seed=features.RANDOM_SEED):
    """Sentence-pair examples with masks, in a seeded random order.

    `documents` come from `tokenize_documents`; `vocab` is a `Vocab`.
    """
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be >= 5, got {max_seq_length}")
    rng = random.Random(seed)
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            instances.extend(_document_instances(
                documents, index, vocab, max_seq_length, short_seq_prob,
                masked_lm_prob, max_predictions, whole_word_mask, rng))
    rng.shuffle(instances)
    return instances


def instance_to_example(instance, max_seq_length, max_predictions):
    n = len(instance.tokens)
    pad = max_seq_length - n
    p = len(instance.masked_positions)
    p_pad = max_predictions - p
    return features.to_example({
        "input_ids": instance.tokens + [0] * pad,
        "input_mask": [1] * n + [0] * pad,
        "segment_ids": instance.segment_ids + [0] * pad,
        "masked_lm_positions": instance.masked_positions + [0] * p_pad,
        "masked_lm_ids": instance.masked_ids + [0] * p_pad,
        "masked_lm_weights": [1.0] * p + [0.0] * p_pad,
        "next_sentence_labels": [1 if instance.is_random_next else 0],
    })


def serialize(instance, max_seq_length, max_predictions):
    """The record of `instance`: map entries in key order, so the same
    example gives the same bytes in every process."""
    return instance_to_example(instance, max_seq_length,
                               max_predictions).SerializeToString(
                                   deterministic=True)


def write_instances(instances, output_files, max_seq_length,
                    max_predictions):
    """Writes the examples round-robin into `output_files`, replacing
    them."""
    for path in output_files:
        # A writer opened on an existing file appends on some file systems
        # (TensorFlow's ram://); Cloud Storage and local disks replace it.
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    writers = [tf.io.TFRecordWriter(path) for path in output_files]
    try:
        for i, instance in enumerate(instances):
            writers[i % len(writers)].write(
                serialize(instance, max_seq_length, max_predictions))
    finally:
        for writer in writers:
            writer.close()


def write_metadata(path, **values):
    paths.write_atomically(path, json.dumps(values, indent=2,
                                            sort_keys=True) + "\n")


def check_flags(max_seq_length, max_predictions, masked_lm_prob,
                short_seq_prob, dupe_factor, vocab_size):
    """ValueError for values no example can be made with."""
    if max_seq_length < 5:
        raise ValueError(f"--max_seq_length must be >= 5, got "
                         f"{max_seq_length}")
    if not 1 <= max_predictions <= max_seq_length:
        raise ValueError(
            f"--max_predictions_per_seq must be in [1, max_seq_length="
            f"{max_seq_length}], got {max_predictions}")
    if not 0 < masked_lm_prob < 1:
        raise ValueError(f"--masked_lm_prob must be in (0, 1), got "
                         f"{masked_lm_prob}")
    if not 0 <= short_seq_prob <= 1:
        raise ValueError(f"--short_seq_prob must be in [0, 1], got "
                         f"{short_seq_prob}")
    if dupe_factor < 1:
        raise ValueError(f"--dupe_factor must be >= 1, got {dupe_factor}")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"--vocab_size must be > {len(SPECIAL_TOKENS)}, "
                         f"got {vocab_size}")
