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

It prints a table and writes results.json into --output_dir. The tasks
and which documents the pretraining sees are in benchmarks.finetune_tasks,
the bag-of-words baseline in benchmarks.finetune_bag_of_words.
"""

import dataclasses
import json
import os
import sys
import time
from typing import Optional, Tuple

from absl import app
from absl import flags
import keras
import numpy as np
import tensorflow as tf

from benchmarks.finetune_bag_of_words import run_bag_of_words
from benchmarks.finetune_tasks import (
    Encoding, make_order_task, make_package_task, split_documents,
    write_pretraining_corpus)
from train import PretrainConfig, run_pretraining
from train.data import corpus
from train.interop import hub_module
from train.interop import init_checkpoints
from train.model import bert
from train.runtime.errors import InputError

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
    bert_config = bert.BertConfig.from_json_file(config_file)
    keras.utils.set_random_seed(seed)
    model = bert.BertPretrainer(bert_config)
    model.build_for(bert_config.max_position_embeddings, 1)
    hub_module.save_hub_object(hub_module.HubEncoder(
        model, init_checkpoints.google_variable_names(model), vocab_file,
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
