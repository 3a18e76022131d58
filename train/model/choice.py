"""Which BERT a run trains, and whether its --model_dir holds that model.

Decided from a `PretrainConfig` before anything is written: the model's
config (from --bert_config_file, or --model_size and the vocabulary) and
whether a checkpoint already in --model_dir is of the same model.
"""

import dataclasses

import tensorflow as tf

from train.data import tokenization
from train.model import bert
from train.runtime import run_dir
from train.runtime.errors import InputError


def resolve_model(config, phases, saved=None):
    """(BertConfig or None if it waits for a learnt vocabulary, vocab tokens
    or None). Every sequence length is checked against the model's
    positions: those of the flags' model, else of `saved` (a `ModelConfig`
    of the checkpoint in --model_dir), else of --model_size's BERT."""
    tokens = None
    if config.vocab_file:
        try:
            tokens = tokenization.read_vocab(config.vocab_file)
        except ValueError as error:
            raise InputError(str(error)) from None
    bert_config, source = None, None
    try:
        if config.bert_config_file:
            bert_config = bert.BertConfig.from_json_file(
                config.bert_config_file)
            source = config.bert_config_file
        elif tokens is not None:
            bert_config = bert.BertConfig.for_size(
                config.model_size_name, len(tokens))
            source = f"--model_size={config.model_size_name}"
    except ValueError as error:
        raise InputError(str(error)) from None
    if bert_config is not None and tokens is not None and (
            len(tokens) != bert_config.vocab_size):
        raise InputError(
            f"Vocab file {config.vocab_file} has {len(tokens)} tokens but the "
            f"model's vocab_size is {bert_config.vocab_size}: they do not "
            f"match")
    if config.train_files and bert_config is None:
        raise InputError("--train_files needs --vocab_file or "
                         "--bert_config_file (to know the vocabulary size)")
    if bert_config is not None:
        check_lengths(config, phases, ModelConfig(bert_config, source))
    else:
        check_lengths(config, phases, saved or ModelConfig(
            bert.BertConfig.for_size(config.model_size_name, 1),
            f"--model_size={config.model_size_name}"))
    return bert_config, tokens


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A model's BertConfig and where it was read from (for messages)."""

    bert_config: bert.BertConfig
    source: str


def check_lengths(config, phases, model):
    """Every sequence length the run uses (each phase's; --max_seq_length
    when it evaluates) fits the position embeddings of `model` (a
    ModelConfig); InputError naming the flag otherwise."""
    lengths = [(p.seq_length, "--max_seq_length" if i == 0
                else "--phase2_max_seq_length")
               for i, p in enumerate(phases)]
    if config.evaluates:
        lengths.append((config.max_seq_length, "--max_seq_length"))
    longest, flag = max(lengths)
    positions = model.bert_config.max_position_embeddings
    if longest > positions:
        raise InputError(
            f"{flag}={longest}: sequences of {longest} tokens exceed the "
            f"model's max_position_embeddings={positions} (of "
            f"{model.source})")


def saved_model_config(model_dir):
    """The ModelConfig of the bert_config.json of a run in `model_dir`, or
    None when it has none; InputError when it is not a BERT config."""
    values = saved_bert_config(model_dir)
    if values is None:
        return None
    path = run_dir.path(model_dir, run_dir.BERT_CONFIG)
    try:
        return ModelConfig(bert.BertConfig.from_dict(values, path), path)
    except ValueError as error:
        raise InputError(str(error)) from None


def saved_bert_config(model_dir):
    """The bert_config.json of a run in `model_dir` as a dict, or None."""
    return run_dir.read_json(model_dir, run_dir.BERT_CONFIG)


def check_model_dir(config, bert_config):
    """A checkpoint in --model_dir must be of the same model."""
    model_dir = config.model_dir
    if not tf.io.gfile.exists(model_dir):
        return
    if not tf.io.gfile.isdir(model_dir):
        raise InputError(f"--model_dir {model_dir} is not a directory")
    if tf.train.latest_checkpoint(model_dir) is None:
        return
    saved = saved_bert_config(model_dir)
    if saved is None:
        raise InputError(f"--model_dir {model_dir} holds a checkpoint but "
                         f"no bert_config.json: not a run of this program")
    if bert_config is None:
        # The vocabulary is still to be learnt: compare all but its size.
        bert_config = bert.BertConfig.for_size(
            config.model_size_name, saved.get("vocab_size", 1))
    wanted = bert_config.to_dict()
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted)
                         if saved.get(k) != wanted.get(k))
        raise InputError(
            f"--model_dir {model_dir} holds a checkpoint of another "
            f"model (differs in {', '.join(changed)}); use a new "
            f"--model_dir")
