"""MLPerf Training's log of a run (`--mlperf_log=FILE`), written with
`mlperf_logging.mllog` so that MLPerf's compliance checker reads it:

    python -m mlperf_logging.compliance_checker --usage training \
        --ruleset 5.0.0 FILE

The events are those MLPerf's BERT reference logs: the submission's
identity (benchmark `bert`, division `open`: this program is not the
closed reference), the hyperparameters the BERT rules name, `init_start`
and `init_stop`, `run_start`, a block between evaluations
(`block_start`/`block_stop`), each evaluation (`eval_start`,
`eval_accuracy`, `eval_stop`) and `run_stop` with its status. MLPerf BERT
counts training examples ("samples") where other benchmarks count epochs,
so every `epoch_num` is the examples trained on so far
(controller.examples_at). The status is `success` when the run reached
--stop_at_mlm_accuracy, else `aborted` (MLPerf's word for a run that ended
without reaching its target, however it ended).

`mlperf_logging` is an optional extra (`pip install -e '.[mlperf]'`); it is
imported only when a run asks for the log. The chief alone writes. The
file is written through tf.io.gfile (a bucket works), line by line, and
rewritten by each invocation: MLPerf's log describes one run from its
initialisation, and a resumed run is another.
"""

import logging

import tensorflow as tf

from train.loop import controller as controller_lib
from train.runtime.errors import InputError

# What the log says of the submission; the checker requires each.
BENCHMARK = "bert"
DIVISION = "open"
ORGANISATION = "tf_lamb"
# MLPerf BERT's target; the log names it beside the run's own.
MLPERF_TARGET = 0.720


def import_mllog():
    """mlperf_logging.mllog, or an InputError naming the extra."""
    try:
        from mlperf_logging import mllog  # pylint: disable=import-outside-toplevel
    except ImportError:
        raise InputError(
            "--mlperf_log needs the mlperf_logging package, which is not "
            "installed: pip install -e '.[mlperf]' (the mlperf extra), or "
            "pip install mlperf-logging") from None
    return mllog


