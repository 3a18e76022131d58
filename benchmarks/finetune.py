r"""Is the pretrained encoder worth handing on?  Fine-tune it and see.

A downstream task made offline from the default pretraining corpus: which
of the --classes largest packages of Python's standard library a docstring
comes from (its first three prose sentences, at most 64 WordPieces).
Docstrings are split into training and held-out examples by a hash of their
text, each class capped to the same count, so chance is 1 / --classes; the
training set keeps --train_per_class examples per class (few labels, where
pretraining should help most).

The same classifier (the masked mean of the encoder's sequence_output, or
with --pooling=pooled its pooled_output; dropout 0.1; a Dense layer) is
fine-tuned from two encoders with the same steps, learning rate, batches
and seed:

  pretrained  the SavedModel exported after pretraining (--saved_model, or,
              without it, one this benchmark pretrains first with
              train.run_pretraining on the default corpus into --output_dir,
              reused by a rerun);
  random      an encoder of the same config, randomly initialised, exported
              the same way;

both loaded with Keras 3 through train.export.load_encoder_layer, every
encoder variable trained.  It prints the held-out accuracy of each and
writes results.json into --output_dir.

  python -m benchmarks.finetune                  # pretrains first
  python -m benchmarks.finetune --saved_model=runs/pretrain/export
  python -m benchmarks.finetune --quick          # seconds, for the tests

The pretraining corpus holds the text (never the labels) of the held-out
docstrings too, as a BERT pretrained on a large corpus would.
"""

import ast
import dataclasses
import json
import os
import sys
import sysconfig
import time
import zlib

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


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    output_dir: str = "runs/finetune"
    saved_model: str = None
    pretrain_steps: int = 300
    pretrain_documents: int = 100000
    classes: int = 4
    max_length: int = 64
    per_class: int = 600
    train_per_class: int = 64
    pooling: str = "mean"
    held_out_share: float = 0.2
    batch_size: int = 32
    steps: int = 150
    learning_rate: float = 5e-4
    seed: int = 7

    @classmethod
    def quick(cls, output_dir):
        return cls(output_dir=output_dir, pretrain_steps=20,
                   pretrain_documents=300, per_class=40, steps=10,
                   max_length=32, batch_size=16, train_per_class=None)


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


def make_task(config, vocab_file, lower_case):
    """(train inputs, train labels, held-out inputs, held-out labels,
    class names); inputs are the encoder's dict of int32 arrays."""
    tokens = tokenization.read_vocab(vocab_file)
    index = {token: i for i, token in enumerate(tokens)}
    tokenizer = tokenization.BertTokenizer(tokens, lower_case)
    passages = labelled_passages(config.classes)
    names = sorted(passages)
    count = min(config.per_class, min(len(p) for p in passages.values()))
    splits = {"train": ([], []), "held_out": ([], [])}
    for label, name in enumerate(names):
        taken = 0
        for text in passages[name][:count]:
            held_out = zlib.crc32(text.encode()) % 1000 < (
                1000 * config.held_out_share)
            if not held_out:
                if taken == config.train_per_class:
                    continue
                taken += 1
            pieces = [i for word in tokenizer.tokenize(text) for i in word]
            ids = ([index["[CLS]"]] + pieces[:config.max_length - 2]
                   + [index["[SEP]"]])
            rows, labels = splits["held_out" if held_out else "train"]
            rows.append(ids + [0] * (config.max_length - len(ids)))
            labels.append(label)

    def arrays(rows, labels):
        ids = np.array(rows, np.int32)
        return ({"input_word_ids": ids,
                 "input_mask": (ids > 0).astype(np.int32),
                 "input_type_ids": np.zeros_like(ids)},
                np.array(labels, np.int32))

    return arrays(*splits["train"]) + arrays(*splits["held_out"]) + (names,)


