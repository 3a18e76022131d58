"""Held-out evaluation of a BertPretrainer, with the metrics of Google BERT's
run_pretraining.py (`--do_eval`).

`Evaluator` runs the model (training=False: no dropout) over TFRecords of
pretraining examples under any tf.distribute strategy.  Every replica
returns SUMS (weighted masked-LM loss, masked-LM weight, weighted correct
predictions, next-sentence loss, count and correct), which are added across
replicas and batches; the means are taken once at the end.  The result is
therefore the same on one device, under MirroredStrategy and under
MultiWorkerMirroredStrategy, whatever the batch size.

By default every record of the files is evaluated exactly once, in file
order.  The last global batch is filled up with padding examples of weight
zero (zero masked_lm_weights and a zero next-sentence weight), so that
every step is a full, statically shaped batch for every replica (as
MirroredStrategy and TPUs need) and the padding changes no sum.  With
`max_steps=N`, only the first N global batches (N * global_batch_size
records) are evaluated.

`write_eval_results` writes one evaluation's metrics as Google does
(`<model_dir>/eval_results.txt`), as TensorBoard scalars under
`<model_dir>/eval`, and prints them on one line.
"""

import math
import os
import time

import tensorflow as tf

from train.data import reading
from train.data.features import is_float, lengths, to_example
from train.loop import metrics
from train.loop.metrics import scalar_summary
from train.model import bert
from train.runtime import paths

# The sums each replica returns for its batch, added over replicas and steps.
SUM_NAMES = metrics.SUM_NAMES

# The per-example next-sentence weight added to each batch: 1 for a record,
# 0 for padding.
NSP_WEIGHT_KEY = "next_sentence_weights"


def padding_record(seq_length, max_predictions):
    """A serialized Example of the pretraining format whose every value is 0
    (so masked_lm_weights are 0: it adds nothing to the masked-LM sums)."""
    zeros = {name: [0.0 if is_float(name) else 0] * length
             for name, length in lengths(seq_length, max_predictions).items()}
    return to_example(zeros).SerializeToString()


def evaluation_sums(features, mlm_logits, nsp_logits):
    """The float32 sums of one batch (dict keyed by SUM_NAMES): those of
    training, with the next-sentence terms weighted by
    `features[NSP_WEIGHT_KEY]` so that padding examples count for nothing.
    """
    return bert.pretraining_losses(features, mlm_logits, nsp_logits,
                                       nsp_weights=features[NSP_WEIGHT_KEY])


def metrics_from_sums(sums, global_step):
    """Google run_pretraining's eval metrics from the accumulated sums.

    `loss` is masked_lm_loss + next_sentence_loss over the whole evaluation.
    (Google's Estimator reports the mean of the per-batch losses instead,
    which differs slightly when batches hold different numbers of masked
    tokens.)  A mean over nothing (no weight) is 0, as tf.metrics.mean's.
    """
    means = metrics.means_from_sums(sums)
    return {
        "global_step": int(global_step),
        "loss": means["loss"],
        "masked_lm_accuracy": means["mlm_accuracy"],
        "masked_lm_loss": means["mlm_loss"],
        "next_sentence_accuracy": means["nsp_accuracy"],
        "next_sentence_loss": means["nsp_loss"],
    }


