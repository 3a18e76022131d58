"""`run_pretraining(config)`: the whole pretraining job, from Python.

    from train import PretrainConfig, run_pretraining
    metrics = run_pretraining(PretrainConfig(model_dir="runs/x",
                                             num_train_steps=20))
    metrics["mlm_loss"], metrics["examples_per_second"]

It is what `python -m train.pretrain` runs after turning its flags into a
`PretrainConfig`: check the settings and the data (raising InputError before
anything is written), make or reuse the examples, build the model and LAMB
under the strategy, resume from the newest checkpoint in `model_dir`, train
with logs, TensorBoard summaries and checkpoints, and export the encoder.

The training itself is train/loop/controller.py's: it runs the updates in
calls of the compiled loop and fires the actions (log, summaries,
checkpoints, evaluation) at their intervals, and handles preemption and
divergence (docs/failures.md). This module is the wiring: config ->
strategy -> data -> trainer -> controller -> result.
"""

import contextlib
import dataclasses
import functools
import json
import os

import keras
import tensorflow as tf

from train.data import masking
from train.data import record_checks
from train.data import sources
from train.data import tokenization
from train.interop import exports
from train.interop import init_checkpoints
from train.loop import actions
from train.loop import checkpoints
from train.loop import evaluation
from train.loop import mlperf_log
from train.loop import periodic_eval
from train.loop import target
from train.loop import schedule
from train.loop import trainer as trainer_lib
from train.loop.controller import Controller
from train.model import bert
from train.model import choice
from train.plan import accelerators
from train.plan import compile_plan
from train.runtime import cluster
from train.runtime import run_dir
from train.runtime import scratch
from train.runtime.errors import InputError


def check_batch_sizes(config, phases, replicas):
    k = config.accumulation.steps
    for i, phase in enumerate(phases):
        if phase.batch_size % (replicas * k):
            flag = "--train_batch_size" if i == 0 else (
                "--phase2_train_batch_size")
            raise InputError(
                f"{flag}={phase.batch_size} is not divisible by the "
                f"{replicas} replica(s) times --gradient_accumulation_steps="
                f"{k}")


@dataclasses.dataclass
class _Checked:
    """What the checks found: everything a run needs before it writes."""

    phases: list
    bert_config: object  # bert.BertConfig, or None until a vocabulary
    source: object  # sources.TextSource, or None with --train_files
    eval_files: tuple
    phase2_eval_files: tuple
    latest: object  # the newest checkpoint in --model_dir, or None
    # The schedule the checkpoint was trained with (get_config()), or None.
    saved_schedule: object = None


def _check_init_checkpoint(config, bert_config, resuming):
    """The --init_checkpoint must fit the model; checked on a model built
    for the check alone, so nothing is written or assigned first."""
    if not config.init_checkpoint or resuming:
        return
    if bert_config is None:
        raise InputError("--init_checkpoint needs the checkpoint's model: "
                         "give --bert_config_file, or --vocab_file with "
                         "--model_size")
    model = bert.BertPretrainer(bert_config)
    model.build_for(config.max_seq_length, config.max_predictions_per_seq)
    try:
        init_checkpoints.check_checkpoint_fits(model, config.init_checkpoint)
    except ValueError as error:
        raise InputError(f"--init_checkpoint: {error}") from None


def _check(config, strategy):
    """Every check of the settings against the data, files and strategy;
    raises InputError before anything is written."""
    phases = config.phases()
    check_batch_sizes(config, phases, strategy.num_replicas_in_sync)
    if config.eval_batch_size % strategy.num_replicas_in_sync:
        raise InputError(
            f"--eval_batch_size={config.eval_batch_size} is not divisible "
            f"by the {strategy.num_replicas_in_sync} replica(s)")
    listed = checkpoints.listed_checkpoints(config.model_dir)
    latest = listed[0] if listed else None
    # The checkpoint's own model: what --mode=eval evaluates, and what the
    # lengths are checked against when no flag names the model.
    saved = (choice.saved_model_config(config.model_dir) if latest
             else None)
    bert_config, _ = choice.resolve_model(config, phases, saved)
    if bert_config is None and config.mode == "eval" and saved:
        bert_config = saved.bert_config
    if config.eval_files and bert_config is None:
        raise InputError(
            "--eval_files needs the model's vocabulary: --vocab_file or "
            "--bert_config_file" + (", or a --model_dir with a checkpoint "
                                    "and its bert_config.json"
                                    if config.mode == "eval" else ""))
    if config.mode == "eval":
        if not latest and not config.init_checkpoint:
            raise InputError(f"Nothing to evaluate: --model_dir "
                             f"{config.model_dir} has no checkpoint and no "
                             f"--init_checkpoint is given")
    source = None
    if config.trains:
        source = sources.find_source(config)
        if source is None:
            phases = sources.train_files(config, phases, bert_config)
    eval_files, phase2_eval_files = _check_eval_files(config, phases,
                                                      bert_config)
    choice.check_model_dir(config, bert_config)
    _check_init_checkpoint(config, bert_config, resuming=bool(latest))
    if config.mlperf_log:
        mlperf_log.import_mllog()  # its extra is missing: say so first
    return _Checked(phases=phases, bert_config=bert_config, source=source,
                    eval_files=eval_files, phase2_eval_files=phase2_eval_files,
                    latest=latest,
                    saved_schedule=_saved_schedule(config.model_dir)
                    if latest else None)


