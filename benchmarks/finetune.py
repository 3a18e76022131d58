r"""Is the pretrained encoder worth handing on?  Fine-tune it and see.

Two downstream tasks, both made offline from the default pretraining corpus
(the docstrings of Python's standard library), each scored by three
classifiers:

  bag_of_words  multinomial logistic regression on token counts (NumPy;
                for a sentence pair, the counts of each segment are
                separate features, so it can learn which words open a
                docstring and which follow);
  random        the encoder of the pretrained one's config, randomly
                initialised, fine-tuned end to end;
  pretrained    the SavedModel exported after pretraining (--saved_model,
                or, without it, one this benchmark pretrains first with
                train.run_pretraining into --output_dir/pretrain, reused by
                a rerun), fine-tuned the same way.

The two encoders get the same classifier (pooled_output, or with
--pooling=mean the masked mean of sequence_output; dropout 0.1; a Dense
layer), the same steps, learning rate and batches, and the same
fine-tuning seeds (--seeds); each row reports the mean and the range over
the seeds.

The tasks:

  order    whether two adjacent sentences of a docstring are in their
           original order ([CLS] A [SEP] B [SEP], label 1) or swapped
           (label 0); balanced, so chance is 0.5. The words of a pair are
           the same either way: only their order tells. Its documents are
           --task_share of the corpus, chosen by a checksum of their text,
           and the pretraining made here never sees them: it trains on a
           text file of the other documents
           (--output_dir/pretrain_corpus.txt; train holds out 5 % of those
           in turn for its own held-out MLM loss), and no sentence pair of
           the task is an adjacent pair of that text.
  package  which of the --classes largest standard-library packages a
           docstring comes from (its first three prose sentences); chance
           is 1 / --classes. Word identity alone mostly solves it; its
           text (never its labels) is in the pretraining corpus.

  python -m benchmarks.finetune                  # pretrains first
  python -m benchmarks.finetune --saved_model=runs/pretrain/export
  python -m benchmarks.finetune --quick          # ~45 s, for the tests

It prints a table and writes results.json into --output_dir.
"""

import ast
import dataclasses
import json
import os
import sys
import sysconfig
import time
import zlib
from typing import Optional, Tuple

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from train import PretrainConfig, run_pretraining
from train import checkpoints
from train import corpus
from train import tokenization
from train import hub_module
from train import modeling
from train.errors import InputError

