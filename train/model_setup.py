"""Which BERT a run trains, and whether its --model_dir holds that model.

Decided from a `PretrainConfig` before anything is written: the model's
config (from --bert_config_file, or --model_size and the vocabulary) and
whether a checkpoint already in --model_dir is of the same model.
"""

import json
import os

import tensorflow as tf

from train import modeling
from train import tokenization
from train.errors import InputError


def resolve_model(config, phases):
    """(BertConfig or None if it waits for a learnt vocabulary, vocab tokens
    or None)."""
    tokens = None
    if config.vocab_file:
        try:
            tokens = tokenization.read_vocab(config.vocab_file)
        except ValueError as error:
            raise InputError(str(error)) from None
    bert_config = None
    try:
        if config.bert_config_file:
            bert_config = modeling.BertConfig.from_json_file(
                config.bert_config_file)
        elif tokens is not None:
            bert_config = modeling.BertConfig.for_size(
                config.model_size_name, len(tokens))
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
    check_lengths(config, phases, bert_config)
    return bert_config, tokens


def check_lengths(config, phases, bert_config):
    """Every sequence length the run uses (each phase's; --max_seq_length
    when it evaluates) fits the model's position embeddings: those of
    `bert_config`, or of --model_size's BERT while the vocabulary is still
    to be learnt."""
    if bert_config is None:
        bert_config = modeling.BertConfig.for_size(config.model_size_name, 1)
    lengths = [p.seq_length for p in phases]
    if config.evaluates:
        lengths.append(config.max_seq_length)
    longest = max(lengths)
    if longest > bert_config.max_position_embeddings:
        raise InputError(
            f"Sequences of {longest} tokens exceed the model's "
            f"max_position_embeddings="
            f"{bert_config.max_position_embeddings}")


def saved_bert_config(model_dir):
    """The bert_config.json of a run in `model_dir` as a dict, or None."""
    path = os.path.join(model_dir, "bert_config.json")
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as fh:
        return json.load(fh)


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
        bert_config = modeling.BertConfig.for_size(
            config.model_size_name, saved.get("vocab_size", 1))
    wanted = bert_config.to_dict()
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted)
                         if saved.get(k) != wanted.get(k))
        raise InputError(
            f"--model_dir {model_dir} holds a checkpoint of another "
            f"model (differs in {', '.join(changed)}); use a new "
            f"--model_dir")
