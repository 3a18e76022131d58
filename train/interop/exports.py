"""A run's newest checkpoint (or a given one) exported as a TF Hub
SavedModel, a Google BERT folder or a Hugging Face folder: the
implementation of `python -m train.export` (train/export.py, where the
formats are described) and of `train.export_saved_model`,
`train.export_google_checkpoint` and `train.export_huggingface`.

Every check (the run, its config, vocabulary and checkpoint, the output
folder) passes before a file is written.
"""

import contextlib
import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from train.interop import hub_module
from train.interop import huggingface
from train.interop import init_checkpoints
from train.model import bert
from train.runtime import paths
from train.runtime import run_dir
from train.runtime.errors import InputError

GOOGLE_CHECKPOINT = "bert_model.ckpt"
FORMATS = ("saved_model", "google", "huggingface")


@dataclasses.dataclass
class TrainedRun:
    """A checkpoint of a run, loaded into a float32 model."""

    model: object  # bert.BertPretrainer
    bert_config: bert.BertConfig
    bert_config_file: str
    vocab_file: object  # str, or None when the run recorded none
    do_lower_case: bool
    checkpoint: str  # the checkpoint prefix


@contextlib.contextmanager
def _float32_policy():
    """The exported model is float32 whatever a run's mixed precision."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _vocab_file(model_dir, bert_config, required):
    path = run_dir.path(model_dir, run_dir.VOCAB)
    if not tf.io.gfile.exists(path):
        if required:
            raise InputError(f"{model_dir} has no vocab.txt: the export "
                             f"needs the vocabulary the run used")
        return None
    with tf.io.gfile.GFile(path) as fh:
        tokens = sum(1 for _ in fh)
    if tokens > bert_config.vocab_size:
        raise InputError(f"{path} has {tokens} tokens, more than the "
                         f"model's vocab_size {bert_config.vocab_size}")
    return path


def _fit_error(error, prefix, config_file):
    """ValueError of init_checkpoints.init_from_checkpoint -> one line."""
    lines = str(error).splitlines()
    problems = [line.strip() for line in lines[1:]]
    shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
    return InputError(f"Checkpoint {prefix} does not match {config_file}: "
                      f"{len(problems)} variables missing or of another "
                      f"shape ({shown})" if problems else
                      f"Checkpoint {prefix} does not match {config_file}: "
                      f"{lines[0]}")


def load_run(model_dir, checkpoint=None, require_vocab=True):
    """The newest checkpoint of `model_dir` (or `checkpoint`) as a
    `TrainedRun`; InputError naming the problem otherwise."""
    if not tf.io.gfile.isdir(model_dir):
        raise InputError(f"--model_dir {model_dir} is not a directory")
    config_file = run_dir.path(model_dir, run_dir.BERT_CONFIG)
    if not tf.io.gfile.exists(config_file):
        raise InputError(f"{model_dir} has no bert_config.json: not a run "
                         f"of train.pretrain")
    try:
        bert_config = bert.BertConfig.from_json_file(config_file)
    except ValueError as error:
        raise InputError(str(error).splitlines()[0]) from None
    if checkpoint:
        try:
            prefix = init_checkpoints.resolve_checkpoint(checkpoint)
        except ValueError as error:
            raise InputError(f"--checkpoint: {error}") from None
    else:
        prefix = tf.train.latest_checkpoint(model_dir)
        if not prefix:
            raise InputError(f"{model_dir} has no checkpoint to export")
    vocab_file = _vocab_file(model_dir, bert_config, require_vocab)
    with _float32_policy():
        model = bert.BertPretrainer(bert_config)
        model.build_for(bert_config.max_position_embeddings, 1)
    try:
        init_checkpoints.init_from_checkpoint(model, prefix)
    except ValueError as error:
        raise _fit_error(error, prefix, config_file) from None
    return TrainedRun(model=model, bert_config=bert_config,
                      bert_config_file=config_file, vocab_file=vocab_file,
                      do_lower_case=run_dir.recorded_setting(
                          model_dir, "do_lower_case", True),
                      checkpoint=prefix)


def _check_output_dir(output_dir, model_dir, overwrite):
    if paths.inside(model_dir, output_dir):
        raise InputError(f"--output_dir {output_dir} must not be or hold "
                         f"--model_dir {model_dir}")
    if tf.io.gfile.exists(output_dir):
        if not tf.io.gfile.isdir(output_dir):
            raise InputError(f"--output_dir {output_dir} is a file")
        if tf.io.gfile.listdir(output_dir) and not overwrite:
            raise InputError(f"--output_dir {output_dir} is not empty "
                             f"(--overwrite replaces its contents)")


def _clear(output_dir):
    if tf.io.gfile.exists(output_dir):
        tf.io.gfile.rmtree(output_dir)
    tf.io.gfile.makedirs(output_dir)


def _copy_run_files(run, output_dir):
    tf.io.gfile.copy(run.bert_config_file,
                     os.path.join(output_dir, "bert_config.json"),
                     overwrite=True)
    if run.vocab_file:
        tf.io.gfile.copy(run.vocab_file, os.path.join(output_dir,
                                                      "vocab.txt"),
                         overwrite=True)


def google_checkpoint_values(model):
    """{Google name: float32 array} of a BertPretrainer's weights, as
    Google's checkpoints hold them (next-sentence weights [2, hidden])."""
    values = {}
    for name, (variable, transposed) in init_checkpoints.google_variable_names(
            model).items():
        value = np.asarray(variable.numpy(), dtype=np.float32)
        values[name] = value.T if transposed else value
    return values