TASKS = ("order", "package")
ROWS = ("bag_of_words", "random", "pretrained")
PRETRAINING_SUMMARY = "finetune_pretraining.json"
POOLING_TEXT = {"pooled": "pooled_output",
                "mean": "the masked mean of sequence_output"}


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The benchmark's settings (the flags of the same names), built once
    in main and passed down."""

    output_dir: str = "runs/finetune"
    saved_model: Optional[str] = None
    tasks: Tuple[str, ...] = TASKS
    # -- the pretraining made here (without --saved_model)
    pretrain_steps: int = 1000
    pretrain_documents: int = 100000
    # -- the order task
    task_share: float = 0.3
    order_test_share: float = 0.3
    pair_length: int = 96
    # -- the package task
    classes: int = 4
    max_length: int = 64
    per_class: int = 600
    train_per_class: Optional[int] = 64
    held_out_share: float = 0.2
    # -- fine-tuning, the same for both encoders
    pooling: str = "pooled"
    batch_size: int = 32
    steps: int = 150
    learning_rate: float = 5e-4
    seeds: Tuple[int, ...] = (1, 2, 3)
    # -- the bag-of-words baseline
    bow_epochs: int = 40
    bow_learning_rate: float = 0.01
    bow_l2: float = 1e-4
    # Which order pairs are swapped, and the random encoder's weights.
    seed: int = 7

    @property
    def quick_pretraining(self):
        return self.pretrain_documents < 1000

    @classmethod
    def quick(cls, output_dir):
        """The tests' run: the order task alone, two seeds, a few seconds
        per fine-tuning (most of it tracing); about 45 s in all on the
        2-core CPU."""
        return cls(output_dir=output_dir, tasks=("order",), seeds=(1, 2),
                   pretrain_steps=10, pretrain_documents=300, per_class=40,
                   steps=6, max_length=32, pair_length=48, batch_size=16,
                   train_per_class=None, bow_epochs=10)


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


# -- the bag-of-words baseline ------------------------------------------------

def count_features(inputs, vocab_size, per_segment):
    """[examples, vocab_size] token counts (special tokens and padding
    included: they are the same for every example), or with `per_segment`
    [examples, 2 * vocab_size]: segment A's counts, then segment B's."""
    ids = inputs["input_word_ids"]
    mask = inputs["input_mask"].astype(bool)
    segment = inputs["input_type_ids"] if per_segment else np.zeros_like(ids)
    width = vocab_size * (2 if per_segment else 1)
    rows = np.broadcast_to(np.arange(len(ids))[:, None], ids.shape)
    counts = np.zeros((len(ids), width), np.float32)
    np.add.at(counts, (rows[mask], (ids + segment * vocab_size)[mask]), 1.0)
    return counts


def fit_bag_of_words(x, y, classes, seed, config):
    """Weights and biases of multinomial logistic regression on `x`: Adam
    on the mean cross-entropy plus bow_l2 times the squared weights, for
    bow_epochs passes of batch_size examples shuffled by `seed`."""
    rng = np.random.default_rng(seed)
    # Features on a log scale, so that a word repeated ten times does not
    # weigh ten times one said once.
    x = np.log1p(x)
    params = [np.zeros((x.shape[1], classes), np.float32),
              np.zeros(classes, np.float32)]
    moments = [[np.zeros_like(p), np.zeros_like(p)] for p in params]
    step = 0
    for _ in range(config.bow_epochs):
        for batch in np.array_split(rng.permutation(len(y)),
                                    max(1, len(y) // config.batch_size)):
            step += 1
            probabilities = _softmax(x[batch] @ params[0] + params[1])
            probabilities[np.arange(len(batch)), y[batch]] -= 1.0
            probabilities /= len(batch)
            grads = [x[batch].T @ probabilities + 2 * config.bow_l2
                     * params[0], probabilities.sum(axis=0)]
            for p, g, m in zip(params, grads, moments):
                m[0] = 0.9 * m[0] + 0.1 * g
                m[1] = 0.999 * m[1] + 0.001 * g * g
                p -= config.bow_learning_rate * (m[0] / (1 - 0.9 ** step)) / (
                    np.sqrt(m[1] / (1 - 0.999 ** step)) + 1e-8)
    return params


def bag_of_words_accuracy(params, x, y):
    predictions = np.argmax(np.log1p(x) @ params[0] + params[1], axis=1)
    return float(np.mean(predictions == y))


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def run_bag_of_words(task, vocab_size, config, seed):
    started = time.time()
    train_x = count_features(task.train_x, vocab_size,
                             task.per_segment_counts)
    test_x = count_features(task.test_x, vocab_size, task.per_segment_counts)
    params = fit_bag_of_words(train_x, task.train_y, len(task.classes), seed,
                              config)
    return {"held_out_accuracy": bag_of_words_accuracy(params, test_x,
                                                       task.test_y),
            "train_accuracy": bag_of_words_accuracy(params, train_x,
                                                    task.train_y),
            "seconds": time.time() - started}


# -- the encoders -------------------------------------------------------------

def pretrained_saved_model(config, pretraining_documents):
    """--saved_model, or the export of a pretraining run made here on
    `pretraining_documents`, with its summary (None with --saved_model)."""
    if config.saved_model:
        return config.saved_model, None
    model_dir = os.path.join(config.output_dir, "pretrain")
    export_dir = os.path.join(model_dir, "export")
    text = write_pretraining_corpus(pretraining_documents, os.path.join(
        config.output_dir, "pretrain_corpus.txt"))
    result = run_pretraining(PretrainConfig(
        model_dir=model_dir, export_dir=export_dir, input_file=(text,),
        num_train_steps=config.pretrain_steps,
        log_steps=max(1, config.pretrain_steps // 10),
        **(dict(vocab_size=1000, dupe_factor=1, max_seq_length=64,
                max_predictions_per_seq=10)
           if config.quick_pretraining else {})))
    return export_dir, _pretraining_summary(model_dir, result)


def _pretraining_summary(model_dir, result):
    """The run's final training and held-out metrics. A rerun that only
    resumes the finished run trains nothing, so the training figures of
    the run that did are kept in model_dir and read back."""
    path = os.path.join(model_dir, PRETRAINING_SUMMARY)
    summary = {}
    if os.path.exists(path):
        with open(path) as fh:
            summary = json.load(fh)
    if result["history"]:
        summary = {"steps": result["step"],
                   "final_train_mlm_loss": result["mlm_loss"],
                   "final_train_mlm_accuracy": result["mlm_accuracy"],
                   "history": result["history"]}
    heldout = result.get("heldout")
    if heldout:
        summary["heldout"] = {key: heldout[key] for key in (
            "masked_lm_loss", "masked_lm_accuracy", "next_sentence_accuracy",
            "examples", "baseline") if key in heldout}
    summary["step"] = result["step"]
    with open(path, "w") as fh:
        json.dump(summary, fh, indent=2, default=float)
    return summary


def random_saved_model(pretrained, path, seed):
    """An encoder of the pretrained one's config, freshly initialised,
    exported as train.export exports a trained one."""
    loaded = tf.saved_model.load(pretrained)
    config_file = loaded.bert_config_file.asset_path.numpy().decode()
    vocab_file = loaded.vocab_file.asset_path.numpy().decode()
    bert_config = modeling.BertConfig.from_json_file(config_file)
    keras.utils.set_random_seed(seed)
    model = modeling.BertPretrainer(bert_config)
    model.build_for(bert_config.max_position_embeddings, 1)
    hub_module.save_hub_object(hub_module.HubEncoder(
        model, checkpoints.google_variable_names(model), vocab_file,
        config_file, bool(loaded.do_lower_case.numpy())), path)
    return path


def fine_tune(saved_model, task, config, seed):
    """Held-out accuracy and final training loss of the classifier
    fine-tuned from `saved_model`, every encoder variable trained."""
    keras.utils.set_random_seed(seed)
    encoder = hub_module.load_encoder_layer(saved_model)
    inputs = {name: keras.Input((None,), dtype="int32", name=name)
              for name in hub_module.INPUT_NAMES}
    outputs = encoder(inputs)
    if config.pooling == "mean":
        mask = keras.ops.cast(inputs["input_mask"], "float32")[:, :, None]
        features = keras.ops.sum(outputs["sequence_output"] * mask,
                                 axis=1) / keras.ops.sum(mask, axis=1)
    else:
        features = outputs["pooled_output"]
    features = keras.layers.Dropout(0.1)(features)
    model = keras.Model(inputs, keras.layers.Dense(len(task.classes))(
        features))
    model.compile(keras.optimizers.Adam(config.learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    batches = tf.data.Dataset.from_tensor_slices(
        (task.train_x, task.train_y)).shuffle(
        len(task.train_y), seed=seed).repeat().batch(config.batch_size)
    started = time.time()
    history = model.fit(batches, steps_per_epoch=config.steps, epochs=1,
                        verbose=0)
    return {"held_out_accuracy": held_out_accuracy(model, task),
            "final_train_loss": float(history.history["loss"][-1]),
            "seconds": time.time() - started}


def held_out_accuracy(model, task, batch_size=256):
    """The share of held-out examples the classifier gets right, called
    eagerly: a traced evaluate would cost each fine-tuning seconds more."""
    right = 0
    for start in range(0, len(task.test_y), batch_size):
        logits = model({name: x[start:start + batch_size]
                        for name, x in task.test_x.items()}, training=False)
        right += int(np.sum(np.argmax(keras.ops.convert_to_numpy(logits),
                                      axis=1)
                            == task.test_y[start:start + batch_size]))
    return right / len(task.test_y)


def spread(runs):
    """Mean, min and max of the runs' held-out accuracies."""
    accuracies = [r["held_out_accuracy"] for r in runs]
    return {"mean": float(np.mean(accuracies)),
            "min": float(min(accuracies)), "max": float(max(accuracies))}


