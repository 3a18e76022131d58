r"""The fine-tuning benchmark's two tasks (benchmarks.finetune), made offline
from the default pretraining corpus (the docstrings of Python's standard
library), and which documents the pretraining may see.

  order    whether two adjacent sentences of a docstring are in their
           original order ([CLS] A [SEP] B [SEP], label 1) or swapped
           (label 0); balanced, so chance is 0.5. Its documents are kept
           out of the pretraining text by a checksum of their text
           (split_documents), and no sentence pair of the task is an
           adjacent pair of that text (check_unseen).
  package  which of the largest standard-library packages a docstring
           comes from (its first three prose sentences).

Each task is a Task: the encoder's inputs (Encoding turns text into them
with the pretrained vocabulary) and labels, for training and held out.
"""

import ast
import dataclasses
import os
import sysconfig
import zlib
from typing import Tuple

import numpy as np

from train.data import corpus
from train.data import tokenization


@dataclasses.dataclass(frozen=True)
class Task:
    """A classification task: encoder inputs (a dict of int32 arrays) and
    labels for training and for the held-out score."""

    name: str
    description: str
    classes: Tuple[str, ...]
    train_x: dict
    train_y: np.ndarray
    test_x: dict
    test_y: np.ndarray
    # Whether the bag of words counts each segment apart.
    per_segment_counts: bool
    # {"train": [...], "held_out": [...]}: the examples as text, with their
    # labels, written beside the results for whoever wants to look.
    texts: dict

    @property
    def chance(self):
        return float(np.bincount(self.test_y).max() / len(self.test_y))


# -- the documents: who sees which --------------------------------------------

def _salted_split(documents, share, salt):
    """(documents out of the share, documents in it): a document is in it
    when a checksum of `salt` and its text falls in the first `share` of
    the range, so the split depends on the text alone. The salt makes it
    independent of train's own held-out split (train.data.split_heldout,
    the same checksum unsalted), which then still finds documents to hold
    out of the pretraining text."""
    rest, chosen = [], []
    for document in documents:
        key = zlib.crc32((salt + "\n" + "\n".join(document)).encode(
            "utf-8", "replace"))
        (chosen if key % 10000 < share * 10000 else rest).append(document)
    return rest, chosen


def split_documents(documents, task_share):
    """(pretraining documents, order-task documents)."""
    return _salted_split(documents, task_share, "order-task")


def adjacent_pairs(documents, excluded=frozenset()):
    """Every (sentence, next sentence) of each document, in order; pairs of
    two equal sentences (no order to tell) are left out, and those in
    `excluded` in either order."""
    return [(a, b) for document in documents
            for a, b in zip(document, document[1:])
            if a != b and (a, b) not in excluded and (b, a) not in excluded]


def write_pretraining_corpus(documents, path):
    """Writes the pretraining text, only when it changed: the run's
    examples are reused while the file's size and time are the same."""
    text_path = path + ".new"
    corpus.write_text_corpus(documents, text_path)
    with open(text_path, encoding="utf-8") as fh:
        text = fh.read()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                os.remove(text_path)
                return path
    os.replace(text_path, path)
    return path


def seen_pairs(pretraining_documents):
    """The adjacent sentence pairs of the pretraining text. Some
    docstrings are near copies of others (decimal's Context and Decimal
    methods), so a task document can hold a pair that a pretraining one
    holds too: the task leaves those out."""
    return frozenset(adjacent_pairs(pretraining_documents))


def check_unseen(examples, pretraining_documents):
    """Raises when a sentence pair of the task's examples, in either order,
    is a pair of adjacent sentences of the pretraining text."""
    seen = seen_pairs(pretraining_documents)
    shared = [(a, b) for a, b, _ in examples
              if (a, b) in seen or (b, a) in seen]
    if shared:
        raise AssertionError(f"{len(shared)} sentence pairs of the order task "
                             f"are in the pretraining corpus, e.g. "
                             f"{shared[0]}")


# -- the order task -----------------------------------------------------------

def order_examples(documents, seed, excluded=frozenset()):
    """[(first segment, second segment, label)]: each adjacent pair (but
    those `excluded`) once, swapped (label 0) for every other pair of a
    seeded shuffle, so the labels are balanced and which pairs are swapped
    is random."""
    pairs = adjacent_pairs(documents, excluded)
    order = np.random.default_rng(seed).permutation(len(pairs))
    result = []
    for rank, i in enumerate(order):
        a, b = pairs[i]
        result.append((a, b, 1) if rank % 2 == 0 else (b, a, 0))
    return result