def _check_eval_files(config, phases, bert_config):
    """The checked --eval_files and --phase2_eval_files, each at its
    phase's lengths."""
    checked = []
    for flag, patterns, phase in (
            ("--eval_files", config.eval_files, phases[0]),
            ("--phase2_eval_files", config.phase2_eval_files, phases[-1])):
        try:
            checked.append(record_checks.check_files(
                patterns, phase.seq_length, phase.predictions,
                bert_config.vocab_size) if patterns else ())
        except ValueError as error:
            raise InputError(f"{flag}: {error}") from None
    return checked


def _saved_schedule(model_dir):
    """The schedule.json of a run in `model_dir` as a dict, or None (a run
    of an earlier version wrote none; it only serves a warning)."""
    try:
        return run_dir.read_json(model_dir, run_dir.SCHEDULE)
    except (ValueError, tf.errors.OpError):
        return None


def _warn_if_schedule_changed(config, checked, trainer, start_step):
    """A resumed run goes on with the schedule of its own flags (see
    docs/pretraining.md); when that is not the one its checkpoint was
    trained with, the rate jumps, and the chief says so once."""
    if not (config.trains and checked.saved_schedule) or (
            not 0 < start_step < config.num_train_steps):
        return
    try:
        warning = schedule.change_warning(checked.saved_schedule,
                                          trainer.schedule, start_step)
    except (TypeError, ValueError):  # a schedule.json of another version
        return
    if warning:
        print(warning, flush=True)


@contextlib.contextmanager
def _reading(files, seq_length, predictions):
    """Turns an error from reading `files` into one DataError naming the
    bad file."""
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
            UnicodeDecodeError) as error:
        raise record_checks.data_error(
            error, files, seq_length, predictions) from None



def _prepare_data(config, checked, work_dir):
    """Makes the examples when the data is text (or reuses those made
    before); returns (phases with their files, vocab file, BertConfig,
    held-out examples or None)."""
    phases, bert_config = checked.phases, checked.bert_config
    vocab_file = config.vocab_file
    heldout = None
    if checked.source is not None:
        phases, vocab_file, heldout = sources.prepare_examples(
            run_dir.path(work_dir, run_dir.DATA), checked.source, phases, config,
            bert_config)
    if bert_config is None:
        bert_config = bert.BertConfig.for_size(
            config.model_size_name, len(tokenization.read_vocab(vocab_file)))
        choice.check_model_dir(config, bert_config)
    return phases, vocab_file, bert_config, heldout


def _masking_rule(config, vocab_file):
    """The rule of --dynamic_masking's masks (None without it), from the
    run's vocabulary."""
    if not config.dynamic_masking:
        return None
    # With --train_files, PretrainConfig requires --vocab_file; with text
    # the vocabulary is the run's own.
    return masking.MaskingRule.from_vocab_file(
        vocab_file, config.masked_lm_prob, config.whole_word_mask)


def _write_run_files(config, phases, bert_config, vocab_file, record_files):
    """Writes the model's config, the schedule, the vocabulary and
    `record_files` into model_dir (the chief only, once the checkpoint has
    been restored: a run that stops on a checkpoint it cannot read leaves
    the files of the run that wrote it as they were). Each file is written
    whole under a new name, then renamed over the old one."""
    files = dict(record_files or {})
    files[run_dir.BERT_CONFIG] = bert_config.to_json_string()
    files[run_dir.SCHEDULE] = json.dumps(trainer_lib.make_schedule(
        config, phases).get_config(), indent=2) + "\n"
    files[run_dir.CONFIG] = run_dir.config_text(config)
    run_dir.write(config.model_dir, files)
    run_dir.copy_vocab(config.model_dir, vocab_file)