# -- the benchmark ------------------------------------------------------------

def _open_pretrained(path):
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise InputError(f"--saved_model {path} holds no SavedModel")
    loaded = tf.saved_model.load(path)
    if not hasattr(loaded, "vocab_file"):
        raise InputError(f"--saved_model {path} has no vocab_file: "
                         f"export it with python -m train.export")
    return Encoding(loaded.vocab_file.asset_path.numpy().decode(),
                    bool(loaded.do_lower_case.numpy()))


def score_task(task, encoders, vocab_size, config):
    """{row: {"runs": [per seed], "held_out_accuracy": spread}}."""
    rows = {}
    for row in ROWS:
        runs = []
        for seed in config.seeds:
            if row == "bag_of_words":
                runs.append(run_bag_of_words(task, vocab_size, config, seed))
            else:
                runs.append(fine_tune(encoders[row], task, config, seed))
            print(f"  {task.name} {row} seed {seed}: held-out accuracy "
                  f"{runs[-1]['held_out_accuracy']:.3f} "
                  f"({runs[-1]['seconds']:.0f}s)", flush=True)
        rows[row] = {"runs": runs, "held_out_accuracy": spread(runs)}
    return rows


def run(config):
    started = time.time()
    os.makedirs(config.output_dir, exist_ok=True)
    pretraining_documents, task_documents = split_documents(
        corpus.stdlib_documents(config.pretrain_documents), config.task_share)
    pretraining_started = time.time()
    pretrained, pretraining = pretrained_saved_model(config,
                                                     pretraining_documents)
    pretraining_seconds = time.time() - pretraining_started
    encoding = _open_pretrained(pretrained)
    encoders = {"pretrained": pretrained, "random": random_saved_model(
        pretrained, os.path.join(config.output_dir, "random_encoder"),
        config.seed)}
    results = {"settings": dataclasses.asdict(config),
               "pretraining": pretraining,
               "pretraining_seconds": pretraining_seconds,
               # With --saved_model this benchmark cannot know what the
               # encoder was pretrained on.
               "order_documents_unseen_by_pretraining":
                   None if config.saved_model else True,
               "tasks": {}}
    for name in config.tasks:
        task = (make_order_task(config, task_documents,
                                pretraining_documents, encoding)
                if name == "order" else make_package_task(config, encoding))
        with open(os.path.join(config.output_dir, f"{name}_examples.json"),
                  "w") as fh:
            json.dump(task.texts, fh, indent=1)
        results["tasks"][name] = {
            "description": task.description, "classes": list(task.classes),
            "train_examples": len(task.train_y),
            "held_out_examples": len(task.test_y), "chance": task.chance,
            **score_task(task, encoders, encoding.vocab_size, config)}
    results["total_seconds"] = time.time() - started
    with open(os.path.join(config.output_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    print_report(results, config)
    return results


def print_report(results, config):
    pretraining = results["pretraining"]
    if pretraining:
        heldout = pretraining.get("heldout", {})
        print(f"Pretraining: {pretraining.get('steps')} updates, final "
              f"training MLM loss {pretraining.get('final_train_mlm_loss')}"
              f"; held-out MLM loss {heldout.get('masked_lm_loss')}")
    print(f"Fine-tuning: {config.steps} steps of {config.batch_size}, Adam "
          f"lr {config.learning_rate}, classifier on "
          f"{POOLING_TEXT[config.pooling]}; seeds "
          f"{', '.join(map(str, config.seeds))}")
    for name, task in results["tasks"].items():
        print(f"Task {name}: {task['description']}; {task['train_examples']} "
              f"training, {task['held_out_examples']} held-out examples "
              f"(chance {task['chance']:.3f})")
        for row in ROWS:
            accuracy = task[row]["held_out_accuracy"]
            print(f"  {row:12s} held-out accuracy {accuracy['mean']:.3f} "
                  f"[{accuracy['min']:.3f}-{accuracy['max']:.3f}]")
    print(f"Total {results['total_seconds']:.0f}s", flush=True)


def define_flags():
    defaults = FinetuneConfig()
    flags.DEFINE_string("output_dir", defaults.output_dir,
                        "Results, the random encoder and (without "
                        "--saved_model) the pretraining run and its text.")
    flags.DEFINE_string("saved_model", None,
                        "An encoder SavedModel written by train.export "
                        "(default: pretrain one first, without the order "
                        "task's documents).")
    flags.DEFINE_list("tasks", list(defaults.tasks),
                      f"Which of {', '.join(TASKS)} to run.")
    flags.DEFINE_integer("pretrain_steps", defaults.pretrain_steps,
                         "Updates of the pretraining made without "
                         "--saved_model.")
    flags.DEFINE_float("task_share", defaults.task_share,
                       "Share of the corpus's documents kept out of the "
                       "pretraining for the order task.")
    flags.DEFINE_integer("classes", defaults.classes,
                         "How many standard-library packages the package "
                         "task tells apart.")
    flags.DEFINE_integer("train_per_class", defaults.train_per_class,
                         "Package task: training examples per class (the "
                         "held-out set keeps all of its own).")
    flags.DEFINE_enum("pooling", defaults.pooling, ["pooled", "mean"],
                      "Classifier input: pooled_output, or the masked mean "
                      "of sequence_output.")
    flags.DEFINE_integer("steps", defaults.steps, "Fine-tuning updates.")
    flags.DEFINE_float("learning_rate", defaults.learning_rate,
                       "Fine-tuning learning rate (Adam).")
    flags.DEFINE_list("seeds", [str(s) for s in defaults.seeds],
                      "Fine-tuning seeds: each row is run once per seed.")
    flags.DEFINE_bool("quick", False, "A tiny run (under a minute), for "
                      "tests.")


def config_from_flags(f):
    """The run's FinetuneConfig; --quick takes its own settings but for
    --saved_model and, when given, --tasks and --seeds."""
    unknown = set(f.tasks) - set(TASKS)
    if unknown or not f.tasks:
        raise app.UsageError(f"--tasks takes some of {', '.join(TASKS)}")
    try:
        seeds = tuple(int(s) for s in f.seeds)
    except ValueError:
        raise app.UsageError(f"--seeds takes integers, got {f.seeds}")
    if f.quick:
        config = FinetuneConfig.quick(f.output_dir)
        for name, value in (("tasks", tuple(f.tasks)), ("seeds", seeds)):
            if f[name].present:
                config = dataclasses.replace(config, **{name: value})
    else:
        config = FinetuneConfig(
            output_dir=f.output_dir, pretrain_steps=f.pretrain_steps,
            task_share=f.task_share, classes=f.classes, steps=f.steps,
            learning_rate=f.learning_rate, train_per_class=f.train_per_class,
            pooling=f.pooling, tasks=tuple(f.tasks), seeds=seeds)
    return dataclasses.replace(config, saved_model=f.saved_model)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = config_from_flags(flags.FLAGS)
    try:
        run(config)
    except InputError as error:
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