class _GFileHandler(logging.Handler):
    """A logging handler that writes each record as a line of a file opened
    with tf.io.gfile, flushed at once (a run that dies keeps its lines)."""

    def __init__(self, path):
        super().__init__(logging.INFO)
        # ram:// appends to a file that exists (train/runtime/paths.py).
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
        self.file = tf.io.gfile.GFile(path, "w")

    def emit(self, record):
        self.file.write(self.format(record) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()
        super().close()


class NoLog:
    """What a run without --mlperf_log (or a worker that is not the chief)
    logs: nothing."""

    def hyperparameters(self, config, phases, replicas, eval_examples):
        del config, phases, replicas, eval_examples

    def run_start(self, step):
        del step

    def evaluation(self, step, accuracy, last):
        del step, accuracy, last

    def run_stop(self, step, success):
        del step, success

    def close(self):
        pass


class MlperfLog(NoLog):
    """Writes the run's events to `path` (see the module's docstring);
    `init_start` is logged when it is made."""

    def __init__(self, path, config, phases):
        mllog = import_mllog()
        self.constants = mllog.constants
        self.config = config
        self.phases = phases
        self._handler = _GFileHandler(path)
        logger = logging.Logger(f"tf_lamb.mlperf_log.{id(self)}")
        logger.setLevel(logging.INFO)
        logger.addHandler(self._handler)
        self.logger = mllog.mllog.MLLogger(logger=logger)
        self._block_start = None
        self._started = False
        c = self.constants
        self.logger.event(c.CACHE_CLEAR, value=False)  # caches are not
        # cleared: a run of this program is not a timed submission.
        self.logger.start(c.INIT_START)

    def _samples(self, step):
        return controller_lib.examples_at(step, self.phases)

    def hyperparameters(self, config, phases, replicas, eval_examples):
        """The submission and BERT's hyperparameters (phase 1's: MLPerf's
        BERT trains one phase)."""
        c, first = self.constants, phases[0]
        values = {
            c.SUBMISSION_BENCHMARK: BENCHMARK,
            c.SUBMISSION_DIVISION: DIVISION,
            c.SUBMISSION_ORG: ORGANISATION,
            c.SUBMISSION_PLATFORM: f"{replicas}x{config.strategy}",
            c.SUBMISSION_STATUS: "research",
            c.SEED: config.seed,
            c.GLOBAL_BATCH_SIZE: first.batch_size,
            c.GRADIENT_ACCUMULATION_STEPS: config.gradient_accumulation_steps,
            c.MAX_SEQUENCE_LENGTH: first.seq_length,
            "max_predictions_per_seq": first.predictions,
            c.OPT_BASE_LR: config.learning_rate,
            c.OPT_LAMB_EPSILON: config.epsilon,
            c.OPT_LAMB_BETA_1: config.beta_1,
            c.OPT_LAMB_BETA_2: config.beta_2,
            c.OPT_LAMB_WEIGHT_DECAY: config.weight_decay,
            c.OPT_LAMB_LR_DECAY_POLY_POWER: config.poly_power,
            c.OPT_LAMB_LR_MIN: config.end_learning_rate,
            c.OPT_LR_TRAINING_STEPS: config.num_train_steps,
            c.OPT_LR_WARMUP_STEPS: config.effective_warmup_steps,
            c.NUM_WARMUP_STEPS: config.effective_warmup_steps,
            c.START_WARMUP_STEP: 0,
            c.TRAIN_SAMPLES: self._samples(config.num_train_steps),
            c.EVAL_SAMPLES: eval_examples,
            "target_accuracy": config.stop_at_mlm_accuracy or MLPERF_TARGET,
        }
        for key, value in values.items():
            self.logger.event(key, value=value)

    def run_start(self, step):
        """init_stop, run_start and the first block, before the first
        update of this invocation."""
        c = self.constants
        self.logger.end(c.INIT_STOP)
        self.logger.start(c.RUN_START)
        self._started = True
        self._open_block(step)

    def _open_block(self, step):
        """A block from update `step` to the next evaluation (or the end)."""
        config = self.config
        end = controller_lib.next_evaluation(step, config, self.phases)
        end = min(end or config.num_train_steps, config.num_train_steps)
        if end <= step:
            return
        self._block_start = self._samples(step)
        self.logger.start(self.constants.BLOCK_START, metadata={
            self.constants.FIRST_EPOCH_NUM: self._block_start,
            self.constants.EPOCH_COUNT: self._samples(end) - self._samples(
                step)})

    def _close_block(self):
        if self._block_start is not None:
            self.logger.end(self.constants.BLOCK_STOP, metadata={
                self.constants.FIRST_EPOCH_NUM: self._block_start})
            self._block_start = None

    def evaluation(self, step, accuracy, last):
        """One evaluation after update `step`: the block that led to it
        ends, and the next one starts unless it is the `last`."""
        c, samples = self.constants, self._samples(step)
        self._close_block()
        self.logger.start(c.EVAL_START, metadata={c.EPOCH_NUM: samples})
        self.logger.event(c.EVAL_ACCURACY, value=float(accuracy),
                          metadata={c.EPOCH_NUM: samples})
        self.logger.end(c.EVAL_STOP, metadata={c.EPOCH_NUM: samples})
        if not last:
            self._open_block(step)

    def run_stop(self, step, success):
        """run_stop with MLPerf's status, once the run has started."""
        if not self._started:
            return
        c = self.constants
        self._close_block()
        self.logger.end(c.RUN_STOP, metadata={
            c.STATUS: c.SUCCESS if success else c.ABORTED,
            c.EPOCH_NUM: self._samples(step)})
        self._started = False

    def close(self):
        if self._handler is not None:
            self._handler.close()
            self._handler = None


def open_log(config, phases, chief):
    """The run's MLPerf log: an MlperfLog on the chief with --mlperf_log,
    else NoLog. Raises InputError when mlperf_logging is missing."""
    if not (config.mlperf_log and chief):
        return NoLog()
    return MlperfLog(config.mlperf_log, config, phases)