def _evaluate_heldout(config, trainer, phase, heldout, chief):
    """The held-out examples' metrics beside their context-free baseline
    (printed by the chief); None without held-out examples."""
    if heldout is None:
        return None
    evaluator = evaluation.Evaluator(
        trainer.model, trainer.strategy, [heldout.file],
        config.eval_batch_size, phase.seq_length, phase.predictions,
        jit_compile=config.jit_compile)
    metrics = evaluator.evaluate(int(trainer.step.numpy()))
    baseline = heldout.baseline
    if chief:
        print(f"Held-out ({metrics['examples']} examples of "
              f"{heldout.documents} documents never trained on): MLM loss "
              f"{metrics['masked_lm_loss']:.3f} against "
              f"{baseline['masked_lm_unigram_cross_entropy']:.3f} for word "
              f"frequencies alone; MLM accuracy "
              f"{metrics['masked_lm_accuracy']:.3f} against "
              f"{baseline['masked_lm_most_frequent_accuracy']:.3f} for the "
              f"most frequent token; NSP accuracy "
              f"{metrics['next_sentence_accuracy']:.3f} against "
              f"{baseline['next_sentence_majority_accuracy']:.3f} for the "
              f"commoner label", flush=True)
    return dict(metrics, baseline=baseline)


def _restore_or_initialise(config, trainer, saved):
    """Resumes from the newest readable checkpoint in model_dir, else
    loads --init_checkpoint's weights; returns the update to start from."""
    latest = saved.restore_newest(config.model_dir,
                                  partial=not config.trains)
    if latest:
        print(f"Resumed from {latest}" + (
            " (--init_checkpoint is only for a run's start: not loaded)"
            if config.init_checkpoint else ""), flush=True)
    elif config.init_checkpoint:
        variables, parameters = init_checkpoints.init_from_checkpoint(
            trainer.model, config.init_checkpoint)
        print(f"Initialised {variables} variables ({parameters:,} "
              f"parameters) from {config.init_checkpoint}", flush=True)
    return int(trainer.step.numpy())


def _evaluation(config, checked, trainer, phases, heldout, work_dir,
                mlperf):
    """The run's periodic_eval.RunEvaluation, or None when the mode does not
    evaluate; during training it keeps the best checkpoint in
    <work_dir>/best (the chief's work_dir is model_dir)."""
    if not config.evaluates:
        return None
    sets = periodic_eval.eval_sets(config, phases, checked.eval_files,
                                   checked.phase2_eval_files, heldout)
    if not all(sets):
        raise InputError(
            "--mode=train_and_eval without --eval_files evaluates the "
            "run's held-out examples, and it has none: raise "
            "--heldout_share or give --eval_files")
    best = None
    if config.mode == "train_and_eval":
        best = checkpoints.BestCheckpoint(
            trainer, run_dir.path(work_dir, run_dir.BEST),
            run_dir.BEST_RECORD)
    return periodic_eval.RunEvaluation(
        config, trainer, phases, sets,
        lambda files, phase: _reading(files, phase.seq_length,
                                      phase.predictions),
        best, mlperf, trainer_lib.is_chief(trainer.strategy))


def _print_start(config, trainer, start_step):
    model = trainer.bert_config
    params = sum(int(tf.size(v)) for v in trainer.variables)
    total = config.num_train_steps
    print(f"BERT {model.num_hidden_layers} layers, hidden "
          f"{model.hidden_size}, vocab {model.vocab_size}: {params:,} "
          f"parameters; "
          f"{config.strategy} strategy ({trainer.strategy.__class__.__name__})"
          f" with {trainer.replicas} replica(s); steps {start_step} -> "
          f"{total}", flush=True)
    if start_step >= total:
        print(f"Training is complete (step {start_step} of --num_train_steps="
              f"{total}); only the export is redone", flush=True)


def _print_summary(history):
    """The MLM loss and accuracy of the first and last log intervals; one
    value each when there was only one interval."""
    if not history:
        return
    first, last = history[0], history[-1]
    if len(history) == 1:
        print(f"MLM loss {last['mlm_loss']:.3f}, MLM accuracy "
              f"{last['mlm_accuracy']:.3f} (step {last['step']})",
              flush=True)
        return
    print(f"MLM loss {first['mlm_loss']:.3f} (step {first['step']}) -> "
          f"{last['mlm_loss']:.3f} (step {last['step']}); MLM accuracy "
          f"{first['mlm_accuracy']:.3f} -> {last['mlm_accuracy']:.3f}",
          flush=True)


