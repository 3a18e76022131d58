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

Logging, summaries and checkpoints happen after the updates they are due at
(every `log_steps`, `save_checkpoints_steps` updates, and at the end of each
phase): one call of the compiled loop runs `steps_per_loop` updates, or fewer
when one of those is due sooner, so the intervals are the same for any
`steps_per_loop`.
"""

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time

from train import data
from train.config import InputError
from train.evaluation import scalar_summary as _scalar


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


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


def _intervals(config):
    """The update intervals of logs, checkpoints and (train_and_eval)
    evaluations."""
    result = [config.log_steps, config.save_checkpoints_steps]
    if config.mode == "train_and_eval" and config.eval_every_steps:
        result.append(config.eval_every_steps)
    return result


def _next_stop(step, end, config):
    """The update after which the loop next hands control back: the end of
    the phase, or the next update a log, checkpoint or evaluation is due at,
    at most steps_per_loop updates away."""
    stop = min(end, step + config.steps_per_loop)
    for every in _intervals(config):
        stop = min(stop, (step // every + 1) * every)
    return stop


def make_strategy(config):
    from tf_lamb.distribute import make_strategy as make
    try:
        return make(config.strategy, tpu=config.tpu,
                    num_gpus=config.num_gpus)
    except ValueError as error:
        raise InputError(str(error)) from None


@dataclasses.dataclass
class _Checked:
    """What the checks found: everything a run needs before it writes."""

    phases: list
    bert_config: object  # modeling.BertConfig, or None until a vocabulary
    source: object  # data.TextSource, or None with --train_files
    eval_files: tuple
    latest: object  # the newest checkpoint in --model_dir, or None


def _check_init_checkpoint(config, bert_config, resuming):
    """The --init_checkpoint must fit the model; checked on a model built
    for the check alone, so nothing is written or assigned first."""
    from train import checkpoints
    from train import modeling
    if not config.init_checkpoint or resuming:
        return
    if bert_config is None:
        raise InputError("--init_checkpoint needs the checkpoint's model: "
                         "give --bert_config_file, or --vocab_file with "
                         "--model_size")
    model = modeling.BertPretrainer(bert_config)
    model.build_for(config.max_seq_length, config.max_predictions_per_seq)
    try:
        checkpoints.check_checkpoint_fits(model, config.init_checkpoint)
    except ValueError as error:
        raise InputError(f"--init_checkpoint: {error}") from None


def _check(config, strategy):
    """Every check of the settings against the data, files and strategy;
    raises InputError before anything is written."""
    import tensorflow as tf
    from train import input_pipeline
    from train import modeling
    phases = config.phases()
    check_batch_sizes(config, phases, strategy.num_replicas_in_sync)
    if config.eval_batch_size % strategy.num_replicas_in_sync:
        raise InputError(
            f"--eval_batch_size={config.eval_batch_size} is not divisible "
            f"by the {strategy.num_replicas_in_sync} replica(s)")
    bert_config, _ = data.resolve_model(config, phases)
    latest = None
    if tf.io.gfile.isdir(config.model_dir):
        latest = tf.train.latest_checkpoint(config.model_dir)
    if bert_config is None and config.mode == "eval" and latest:
        saved = data.saved_bert_config(config.model_dir)
        if saved is not None:
            try:
                bert_config = modeling.BertConfig.from_dict(
                    saved, f"{config.model_dir}/bert_config.json")
            except ValueError as error:
                raise InputError(str(error)) from None
    if config.evaluates and bert_config is None:
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
        source = data.find_source(config)
        if source is None:
            phases = data.train_files(config, phases, bert_config)
    eval_files = ()
    if config.evaluates:
        try:
            eval_files = input_pipeline.check_files(
                config.eval_files, config.max_seq_length,
                config.max_predictions_per_seq, bert_config.vocab_size)
        except ValueError as error:
            raise InputError(f"--eval_files: {error}") from None
    data.check_model_dir(config, bert_config)
    _check_init_checkpoint(config, bert_config, resuming=bool(latest))
    return _Checked(phases=phases, bert_config=bert_config, source=source,
                    eval_files=eval_files, latest=latest)


@contextlib.contextmanager
def _reading(files, seq_length, predictions):
    """Turns an error from reading `files` into one DataError naming the
    bad file."""
    import tensorflow as tf
    from train import input_pipeline
    try:
        yield
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError,
            UnicodeDecodeError) as error:
        raise input_pipeline.data_error(
            error, files, seq_length, predictions) from None


def run_pretraining(config, strategy=None, record_files=None,
                    optimizer_fn=None):
    """Runs the job `config` describes; returns its final metrics.

    `config.mode` says what: `train` (the default), `eval` (evaluate the
    newest checkpoint in `model_dir`, else `init_checkpoint`, on
    `eval_files`), or `train_and_eval` (evaluate every `eval_every_steps`
    updates and at the end).

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
        A dict: `step` (updates done), `mlm_loss`, `mlm_accuracy`,
        `nsp_loss`, `nsp_accuracy` and `learning_rate` of the last logging
        interval (None when no update ran), `examples_per_second` over the
        updates of this call, `history` (one such dict per logging
        interval), `eval` (the newest evaluation's metrics, as in
        eval_results.txt, or None), `start_step`, `export_dir`,
        `vocab_file`, `bert_config` and `trainer` (the `trainer.Trainer`,
        for its model and optimizer).

    Raises:
        InputError: bad settings or data, before anything is written.
        input_pipeline.DataError: a record that cannot be read, found while
            training or evaluating (checkpoints saved before it are kept).
    """
    import keras
    import tensorflow as tf
    from train import checkpoints
    from train import evaluation
    from train import export
    from train import modeling
    from train import trainer as trainer_lib

    if strategy is None:
        strategy = make_strategy(config)
    checked = _check(config, strategy)
    phases, bert_config = checked.phases, checked.bert_config

    # -- from here on, files are written ---------------------------------------
    chief = trainer_lib.is_chief(strategy)
    model_dir = config.model_dir
    work_dir = model_dir if chief else tempfile.mkdtemp(prefix="worker_")
    if chief:
        tf.io.gfile.makedirs(model_dir)
    vocab_file = config.vocab_file
    if checked.source is not None:
        phases, vocab_file = data.prepare_examples(
            os.path.join(work_dir, "data"), checked.source, phases, config,
            bert_config)
    if bert_config is None:
        from train import create_pretraining_data as cpd
        bert_config = modeling.BertConfig.for_size(
            config.model_size_name, len(cpd.read_vocab(vocab_file)))
        data.check_model_dir(config, bert_config)
    keras.mixed_precision.set_global_policy(config.mixed_precision)
    if chief and config.trains:
        with tf.io.gfile.GFile(os.path.join(model_dir, "bert_config.json"),
                               "w") as fh:
            fh.write(bert_config.to_json_string())
        if vocab_file and os.path.abspath(vocab_file) != os.path.abspath(
                os.path.join(model_dir, "vocab.txt")):
            tf.io.gfile.copy(vocab_file, os.path.join(model_dir, "vocab.txt"),
                             overwrite=True)
        for name, text in (record_files or {}).items():
            with tf.io.gfile.GFile(os.path.join(model_dir, name), "w") as fh:
                fh.write(text)

    trainer = trainer_lib.Trainer(config, strategy, bert_config, phases,
                                  optimizer_fn)
    save_dir = model_dir if chief else os.path.join(work_dir, "checkpoints")
    manager = tf.train.CheckpointManager(
        trainer.checkpoint, save_dir, max_to_keep=config.keep_checkpoint_max)
    latest = checked.latest
    if latest:
        status = trainer.checkpoint.restore(latest)
        if config.trains:
            status.assert_existing_objects_matched()
        else:
            status.expect_partial()
        print(f"Resumed from {latest}" + (
            " (--init_checkpoint is only for a run's start: not loaded)"
            if config.init_checkpoint else ""), flush=True)
    elif config.init_checkpoint:
        variables, parameters = checkpoints.init_from_checkpoint(
            trainer.model, config.init_checkpoint)
        print(f"Initialised {variables} variables ({parameters:,} "
              f"parameters) from {config.init_checkpoint}", flush=True)
    start_step = int(trainer.step.numpy())

    evaluator = None
    if config.evaluates:
        evaluator = evaluation.Evaluator(
            trainer.model, strategy, checked.eval_files,
            config.eval_batch_size, config.max_seq_length,
            config.max_predictions_per_seq, max_steps=config.max_eval_steps,
            jit_compile=config.jit_compile)

    def evaluate(step):
        with _reading(checked.eval_files, config.max_seq_length,
                      config.max_predictions_per_seq):
            metrics = evaluator.evaluate(step)
        if chief:
            evaluation.write_eval_results(model_dir, metrics)
        return metrics

    def result(step, history, examples_per_second, eval_metrics,
               export_dir):
        last = history[-1] if history else {}
        return dict(
            {key: last.get(key) for key in (
                "mlm_loss", "mlm_accuracy", "nsp_loss", "nsp_accuracy",
                "learning_rate")},
            step=step, examples_per_second=examples_per_second,
            history=history, eval=eval_metrics, start_step=start_step,
            export_dir=export_dir, vocab_file=vocab_file,
            bert_config=bert_config, trainer=trainer)

    if config.mode == "eval":
        return result(start_step, [], None, evaluate(start_step), None)

    total = config.num_train_steps
    writer = (tf.summary.create_file_writer(os.path.join(model_dir, "train"))
              if chief else tf.summary.create_noop_writer())
    paths = [v.path for v in trainer.variables]
    params = sum(int(tf.size(v)) for v in trainer.variables)
    print(f"BERT {bert_config.num_hidden_layers} layers, hidden "
          f"{bert_config.hidden_size}, vocab {bert_config.vocab_size}: "
          f"{params:,} parameters; {config.strategy} strategy "
          f"({strategy.__class__.__name__}) with "
          f"{trainer.replicas} replica(s); steps {start_step} -> {total}",
          flush=True)

    if start_step >= total:
        print(f"Training is complete (step {start_step} of --num_train_steps="
              f"{total}); only the export is redone", flush=True)
    history, eval_metrics = [], None
    step = start_step
    boundaries = [0]
    for phase in phases:
        boundaries.append(boundaries[-1] + phase.steps)
    run_started, examples_seen = time.time(), 0
    while step < total:
        index = max(i for i in range(len(phases)) if boundaries[i] <= step)
        phase = phases[index]
        end = boundaries[index + 1]
        iterator = trainer.distributed_iterator(index, step - boundaries[index])
        if len(phases) > 1:
            print(f"Phase {index + 1}: steps {step} -> {end}, "
                  f"{phase.seq_length} tokens, batch {phase.batch_size}",
                  flush=True)
        trainer.reset_stats()
        interval_start, interval_step = time.time(), step
        while step < end:
            stop = _next_stop(step, end, config)
            with _reading(phase.files, phase.seq_length, phase.predictions):
                trainer.train_loop(iterator, stop - step)
            examples_seen += (stop - step) * phase.batch_size
            step = stop
            if step % config.log_steps == 0 or step == end:
                stats = trainer.read_stats()
                elapsed = time.time() - interval_start
                steps_done = step - interval_step
                rate = steps_done * phase.batch_size / max(elapsed, 1e-9)
                eta = (total - step) * elapsed / max(steps_done, 1)
                lr = trainer.learning_rate(step - 1)
                record = {"step": step, "mlm_loss": stats["mlm_loss"],
                          "nsp_loss": stats["nsp_loss"],
                          "mlm_accuracy": stats["mlm_accuracy"],
                          "nsp_accuracy": stats["nsp_accuracy"],
                          "learning_rate": lr, "examples_per_second": rate}
                history.append(record)
                if chief:
                    print(f"step {step:>6}/{total}  mlm_loss "
                          f"{stats['mlm_loss']:.4f}  nsp_loss "
                          f"{stats['nsp_loss']:.4f}  mlm_acc "
                          f"{stats['mlm_accuracy']:.4f}  lr {lr:.3e}  "
                          f"examples/s {rate:.1f}  eta {_format_eta(eta)}",
                          flush=True)
                with writer.as_default(step=step):
                    for name in ("mlm_loss", "nsp_loss", "mlm_accuracy",
                                 "nsp_accuracy", "learning_rate",
                                 "examples_per_second"):
                        _scalar(name, record[name])
                    _scalar("loss", record["mlm_loss"] + record["nsp_loss"])
                    for path, w, g, ratio in zip(
                            paths, stats["weight_norms"], stats["grad_norms"],
                            stats["trust_ratios"]):
                        _scalar(f"weight_norm/{path}", w)
                        _scalar(f"grad_norm/{path}", g)
                        if ratio is not None:
                            _scalar(f"trust_ratio/{path}", ratio)
                writer.flush()
                interval_start, interval_step = time.time(), step
            if step % config.save_checkpoints_steps == 0 or step == total:
                manager.save(checkpoint_number=step)
            if evaluator is not None and step < total and (
                    config.eval_every_steps
                    and step % config.eval_every_steps == 0):
                eval_metrics = evaluate(step)
                interval_start = time.time()
    train_seconds = time.time() - run_started
    if evaluator is not None:
        eval_metrics = evaluate(step)
    export_path = config.export_path
    if export_path and chief:
        export.export_saved_model(model_dir, export_path, overwrite=True,
                                  checkpoint=manager.latest_checkpoint,
                                  require_vocab=False)
        print(f"Exported the encoder to {export_path}", flush=True)
    if not chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    if history and chief:
        first, last = history[0], history[-1]
        print(f"MLM loss {first['mlm_loss']:.3f} (step {first['step']}) -> "
              f"{last['mlm_loss']:.3f} (step {last['step']}); MLM accuracy "
              f"{first['mlm_accuracy']:.3f} -> {last['mlm_accuracy']:.3f}",
              flush=True)
    return result(step, history, examples_seen / max(train_seconds, 1e-9),
                  eval_metrics, export_path)