def write_google_checkpoint(values, prefix):
    """Writes {name: array} as a TF1 name-based checkpoint at `prefix`, as
    Google's BERT code saves one (no meta graph, no state file)."""
    with tf.Graph().as_default():
        assigns, feeds = [], {}
        var_list = {}
        for name, value in values.items():
            variable = tf.compat.v1.get_variable(
                name, shape=value.shape, dtype=tf.float32,
                initializer=tf.compat.v1.zeros_initializer())
            # Fed, not embedded as constants: a graph holding BERT-large's
            # weights would pass protobuf's 2 GB limit.
            placeholder = tf.compat.v1.placeholder(tf.float32, value.shape)
            assigns.append(variable.assign(placeholder))
            feeds[placeholder] = value
            var_list[name] = variable
        with tf.compat.v1.Session() as session:
            session.run(assigns, feed_dict=feeds)
            return tf.compat.v1.train.Saver(var_list).save(
                session, prefix, write_meta_graph=False, write_state=False)


def huggingface_values(model):
    """{transformers name: float32 array} of a BertPretrainer's weights, in
    transformers' layouts (dense weights [out, in])."""
    values = {}
    for name, (variable, transposed) in huggingface.variable_names(
            init_checkpoints.google_variable_names(model)).items():
        value = np.asarray(variable.numpy(), dtype=np.float32)
        values[name] = value.T if transposed else value
    return values


def _export(run, output_dir, fmt):
    _clear(output_dir)
    if fmt == "huggingface":
        huggingface.write(output_dir, huggingface_values(run.model),
                          run.bert_config, run.vocab_file, run.do_lower_case)
    elif fmt == "google":
        write_google_checkpoint(google_checkpoint_values(run.model),
                                os.path.join(output_dir, GOOGLE_CHECKPOINT))
        _copy_run_files(run, output_dir)
    else:
        root = hub_module.HubEncoder(
            run.model, init_checkpoints.google_variable_names(run.model),
            run.vocab_file, run.bert_config_file, run.do_lower_case)
        hub_module.save_hub_object(root, output_dir)
    return output_dir


def export(model_dir, output_dir, fmt="saved_model", checkpoint=None,
           overwrite=False, require_vocab=True):
    """Exports a checkpoint of `model_dir` to `output_dir` in `fmt`
    ("saved_model", "google" or "huggingface"); every check passes before
    a file is written.  Returns output_dir."""
    if fmt not in FORMATS:
        raise InputError(f"--format must be one of {list(FORMATS)}, got "
                         f"{fmt!r}")
    _check_output_dir(output_dir, model_dir, overwrite)
    if fmt == "huggingface":
        try:
            huggingface.check_available()
        except ValueError as error:
            raise InputError(str(error)) from None
    run = load_run(model_dir, checkpoint, require_vocab)
    return _export(run, output_dir, fmt)


def export_saved_model(model_dir, output_dir, checkpoint=None,
                       overwrite=False, require_vocab=True):
    """The encoder of a run's checkpoint as a TF Hub-style SavedModel (see
    train/interop/hub_module.py).  With `require_vocab=False` (the end of a run
    trained from TFRecords without --vocab_file) a run without vocab.txt
    is exported without `vocab_file`."""
    return export(model_dir, output_dir, "saved_model", checkpoint,
                  overwrite, require_vocab)


def export_google_checkpoint(model_dir, output_dir, checkpoint=None,
                             overwrite=False):
    """A run's checkpoint as a Google BERT folder: bert_model.ckpt.*,
    bert_config.json, vocab.txt."""
    return export(model_dir, output_dir, "google", checkpoint, overwrite)


def export_huggingface(model_dir, output_dir, checkpoint=None,
                       overwrite=False):
    """A run's checkpoint as a Hugging Face folder (config.json,
    model.safetensors, tokenizer files) for transformers and KerasHub."""
    return export(model_dir, output_dir, "huggingface", checkpoint,
                  overwrite)