def _result(step, history, examples_per_second, eval_metrics, export_dir,
            **run):
    last = history[-1] if history else {}
    return dict({key: last.get(key) for key in (
        "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy",
        "learning_rate")}, step=step, examples_per_second=examples_per_second,
        history=history, eval=eval_metrics, export_dir=export_dir,
        skipped_updates=int(run["trainer"].skipped_updates.numpy()), **run)


def _controller(config, trainer, phases, saved, guard, evaluate, chief):
    """The controller, its log action (for the history) and its
    evaluation action (None without evaluations during training)."""
    writer = (tf.summary.create_file_writer(
        os.path.join(config.model_dir, "train")) if chief
        else tf.summary.create_noop_writer())
    log = actions.LogAction(trainer, config, writer, chief)
    due = [log, actions.CheckpointAction(saved, config)]
    periodic = None
    if evaluate and config.evaluates_periodically:
        periodic = actions.EvalAction(evaluate, config, log, phases, saved)
        due.append(periodic)
    return Controller(
        trainer, config, phases, due, saved, guard,
        lambda phase: _reading(phase.files, phase.seq_length,
                               phase.predictions)), log, periodic


def _train(config, trainer, phases, saved, evaluate, chief, start_step):
    """Trains from `start_step` to the end of the schedule (the controller,
    under the divergence guard), or to the evaluation that reached
    --stop_at_mlm_accuracy; returns the step reached, the log's history,
    the examples per second of this call and the EvalAction (None without
    evaluations during training)."""
    _print_start(config, trainer, start_step)
    with checkpoints.DivergenceGuard(trainer, saved, config) as guard:
        controller, log, periodic = _controller(
            config, trainer, phases, saved, guard, evaluate, chief)
        step = controller.train(start_step)
    return step, log.history, controller.examples_seen / max(
        controller.train_seconds, 1e-9), periodic


def _train_to_the_end(config, trainer, phases, saved, evaluate, chief,
                      start_step, mlperf):
    """Trains (unless an earlier invocation reached the target,
    train/loop/target.py), then evaluates once more unless the run stopped
    at an evaluation; the MLPerf log's run from run_start to run_stop.
    Returns (step, history, examples per second, the last evaluation's
    metrics, the target's record or None)."""
    before = target.reached_before(config, chief)
    if evaluate is not None:
        mlperf.hyperparameters(config, phases, trainer.replicas,
                               evaluate.examples_per_evaluation())
    mlperf.run_start(start_step)
    step, success = start_step, False
    try:
        history, examples_per_second, periodic = [], 0.0, None
        if before is None:
            step, history, examples_per_second, periodic = _train(
                config, trainer, phases, saved, evaluate, chief, start_step)
        if periodic is not None and periodic.finished:
            eval_metrics = periodic.newest
            record = {"step": step, "checkpoint": periodic.checkpoint,
                      "stop_at_mlm_accuracy": config.stop_at_mlm_accuracy,
                      "masked_lm_accuracy": eval_metrics["masked_lm_accuracy"]}
            if chief:
                target.write_record(config, step, eval_metrics,
                                    periodic.checkpoint)
                target.announce(record)
        else:
            eval_metrics = evaluate(step, last=True) if evaluate else None
            record = before
        success = record is not None or bool(eval_metrics and target.reached(
            config, eval_metrics["masked_lm_accuracy"]))
    finally:
        mlperf.run_stop(step, success)
    return step, history, examples_per_second, eval_metrics, record


def _export_encoder(config, saved):
    """Writes the encoder's SavedModel to `config.export_path` from the
    newest good checkpoint, through python -m train.export's code (a fresh
    float32 model)."""
    exports.export_saved_model(
        config.model_dir, config.export_path, overwrite=True,
        checkpoint=saved.newest, require_vocab=False)
    print(f"Exported the encoder to {config.export_path}", flush=True)


def plan_for_chip(config):
    """`--compile_for`: the run's training step compiled for the chip named
    (train.plan.compile_plan), reported; nothing is trained or written. Returns
    the plan."""
    phases = config.phases()
    bert_config, _ = choice.resolve_model(config, phases)
    if bert_config is None:
        bert_config = compile_plan.default_bert_config(config)
    try:
        return compile_plan.run(config, bert_config)
    except accelerators.CompilerMissing as error:
        raise InputError(f"--compile_for={config.compile_for}: {error}") \
            from None