def pretrained_saved_model(config):
    """--saved_model, or the export of a pretraining run made here."""
    if config.saved_model:
        return config.saved_model
    model_dir = os.path.join(config.output_dir, "pretrain")
    export_dir = os.path.join(model_dir, "export")
    quick = config.pretrain_documents < 1000
    run_pretraining(PretrainConfig(
        model_dir=model_dir, export_dir=export_dir,
        num_train_steps=config.pretrain_steps,
        max_documents=config.pretrain_documents,
        log_steps=max(1, config.pretrain_steps // 5),
        **(dict(vocab_size=1000, dupe_factor=1, max_seq_length=64,
                max_predictions_per_seq=10) if quick else {})))
    return export_dir


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


def fine_tune(saved_model, task, config):
    """Held-out accuracy and final training loss of the classifier
    fine-tuned from `saved_model`."""
    train_x, train_y, test_x, test_y, names = task
    keras.utils.set_random_seed(config.seed)
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
    model = keras.Model(inputs, keras.layers.Dense(len(names))(features))
    model.compile(keras.optimizers.Adam(config.learning_rate),
                  keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True), metrics=["accuracy"])
    data = tf.data.Dataset.from_tensor_slices((train_x, train_y)).shuffle(
        len(train_y), seed=config.seed).repeat().batch(config.batch_size)
    started = time.time()
    history = model.fit(data, steps_per_epoch=config.steps, epochs=1,
                        verbose=0)
    seconds = time.time() - started
    _, accuracy = model.evaluate(test_x, test_y, batch_size=256, verbose=0)
    return {"held_out_accuracy": float(accuracy),
            "final_train_loss": float(history.history["loss"][-1]),
            "fine_tune_seconds": seconds}


def run(config):
    started = time.time()
    os.makedirs(config.output_dir, exist_ok=True)
    pretrained = pretrained_saved_model(config)
    if not tf.io.gfile.exists(os.path.join(pretrained, "saved_model.pb")):
        raise InputError(f"--saved_model {pretrained} holds no SavedModel")
    loaded = tf.saved_model.load(pretrained)
    if not hasattr(loaded, "vocab_file"):
        raise InputError(f"--saved_model {pretrained} has no vocab_file: "
                         f"export it with python -m train.export")
    task = make_task(config, loaded.vocab_file.asset_path.numpy().decode(),
                     bool(loaded.do_lower_case.numpy()))
    random = random_saved_model(
        pretrained, os.path.join(config.output_dir, "random_encoder"),
        config.seed)
    results = {"task": {"classes": task[4], "train_examples": len(task[1]),
                        "held_out_examples": len(task[3])},
               "settings": dataclasses.asdict(config)}
    for name, path in (("pretrained", pretrained), ("random", random)):
        results[name] = fine_tune(path, task, config)
    results["total_seconds"] = time.time() - started
    with open(os.path.join(config.output_dir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=2)
    print(f"Task: which of {', '.join(task[4])} a docstring comes from; "
          f"{len(task[1])} training, {len(task[3])} held-out examples "
          f"(chance {1 / len(task[4]):.2f}); {config.steps} steps of "
          f"{config.batch_size}, Adam lr {config.learning_rate}, "
          f"{config.pooling} pooling")
    for name in ("pretrained", "random"):
        r = results[name]
        print(f"  {name:10s} encoder: held-out accuracy "
              f"{r['held_out_accuracy']:.3f}  final train loss "
              f"{r['final_train_loss']:.3f}  ({r['fine_tune_seconds']:.0f}s)")
    print(f"Total {results['total_seconds']:.0f}s", flush=True)
    return results


def define_flags():
    defaults = FinetuneConfig()
    flags.DEFINE_string("output_dir", defaults.output_dir,
                        "Results, the random encoder and (without "
                        "--saved_model) the pretraining run.")
    flags.DEFINE_string("saved_model", None,
                        "An encoder SavedModel written by train.export "
                        "(default: pretrain one first).")
    flags.DEFINE_integer("pretrain_steps", defaults.pretrain_steps,
                         "Updates of the pretraining made without "
                         "--saved_model.")
    flags.DEFINE_integer("classes", defaults.classes,
                         "How many standard-library packages to tell apart.")
    flags.DEFINE_integer("train_per_class", defaults.train_per_class,
                         "Training examples per class (the held-out set "
                         "keeps all of its own).")
    flags.DEFINE_enum("pooling", defaults.pooling, ["mean", "pooled"],
                      "Classifier input: the masked mean of sequence_output, "
                      "or pooled_output.")
    flags.DEFINE_integer("steps", defaults.steps, "Fine-tuning updates.")
    flags.DEFINE_float("learning_rate", defaults.learning_rate,
                       "Fine-tuning learning rate (Adam).")
    flags.DEFINE_bool("quick", False, "A tiny run (seconds), for tests.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    base = FinetuneConfig.quick(f.output_dir) if f.quick else FinetuneConfig(
        output_dir=f.output_dir, pretrain_steps=f.pretrain_steps,
        classes=f.classes, steps=f.steps, learning_rate=f.learning_rate,
        train_per_class=f.train_per_class, pooling=f.pooling)
    config = dataclasses.replace(base, saved_model=f.saved_model)
    try:
        run(config)
    except InputError as error:
        sys.exit(f"Error: {error}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