class Evaluator:
    """Evaluates `model` on `files` under `strategy`.

    Arguments:
      model: a built `bert.BertPretrainer` whose variables were created
        under `strategy.scope()` (e.g. the training loop's model).
      strategy: the tf.distribute strategy of the model (None: the default
        strategy).
      files: TFRecord paths (already expanded, e.g. by
        `record_checks.check_files`), read in this order.
      global_batch_size: examples per step over all replicas; divisible by
        the number of replicas.
      seq_length, max_predictions: the records' max_seq_length and
        max_predictions_per_seq.
      max_steps: None evaluates every record once; N evaluates at most N
        global batches (the first N * global_batch_size records).
      jit_compile: compile the forward pass with XLA.

    Reading errors (tf.errors.OpError, e.g. DataLossError for a corrupt
    record) propagate from `num_examples` and `evaluate`.  Under
    MultiWorkerMirroredStrategy every worker must call `evaluate` (the sums
    are all-reduced across workers); each worker reads all the records and
    keeps its share of the batches.
    """

    def __init__(self, model, strategy, files, global_batch_size, seq_length,
                 max_predictions, max_steps=None, jit_compile=False):
        self.strategy = strategy or tf.distribute.get_strategy()
        self.replicas = self.strategy.num_replicas_in_sync
        self.files = [os.fspath(path) for path in files]
        if not self.files:
            raise ValueError("Evaluation needs at least one TFRecord file")
        for name, value in (("global_batch_size", global_batch_size),
                            ("seq_length", seq_length),
                            ("max_predictions", max_predictions)):
            if not isinstance(value, int) or isinstance(value, bool) or (
                    value < 1):
                raise ValueError(f"Evaluation {name} must be a positive "
                                 f"integer, got {value!r}")
        if global_batch_size % self.replicas:
            raise ValueError(
                f"The evaluation batch size {global_batch_size} is not "
                f"divisible by the {self.replicas} replica(s)")
        if max_steps is not None and (
                not isinstance(max_steps, int) or isinstance(max_steps, bool)
                or max_steps < 1):
            raise ValueError(f"Evaluation max_steps must be None or a "
                             f"positive integer, got {max_steps!r}")
        if not model.built:
            raise ValueError("The model must be built (BertPretrainer."
                             "build_for, under strategy.scope()) before it "
                             "is evaluated")
        self.model = model
        self.global_batch_size = global_batch_size
        self.seq_length = seq_length
        self.max_predictions = max_predictions
        self.max_steps = max_steps
        self._num_examples = None
        self._padding = padding_record(seq_length, max_predictions)
        self._forward = tf.function(self._replica_sums,
                                    jit_compile=jit_compile,
                                    reduce_retracing=True)
        self._step = tf.function(self._distributed_step)

    # -- sizes -------------------------------------------------------------

    @property
    def num_examples(self):
        """Records in the files (counted once, on first use; every record's
        checksum is verified on the way)."""
        if self._num_examples is None:
            records = tf.data.TFRecordDataset(self.files)
            count = int(records.reduce(tf.constant(0, tf.int64),
                                       lambda n, _: n + 1))
            if count == 0:
                raise ValueError(f"The evaluation files hold no record: "
                                 f"{', '.join(self.files)}")
            self._num_examples = count
        return self._num_examples

    @property
    def num_steps(self):
        """Global batches one evaluation runs."""
        steps = math.ceil(self.num_examples / self.global_batch_size)
        if self.max_steps is not None:
            steps = min(steps, self.max_steps)
        return steps

    # -- the compiled pieces -----------------------------------------------

    def _replica_sums(self, features):
        mlm_logits, nsp_logits = self.model(features, training=False)
        return evaluation_sums(features, mlm_logits, nsp_logits)

    def _distributed_step(self, iterator, totals):
        per_replica = self.strategy.run(self._forward,
                                        args=(next(iterator),))
        return {name: totals[name] + tf.cast(self.strategy.reduce(
            tf.distribute.ReduceOp.SUM, per_replica[name], axis=None),
            tf.float64) for name in SUM_NAMES}

    # -- data --------------------------------------------------------------

    def _dataset_fn(self, steps):
        files = list(self.files)
        total = steps * self.global_batch_size
        padding = self._padding
        seq_length, predictions = self.seq_length, self.max_predictions
        global_batch = self.global_batch_size

        def make(input_context):
            batch = input_context.get_per_replica_batch_size(global_batch)
            records = tf.data.TFRecordDataset(files).map(
                lambda record: (record, tf.constant(1.0)))
            fill = tf.data.Dataset.from_tensors(
                (tf.constant(padding), tf.constant(0.0))).repeat()
            # The same `total` records (real ones, then padding) on every
            # input pipeline, in per-replica batches; a pipeline keeps every
            # num_input_pipelines-th batch, so every worker runs exactly
            # `steps` steps and together they see each batch once.
            dataset = records.concatenate(fill).take(total)
            dataset = dataset.batch(batch, drop_remainder=True)
            if input_context.num_input_pipelines > 1:
                dataset = dataset.shard(input_context.num_input_pipelines,
                                        input_context.input_pipeline_id)

            def parse(serialized, weights):
                features = reading.parse_batch(serialized, seq_length,
                                                      predictions)
                features[NSP_WEIGHT_KEY] = weights
                return features

            dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=True)
            return dataset.prefetch(tf.data.AUTOTUNE)

        return make

    # -- evaluation --------------------------------------------------------

    def evaluate(self, global_step):
        """Runs one evaluation; returns Google's eval metrics (`global_step`,
        `loss`, `masked_lm_accuracy`, `masked_lm_loss`,
        `next_sentence_accuracy`, `next_sentence_loss`) plus `examples` (real
        examples evaluated) and `examples_per_second` (over the whole call,
        input included)."""
        started = time.perf_counter()
        steps = self.num_steps
        dataset = self.strategy.distribute_datasets_from_function(
            self._dataset_fn(steps))
        iterator = iter(dataset)
        totals = {name: tf.constant(0.0, tf.float64) for name in SUM_NAMES}
        for _ in range(steps):
            totals = self._step(iterator, totals)
        sums = {name: float(value.numpy()) for name, value in totals.items()}
        elapsed = time.perf_counter() - started
        metrics = metrics_from_sums(sums, global_step)
        examples = int(round(sums["nsp_count"]))
        metrics["examples"] = examples
        metrics["examples_per_second"] = examples / max(elapsed, 1e-9)
        return metrics


# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

RESULTS_FILE = "eval_results.txt"
EVAL_SUBDIR = "eval"

_writers = {}


def _format_value(value):
    # repr of a Python float reads back to the same float.
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def format_eval_results(metrics):
    """Google's eval_results.txt text: `key = value` lines sorted by key."""
    return "".join(f"{key} = {_format_value(metrics[key])}\n"
                   for key in sorted(metrics))


def read_eval_results(path):
    """Parses an eval_results.txt into {key: int or float}."""
    results = {}
    with tf.io.gfile.GFile(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            key, sep, value = line.partition(" = ")
            if not sep:
                raise ValueError(f"{path}:{number}: expected 'key = value', "
                                 f"got {line.rstrip()!r}")
            value = value.strip()
            try:
                results[key.strip()] = int(value)
            except ValueError:
                results[key.strip()] = float(value)
    return results


def write_eval_results(model_dir, metrics, echo=True):
    """Writes one evaluation's metrics (a dict from `Evaluator.evaluate`).

    - `<model_dir>/eval_results.txt`: `key = value` lines sorted by key, as
      Google's run_pretraining.py writes them.  Each call OVERWRITES the
      file, so it holds the newest evaluation only (as Google's does); the
      history is in the TensorBoard log.  The file is replaced atomically.
    - TensorBoard scalars under `<model_dir>/eval`, at step
      metrics["global_step"], one per other numeric key.
    - With `echo`, one line on stdout.

    Under MultiWorkerMirroredStrategy call it on the chief only.
    """
    step = int(metrics["global_step"])
    tf.io.gfile.makedirs(model_dir)
    path = paths.write_atomically(os.path.join(model_dir, RESULTS_FILE),
                                  format_eval_results(metrics))

    logdir = paths.absolute(os.path.join(model_dir, EVAL_SUBDIR))
    writer = _writers.get(logdir)
    if writer is None or not tf.io.gfile.isdir(logdir):
        # One events file per directory and process, however many evals.
        writer = tf.summary.create_file_writer(logdir)
        _writers[logdir] = writer
    with writer.as_default(step=step):
        for key in sorted(metrics):
            if key != "global_step":
                scalar_summary(key, metrics[key])
    writer.flush()

    if echo:
        parts = [f"step {step}"]
        for key in ("loss", "masked_lm_loss", "masked_lm_accuracy",
                    "next_sentence_loss", "next_sentence_accuracy"):
            if key in metrics:
                parts.append(f"{key} {metrics[key]:.4f}")
        if "examples" in metrics:
            parts.append(f"examples {metrics['examples']}")
        if "examples_per_second" in metrics:
            parts.append(f"examples/s {metrics['examples_per_second']:.1f}")
        print("eval: " + "  ".join(parts), flush=True)
    return path