def run_pretraining(config, strategy=None, record_files=None,
                    optimizer_fn=None):
    """Runs the job `config` describes; returns its final metrics.

    `config.mode` says what: train, eval or train_and_eval (see --mode).

    Args:
        config: A `train.PretrainConfig`.
        strategy: A `tf.distribute.Strategy` to use instead of the one
            `config.strategy` names.
        record_files: {file name: text} written into `model_dir` once the
            checks have passed (the command line records its flags).
        optimizer_fn: For comparisons: a function from the learning-rate
            schedule to a Keras optimizer used instead of `tf_lamb.Lamb`
            (the config's LAMB settings are then unused).

    Returns:
        A dict: `step` (updates done); `mlm_loss`, `mlm_accuracy`,
        `nsp_loss`, `nsp_accuracy`, `learning_rate` of the last logging
        interval (None if no update ran); `examples_per_second` (this
        call); `skipped_updates` (non-finite gradients, whole run);
        `history` (such a dict per logging interval); `eval` (the newest
        evaluation, as in eval_results.txt, or None); `evaluations` (this
        call's, with `seq_length` and whether each became the `best`);
        `target` (the evaluation that reached --stop_at_mlm_accuracy, or
        None); `start_step`, `export_dir`, `vocab_file`, `bert_config`,
        `trainer` (the `trainer.Trainer`: its model and optimizer).

    Raises (train.runtime.errors; docs/failures.md):
        InputError: bad settings or data, before anything is written.
        DataError: a record that cannot be read, found while training or
            evaluating (checkpoints saved before it are kept).
        Preempted: SIGTERM or SIGINT; a checkpoint was saved first.
        Interrupted: SIGTERM or SIGINT while this worker waited for the
            other workers of its multi_worker cluster (nothing written).
        DivergenceError: the loss diverged after every recovery trial.
        CheckpointError: a checkpoint that cannot be written, or none in
            model_dir that can be read.
    """
    if config.compile_for:
        return plan_for_chip(config)
    strategy = strategy or cluster.strategy_for(config)
    checked = _check(config, strategy)
    # -- from here on, files are written ---------------------------------------
    chief = trainer_lib.is_chief(strategy)
    # A non-chief's examples and checkpoint copies: in memory
    # (train/runtime/scratch.py).
    work_dir = config.model_dir if chief else scratch.memory_dir("worker")
    # The run's precision is Keras' global policy while it builds its
    # model; the caller's is given back when it returns (the model keeps
    # the policy it was built with).
    caller_policy = keras.mixed_precision.global_policy()
    mlperf = mlperf_log.NoLog()
    try:
        if chief:
            tf.io.gfile.makedirs(config.model_dir)
        mlperf = mlperf_log.open_log(config, checked.phases, chief)
        phases, vocab_file, bert_config, heldout = _prepare_data(
            config, checked, work_dir)
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        trainer = trainer_lib.Trainer(
            config, strategy, bert_config, phases, optimizer_fn,
            masking_rule=_masking_rule(config, vocab_file))
        saved = checkpoints.RunCheckpoints(
            trainer, config.model_dir if chief
            else os.path.join(work_dir, "checkpoints"),
            config.keep_checkpoint_max if chief else 1)
        start_step = _restore_or_initialise(config, trainer, saved)
        if chief and config.trains:
            _write_run_files(config, phases, bert_config, vocab_file,
                             record_files)
        if chief:
            _warn_if_schedule_changed(config, checked, trainer, start_step)
        evaluate = _evaluation(config, checked, trainer, phases, heldout,
                               work_dir, mlperf)
        result = functools.partial(
            _result, start_step=start_step, vocab_file=vocab_file,
            bert_config=bert_config, trainer=trainer)
        if config.mode == "eval":
            return result(start_step, [], None, evaluate.only(start_step),
                          None, heldout=None, target=None, evaluations=[])
        step, history, examples_per_second, eval_metrics, reached = (
            _train_to_the_end(config, trainer, phases, saved, evaluate,
                              chief, start_step, mlperf))
        heldout_metrics = _evaluate_heldout(config, trainer, phases[0],
                                            heldout, chief)
        if config.export_path and chief:
            _export_encoder(config, saved)
        if chief:
            _print_summary(history)
        return result(step, history, examples_per_second, eval_metrics,
                      config.export_path, heldout=heldout_metrics,
                      target=reached, evaluations=evaluate.history
                      if evaluate else [])
    finally:
        mlperf.close()
        keras.mixed_precision.set_global_policy(caller_policy)
        if not chief:
            scratch.remove(work_dir)