class Encoding:
    """Text to the encoder's inputs with the pretrained vocabulary."""

    def __init__(self, vocab_file, lower_case):
        tokens = tokenization.read_vocab(vocab_file)
        self.index = {token: i for i, token in enumerate(tokens)}
        self.vocab_size = len(tokens)
        self.tokenizer = tokenization.BertTokenizer(tokens, lower_case)

    def pieces(self, text):
        return [i for word in self.tokenizer.tokenize(text) for i in word]

    def single(self, text, length):
        """[CLS] text [SEP], cut to `length`."""
        ids = ([self.index["[CLS]"]] + self.pieces(text)[:length - 2]
               + [self.index["[SEP]"]])
        return ids, [0] * len(ids)

    def pair(self, a, b, length):
        """[CLS] a [SEP] b [SEP] and its segment ids; the longer segment is
        cut from its end first, as BERT's pair examples are."""
        a, b = self.pieces(a), self.pieces(b)
        while len(a) + len(b) > length - 3:
            (a if len(a) >= len(b) else b).pop()
        cls, sep = self.index["[CLS]"], self.index["[SEP]"]
        ids = [cls] + a + [sep] + b + [sep]
        return ids, [0] * (len(a) + 2) + [1] * (len(b) + 1)


def _arrays(encoded, labels, length):
    """The encoder's input dict of [examples, length] int32 arrays (zero
    padded) and the labels."""
    ids = np.zeros((len(encoded), length), np.int32)
    types = np.zeros_like(ids)
    for row, (word_ids, type_ids) in enumerate(encoded):
        ids[row, :len(word_ids)] = word_ids
        types[row, :len(type_ids)] = type_ids
    return ({"input_word_ids": ids, "input_mask": (ids > 0).astype(np.int32),
             "input_type_ids": types}, np.array(labels, np.int32))


def make_order_task(config, task_documents, pretraining_documents,
                    encoding):
    """The order task's training and held-out examples, from different
    documents, none of whose pairs the pretraining text holds; nor does
    the training set hold a held-out pair (near copies again)."""
    train_docs, test_docs = _salted_split(task_documents,
                                          config.order_test_share,
                                          "order-test")
    excluded = seen_pairs(pretraining_documents)
    splits, texts = [], {}
    for documents, salt, split in ((train_docs, 0, "train"),
                                   (test_docs, 1, "held_out")):
        examples = order_examples(documents, config.seed + salt, excluded)
        check_unseen(examples, pretraining_documents)
        excluded |= {(a, b) for a, b, _ in examples}
        splits.append(_arrays(
            [encoding.pair(a, b, config.pair_length) for a, b, _ in examples],
            [label for _, _, label in examples], config.pair_length))
        texts[split] = examples
    return Task("order", "whether two adjacent sentences of a docstring "
                "are in their original order", ("swapped", "in order"),
                *splits[0], *splits[1], per_segment_counts=True, texts=texts)


# -- the package task ---------------------------------------------------------

def _docstrings(path):
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
        return
    for node in [tree] + [n for n in ast.walk(tree) if isinstance(
            n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]:
        text = ast.get_docstring(node, clean=True)
        if text:
            yield text


def labelled_passages(classes):
    """{package: [passage]} for the `classes` packages (or top-level
    modules) of the standard library with the most docstrings of prose."""
    root = sysconfig.get_paths()["stdlib"]
    passages = {}
    for path in corpus.stdlib_source_files(root):
        package = os.path.relpath(path, root).split(os.sep)[0]
        package = package[:-len(".py")] if package.endswith(".py") else (
            package)
        for text in _docstrings(path):
            sentences = corpus.split_sentences(text)
            if sentences:
                passages.setdefault(package, []).append(" ".join(
                    sentences[:3]))
    largest = sorted(passages, key=lambda p: (-len(passages[p]), p))
    return {package: passages[package] for package in largest[:classes]}


def make_package_task(config, encoding):
    """Docstrings split into training and held-out ones by a hash of their
    text, each class capped to the same count; the training set keeps
    --train_per_class per class (few labels, where pretraining should help
    most)."""
    passages = labelled_passages(config.classes)
    names = sorted(passages)
    count = min(config.per_class, min(len(p) for p in passages.values()))
    splits = {"train": ([], []), "held_out": ([], [])}
    texts = {"train": [], "held_out": []}
    for label, name in enumerate(names):
        taken = 0
        for text in passages[name][:count]:
            held_out = zlib.crc32(text.encode()) % 1000 < (
                1000 * config.held_out_share)
            if not held_out:
                if taken == config.train_per_class:
                    continue
                taken += 1
            split = "held_out" if held_out else "train"
            rows, labels = splits[split]
            rows.append(encoding.single(text, config.max_length))
            labels.append(label)
            texts[split].append((text, label))
    return Task("package", "which of " + ", ".join(names) + " a docstring "
                "comes from", tuple(names),
                *_arrays(*splits["train"], config.max_length),
                *_arrays(*splits["held_out"], config.max_length),
                per_segment_counts=False, texts=texts)
