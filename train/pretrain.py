r"""Pretrain a BERT encoder (masked LM + next sentence) with tf_lamb.Lamb.

With no flag at all it pretrains a tiny BERT on CPU in a few minutes, on a
corpus built on the fly from the docstrings of the Python standard library
(no download), and leaves in --model_dir (default runs/pretrain):

  bert_config.json, vocab.txt   the model and its WordPiece vocabulary
  data/                         the generated TFRecords (reused next time)
  ckpt-*                        checkpoints (a second run resumes from them)
  train/                        TensorBoard events (losses, accuracies,
                                learning rate, examples/s, trust ratios)
  export/                       SavedModel of the encoder; signature
                                serving_default(input_ids, input_mask,
                                segment_ids) -> sequence_output,
                                pooled_output

Every --log_steps updates it prints the step, MLM and NSP loss, MLM
accuracy, learning rate, examples/s and ETA, and writes them as TensorBoard
scalars together with, per variable, `weight_norm/<path>` (||w||),
`grad_norm/<path>` (||g||, g a replica's gradient of the mean loss, RMS over
replicas and micro-batches) and `trust_ratio/<path>`, LAMB's phi =
||w|| / ||r|| of the last update (`tf_lamb.Lamb.trust_ratios`).

Training runs in a custom loop: `strategy.run` of a replica step inside a
tf.function; with --jit_compile the forward and backward pass (and LAMB's
update) are XLA programs.  A run resumes from the newest checkpoint in
--model_dir (weights, optimizer slots, step; the data order is replayed), so
a killed run loses at most --save_checkpoints_steps updates.

Your own data replaces the default corpus with --input_file (text: one
sentence per line, blank line between documents), --train_files (TFRecords
from `python -m train.create_pretraining_data`) or --tfds_name.

Examples:
  python -m train.pretrain
  python -m train.pretrain --model_size=base --train_files='data/*.tfrecord' \
      --vocab_file=vocab.txt --train_batch_size=8192 --learning_rate=6e-3 \
      --num_train_steps=7038 --warmup_steps=2000 --phase2_steps=1564 \
      --phase2_train_files='data512/*.tfrecord' --phase2_max_seq_length=512 \
      --strategy=tpu --tpu=my-tpu --mixed_precision=mixed_bfloat16
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags

from train import create_pretraining_data as cpd

FLAGS = flags.FLAGS

STRATEGY_NAMES = ("one_device", "mirrored", "multi_worker", "tpu")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODEL_SIZE_NAMES = ("tiny", "mini", "small", "medium", "base", "large")


def define_flags():
    # -- where things run ----------------------------------------------------
    flags.DEFINE_enum("strategy", "one_device", STRATEGY_NAMES,
                      "tf.distribute strategy. multi_worker reads the "
                      "cluster from the TF_CONFIG environment variable.")
    flags.DEFINE_string("tpu", None,
                        "TPU name or grpc:// address (only with "
                        "--strategy=tpu); empty: TPU_NAME or the local TPU "
                        "VM.")
    flags.DEFINE_integer("num_gpus", None,
                         "GPUs to use with one_device/mirrored (0: the "
                         "CPU); default: all visible GPUs, else the CPU.")
    # -- model ---------------------------------------------------------------
    flags.DEFINE_enum("model_size", "tiny", MODEL_SIZE_NAMES,
                      "Preset BERT size (layers/hidden/heads): tiny 2/128/2, "
                      "mini 4/256/4, small 4/512/8, medium 8/512/8, base "
                      "12/768/12, large 24/1024/16. The vocabulary size "
                      "comes from the vocabulary. Not with "
                      "--bert_config_file.")
    flags.DEFINE_string("bert_config_file", None,
                        "BERT config JSON in Google's format (vocab_size, "
                        "hidden_size, num_hidden_layers, ...); replaces "
                        "--model_size.")
    # -- data ----------------------------------------------------------------
    flags.DEFINE_list("train_files", None,
                      "Comma-separated globs of TFRecord files of "
                      "pretraining examples (Google BERT format, e.g. from "
                      "train.create_pretraining_data) with "
                      "--max_seq_length tokens. Needs --vocab_file or "
                      "--bert_config_file.")
    flags.DEFINE_list("phase2_train_files", None,
                      "Like --train_files, for phase 2 (examples of "
                      "--phase2_max_seq_length tokens).")
    flags.DEFINE_list("input_file", None,
                      "Comma-separated globs of text files (one sentence "
                      "per line, blank line between documents) turned into "
                      "examples before training, instead of the default "
                      "corpus.")
    flags.DEFINE_string("tfds_name", None,
                        "A tensorflow-datasets text dataset already present "
                        "in --tfds_data_dir (e.g. wikipedia/20230601.en), "
                        "turned into examples before training. Needs the "
                        "tensorflow-datasets package.")
    flags.DEFINE_string("tfds_split", "train", "Split of --tfds_name.")
    flags.DEFINE_string("tfds_data_dir", None,
                        "tensorflow-datasets data directory (default: "
                        "TFDS's own, ~/tensorflow_datasets).")
    flags.DEFINE_string("tfds_text_key", "text",
                        "Feature of --tfds_name that holds the text.")
    flags.DEFINE_integer("max_documents", 100000,
                         "Most documents read from --tfds_name.")
    flags.DEFINE_string("vocab_file", None,
                        "WordPiece vocabulary (one token per line). "
                        "Default: learnt from the text, or required with "
                        "--train_files unless --bert_config_file gives the "
                        "size.")
    cpd.define_flags(seed_flag=False)
    flags.DEFINE_integer("shuffle_buffer", 10000,
                         "Examples in the tf.data shuffle buffer.")
    # -- schedule ------------------------------------------------------------
    flags.DEFINE_integer("train_batch_size", 32,
                         "Global batch size of one optimizer update (all "
                         "replicas and accumulation steps together).")
    flags.DEFINE_integer("gradient_accumulation_steps", 1,
                         "Micro-batches per optimizer update: each replica "
                         "runs train_batch_size / (replicas * this) "
                         "examples at a time.")
    flags.DEFINE_integer("num_train_steps", 500,
                         "Optimizer updates in total (phase 2 included).")
    flags.DEFINE_float("learning_rate", 1e-2, "Peak learning rate.")
    flags.DEFINE_integer("warmup_steps", 50,
                         "Updates of linear warmup, after which the rate "
                         "decays polynomially to --end_learning_rate.")
    flags.DEFINE_float("end_learning_rate", 0.0,
                       "Learning rate at the end of each phase.")
    flags.DEFINE_float("poly_power", 1.0,
                       "Power of the polynomial decay (1: linear).")
    flags.DEFINE_integer("phase2_steps", 0,
                         "The last this many of --num_train_steps run on "
                         "--phase2_max_seq_length tokens with their own "
                         "warmup and decay (the LAMB paper's 128 -> 512 "
                         "schedule); 0: one phase.")
    flags.DEFINE_integer("phase2_max_seq_length", 512,
                         "Tokens per example in phase 2.")
    flags.DEFINE_integer("phase2_max_predictions_per_seq", 80,
                         "Masked-LM predictions per example in phase 2.")
    flags.DEFINE_integer("phase2_train_batch_size", None,
                         "Global batch size in phase 2 (default: "
                         "--train_batch_size).")
    flags.DEFINE_float("phase2_learning_rate", None,
                       "Peak learning rate of phase 2 (default: "
                       "--learning_rate).")
    flags.DEFINE_integer("phase2_warmup_steps", 0,
                         "Warmup updates at the start of phase 2.")
    # -- optimizer (tf_lamb.Lamb) ---------------------------------------------
    flags.DEFINE_float("beta_1", 0.9, "LAMB: decay of the first moment.")
    flags.DEFINE_float("beta_2", 0.999, "LAMB: decay of the second moment.")
    flags.DEFINE_float("epsilon", 1e-6,
                       "LAMB: added to sqrt(v_hat) (BERT uses 1e-6).")
    flags.DEFINE_float("weight_decay", 0.01,
                       "LAMB: weight decay rate inside the update (0: "
                       "none).")
    flags.DEFINE_list("exclude_from_weight_decay",
                      ["LayerNorm", "layer_norm", "bias"],
                      "LAMB: regular expressions; variables whose path "
                      "matches one get no weight decay.")
    flags.DEFINE_list("exclude_from_layer_adaptation", None,
                      "LAMB: regular expressions; variables whose path "
                      "matches one get no trust ratio (default: the "
                      "--exclude_from_weight_decay list).")
    flags.DEFINE_float("max_trust_ratio", None,
                       "LAMB: upper bound of the trust ratio (default: "
                       "none).")
    flags.DEFINE_bool("bias_correction", True,
                      "LAMB: Adam-style bias correction of the moments.")
    flags.DEFINE_float("global_clipnorm", 1.0,
                       "Clip the gradients of all variables jointly to this "
                       "norm (BERT: 1.0); 0 turns clipping off.")
    flags.DEFINE_float("clipnorm", None,
                       "Clip each variable's gradient to this norm instead "
                       "of --global_clipnorm.")
    flags.DEFINE_float("clipvalue", None,
                       "Clip each gradient element to [-clipvalue, "
                       "clipvalue] instead of --global_clipnorm.")
    flags.DEFINE_bool("use_ema", False,
                      "LAMB: keep an exponential moving average of the "
                      "weights.")
    flags.DEFINE_float("ema_momentum", 0.99, "LAMB: EMA momentum.")
    flags.DEFINE_integer("ema_overwrite_frequency", None,
                         "LAMB: overwrite the weights with their average "
                         "every this many updates (needs --use_ema).")
    flags.DEFINE_float("loss_scale_factor", None,
                       "LAMB: a static loss scale; the loss is multiplied "
                       "by it and the gradients divided by it (for "
                       "mixed_float16, dynamic scaling is used instead).")
    # -- performance -----------------------------------------------------------
    flags.DEFINE_enum("mixed_precision", "float32", PRECISIONS,
                      "Keras dtype policy. mixed_float16 scales the loss "
                      "(keras LossScaleOptimizer); TPUs want "
                      "mixed_bfloat16.")
    flags.DEFINE_bool("jit_compile", False,
                      "Compile the model's forward and backward pass and "
                      "the LAMB update with XLA.")
    # -- output ------------------------------------------------------------------
    flags.DEFINE_string("model_dir", "runs/pretrain",
                        "Checkpoints, TensorBoard events, config, vocabulary "
                        "and generated data. A run resumes from the last "
                        "checkpoint found here.")
    flags.DEFINE_integer("save_checkpoints_steps", 100,
                         "Save a checkpoint every this many updates (and at "
                         "the end).")
    flags.DEFINE_integer("keep_checkpoint_max", 3,
                         "Newest checkpoints kept.")
    flags.DEFINE_integer("log_steps", 50,
                         "Print progress and write summaries every this "
                         "many updates.")
    flags.DEFINE_string("export_dir", None,
                        "Where the encoder's SavedModel is written at the "
                        "end (default: <model_dir>/export; 'none': no "
                        "export).")
    flags.DEFINE_integer("seed", 42,
                         "Seed of initialisation, dropout, data order and "
                         "generated examples.")


class InputError(ValueError):
    """Bad flags or data; the message names the problem."""


@dataclasses.dataclass
class Phase:
    steps: int
    seq_length: int
    predictions: int
    batch_size: int
    files: list = None


# ---------------------------------------------------------------------------
# Checks made before anything is written
# ---------------------------------------------------------------------------


def _present(name):
    return FLAGS[name].present


def check_flags():
    """InputError for unknown, contradictory or impossible flag values."""
    f = FLAGS
    sources = [n for n in ("train_files", "input_file", "tfds_name")
               if getattr(f, n)]
    if len(sources) > 1:
        raise InputError(f"Give at most one of --train_files, --input_file "
                         f"and --tfds_name (got {', '.join(sources)})")
    if f.bert_config_file and _present("model_size"):
        raise InputError("--model_size and --bert_config_file contradict "
                         "each other; give one")
    if f.tpu and f.strategy != "tpu":
        raise InputError(f"--tpu needs --strategy=tpu (got --strategy="
                         f"{f.strategy})")
    if f.num_gpus is not None and f.strategy in ("multi_worker", "tpu"):
        raise InputError(f"--num_gpus is for one_device/mirrored, not "
                         f"--strategy={f.strategy}")
    if f.mixed_precision == "mixed_float16" and f.strategy == "tpu":
        raise InputError("TPUs do not run float16; use "
                         "--mixed_precision=mixed_bfloat16")
    positive = ("train_batch_size", "gradient_accumulation_steps",
                "num_train_steps", "save_checkpoints_steps", "log_steps",
                "keep_checkpoint_max", "shuffle_buffer")
    for name in positive:
        if getattr(f, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(f, name)}")
    if f.phase2_steps < 0 or f.phase2_steps >= f.num_train_steps:
        raise InputError(
            f"--phase2_steps must be in [0, num_train_steps="
            f"{f.num_train_steps}), got {f.phase2_steps}")
    phase1 = f.num_train_steps - f.phase2_steps
    if not 0 <= f.warmup_steps <= phase1:
        raise InputError(f"--warmup_steps must be in [0, {phase1}] (the "
                         f"updates of phase 1), got {f.warmup_steps}")
    if not 0 <= f.phase2_warmup_steps <= max(f.phase2_steps, 0):
        raise InputError(f"--phase2_warmup_steps must be in [0, "
                         f"phase2_steps={f.phase2_steps}], got "
                         f"{f.phase2_warmup_steps}")
    if f.phase2_steps == 0:
        for name in ("phase2_train_files", "phase2_train_batch_size",
                     "phase2_learning_rate"):
            if getattr(f, name) is not None:
                raise InputError(f"--{name} needs --phase2_steps > 0")
    if f.train_files and f.phase2_steps and not f.phase2_train_files:
        raise InputError("--train_files with --phase2_steps needs "
                         "--phase2_train_files (examples of "
                         "--phase2_max_seq_length tokens)")
    if f.phase2_train_files and not f.train_files:
        raise InputError("--phase2_train_files needs --train_files")
    if f.learning_rate <= 0 or (f.phase2_learning_rate is not None
                                and f.phase2_learning_rate <= 0):
        raise InputError("Learning rates must be > 0")
    if f.end_learning_rate < 0 or f.end_learning_rate > f.learning_rate:
        raise InputError(f"--end_learning_rate must be in [0, "
                         f"learning_rate], got {f.end_learning_rate}")
    if f.poly_power <= 0:
        raise InputError(f"--poly_power must be > 0, got {f.poly_power}")
    for name, value in (("beta_1", f.beta_1), ("beta_2", f.beta_2)):
        if not 0 <= value < 1:
            raise InputError(f"--{name} must be in [0, 1), got {value}")
    for name in ("epsilon", "weight_decay"):
        if getattr(f, name) < 0:
            raise InputError(f"--{name} must be >= 0")
    if f.max_trust_ratio is not None and f.max_trust_ratio <= 0:
        raise InputError(f"--max_trust_ratio must be > 0, got "
                         f"{f.max_trust_ratio}")
    clips = [n for n in ("clipnorm", "clipvalue") if getattr(f, n)]
    if _present("global_clipnorm") and f.global_clipnorm:
        clips.append("global_clipnorm")
    if len(clips) > 1:
        raise InputError(f"Give one gradient clipping flag, not "
                         f"{', '.join('--' + c for c in clips)}")
    for name in ("clipnorm", "clipvalue", "global_clipnorm"):
        value = getattr(f, name)
        if value is not None and value < 0:
            raise InputError(f"--{name} must be >= 0, got {value}")
    if f.loss_scale_factor is not None:
        if f.loss_scale_factor <= 0:
            raise InputError(f"--loss_scale_factor must be > 0, got "
                             f"{f.loss_scale_factor}")
        if f.mixed_precision == "mixed_float16":
            raise InputError("--loss_scale_factor and "
                             "--mixed_precision=mixed_float16 (dynamic loss "
                             "scaling) contradict each other; give one")
    if f.ema_overwrite_frequency is not None and not f.use_ema:
        raise InputError("--ema_overwrite_frequency needs --use_ema")
    if not 0 <= f.ema_momentum <= 1:
        raise InputError(f"--ema_momentum must be in [0, 1], got "
                         f"{f.ema_momentum}")
    import re
    for name in ("exclude_from_weight_decay",
                 "exclude_from_layer_adaptation"):
        for pattern in getattr(f, name) or ():
            try:
                re.compile(pattern)
            except re.error as error:
                raise InputError(f"--{name}: invalid regular expression "
                                 f"{pattern!r}: {error}") from None
    try:
        cpd.check_flags(f.max_seq_length, f.max_predictions_per_seq,
                        f.masked_lm_prob, f.short_seq_prob, f.dupe_factor,
                        f.vocab_size)
    except ValueError as error:
        raise InputError(str(error)) from None
    if f.phase2_steps:
        try:
            cpd.check_flags(f.phase2_max_seq_length,
                            f.phase2_max_predictions_per_seq,
                            f.masked_lm_prob, f.short_seq_prob,
                            f.dupe_factor, f.vocab_size)
        except ValueError as error:
            raise InputError(f"phase 2: {error} (--phase2_max_seq_length="
                             f"{f.phase2_max_seq_length}, "
                             f"--phase2_max_predictions_per_seq="
                             f"{f.phase2_max_predictions_per_seq})") from None
    if f.phase2_train_batch_size is not None and (
            f.phase2_train_batch_size < 1):
        raise InputError("--phase2_train_batch_size must be >= 1")
    if f.export_dir and f.export_dir != "none" and os.path.abspath(
            f.export_dir) == os.path.abspath(f.model_dir):
        raise InputError("--export_dir must differ from --model_dir")


def phases():
    f = FLAGS
    result = [Phase(f.num_train_steps - f.phase2_steps, f.max_seq_length,
                    f.max_predictions_per_seq, f.train_batch_size)]
    if f.phase2_steps:
        result.append(Phase(f.phase2_steps, f.phase2_max_seq_length,
                            f.phase2_max_predictions_per_seq,
                            f.phase2_train_batch_size or f.train_batch_size))
    return result


def check_batch_sizes(phase_list, replicas):
    k = FLAGS.gradient_accumulation_steps
    for i, phase in enumerate(phase_list):
        if phase.batch_size % (replicas * k):
            flag = "--train_batch_size" if i == 0 else (
                "--phase2_train_batch_size")
            raise InputError(
                f"{flag}={phase.batch_size} is not divisible by the "
                f"{replicas} replica(s) times --gradient_accumulation_steps="
                f"{k}")


def resolve_model(phase_list):
    """(BertConfig or None if it waits for a learnt vocabulary, vocab
    tokens or None)."""
    from train import modeling
    f = FLAGS
    tokens = None
    if f.vocab_file:
        try:
            tokens = cpd.read_vocab(f.vocab_file)
        except ValueError as error:
            raise InputError(str(error)) from None
    config = None
    try:
        if f.bert_config_file:
            config = modeling.BertConfig.from_json_file(f.bert_config_file)
        elif tokens is not None:
            config = modeling.BertConfig.for_size(f.model_size, len(tokens))
    except ValueError as error:
        raise InputError(str(error)) from None
    if config is not None and tokens is not None and (
            len(tokens) != config.vocab_size):
        raise InputError(
            f"Vocab file {f.vocab_file} has {len(tokens)} tokens but the "
            f"model's vocab_size is {config.vocab_size}: they do not match")
    if f.train_files and config is None:
        raise InputError("--train_files needs --vocab_file or "
                         "--bert_config_file (to know the vocabulary size)")
    if config is not None:
        longest = max(p.seq_length for p in phase_list)
        if longest > config.max_position_embeddings:
            raise InputError(
                f"Sequences of {longest} tokens exceed the model's "
                f"max_position_embeddings={config.max_position_embeddings}")
    return config, tokens


def check_model_dir(config):
    """A checkpoint in --model_dir must be of the same model."""
    import tensorflow as tf
    f = FLAGS
    if not tf.io.gfile.exists(f.model_dir):
        return
    if not tf.io.gfile.isdir(f.model_dir):
        raise InputError(f"--model_dir {f.model_dir} is not a directory")
    if tf.train.latest_checkpoint(f.model_dir) is None:
        return
    path = os.path.join(f.model_dir, "bert_config.json")
    if not tf.io.gfile.exists(path):
        raise InputError(f"--model_dir {f.model_dir} holds a checkpoint but "
                         f"no bert_config.json: not a run of this program")
    with tf.io.gfile.GFile(path) as fh:
        saved = json.load(fh)
    if config is None:
        # The vocabulary is still to be learnt: compare all but its size.
        from train import modeling
        config = modeling.BertConfig.for_size(
            f.model_size, saved.get("vocab_size", 1))
    wanted = config.to_dict()
    if saved != wanted:
        changed = sorted(k for k in set(saved) | set(wanted)
                         if saved.get(k) != wanted.get(k))
        raise InputError(
            f"--model_dir {f.model_dir} holds a checkpoint of another "
            f"model (differs in {', '.join(changed)}); use a new "
            f"--model_dir")


def load_tfds_documents():
    f = FLAGS
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise InputError(
            "--tfds_name needs the tensorflow-datasets package, which is not "
            "installed (pip install tensorflow-datasets); or use "
            "--input_file / --train_files") from None
    from train import corpus
    try:
        dataset = tfds.load(f.tfds_name, split=f.tfds_split,
                            data_dir=f.tfds_data_dir, download=False)
    except Exception as error:  # tfds raises many kinds
        raise InputError(f"Cannot load --tfds_name={f.tfds_name} (split "
                         f"{f.tfds_split}) without download: "
                         f"{error}") from None
    documents = []
    for example in dataset.take(f.max_documents):
        if f.tfds_text_key not in example:
            raise InputError(f"--tfds_name={f.tfds_name} has no feature "
                             f"{f.tfds_text_key!r} (--tfds_text_key)")
        text = example[f.tfds_text_key].numpy().decode("utf-8", "replace")
        sentences = corpus.split_sentences(text)
        if len(sentences) >= 2:
            documents.append(sentences)
    if not documents:
        raise InputError(f"--tfds_name={f.tfds_name} gave no document of "
                         f"two sentences or more")
    return documents


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def _data_key(source, phase_list, vocab_file, vocab_target):
    f = FLAGS
    return {
        "source": source,
        "phases": [[p.seq_length, p.predictions] for p in phase_list],
        "vocab_file": os.path.abspath(vocab_file) if vocab_file else None,
        "vocab_size": vocab_target,
        "masked_lm_prob": f.masked_lm_prob,
        "short_seq_prob": f.short_seq_prob,
        "dupe_factor": f.dupe_factor,
        "whole_word_mask": f.whole_word_mask,
        "do_lower_case": f.do_lower_case,
        "seed": f.seed,
    }


def prepare_data(data_dir, documents_fn, source, phase_list, config,
                 fingerprint=None):
    """Makes (or reuses) TFRecords for every phase in `data_dir`.

    Returns the vocabulary file.  A vocabulary is learnt when --vocab_file
    is not given; with --bert_config_file it is padded with [unusedN]
    tokens to the config's vocab_size.
    """
    import tensorflow as tf
    f = FLAGS
    vocab_target = config.vocab_size if config else f.vocab_size
    key = _data_key(source, phase_list, f.vocab_file, vocab_target)
    key["fingerprint"] = fingerprint
    meta_path = os.path.join(data_dir, "metadata.json")
    vocab_file = f.vocab_file or os.path.join(data_dir, "vocab.txt")
    names = [os.path.join(data_dir, f"phase{i + 1}.tfrecord")
             for i in range(len(phase_list))]
    if tf.io.gfile.exists(meta_path):
        with tf.io.gfile.GFile(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("key") == key and all(map(tf.io.gfile.exists, names)):
            for phase, name in zip(phase_list, names):
                phase.files = [name]
            print(f"Reusing the examples in {data_dir}", flush=True)
            return vocab_file
    started = time.time()
    print(f"Making pretraining examples from {source} in {data_dir} ...",
          flush=True)
    tf.io.gfile.makedirs(data_dir)
    if tf.io.gfile.exists(meta_path):
        tf.io.gfile.remove(meta_path)
    documents = documents_fn()
    if not f.vocab_file:
        vocab = cpd.learn_vocab(documents, vocab_target, f.do_lower_case)
        if config is not None:
            if len(vocab) > config.vocab_size:
                vocab = vocab[:config.vocab_size]
            vocab += [f"[unused{i}]"
                      for i in range(config.vocab_size - len(vocab))]
        cpd.write_vocab(vocab, vocab_file)
    tokens = cpd.read_vocab(vocab_file)
    tokenized = cpd.tokenize_documents(documents, vocab_file,
                                       f.do_lower_case)
    counts = []
    for i, (phase, name) in enumerate(zip(phase_list, names)):
        instances = cpd.create_instances(
            tokenized, cpd.Vocab(tokens), phase.seq_length,
            phase.predictions, f.masked_lm_prob, f.short_seq_prob,
            f.dupe_factor, f.whole_word_mask, f.seed + i)
        if not instances:
            raise InputError(f"{source} gave no example (each needs two "
                             f"segments of text)")
        cpd.write_instances(instances, [name], phase.seq_length,
                            phase.predictions)
        phase.files = [name]
        counts.append(len(instances))
    cpd.write_metadata(meta_path, key=key, examples=counts)
    print(f"  {len(documents)} documents -> {counts} examples, vocabulary "
          f"of {len(tokens)} tokens ({time.time() - started:.0f}s)",
          flush=True)
    return vocab_file


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def _is_chief(strategy):
    import tensorflow as tf
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def make_optimizer(schedule):
    from tf_lamb import Lamb
    f = FLAGS
    clip = {}
    if f.clipnorm:
        clip["clipnorm"] = f.clipnorm
    elif f.clipvalue:
        clip["clipvalue"] = f.clipvalue
    elif f.global_clipnorm:
        clip["global_clipnorm"] = f.global_clipnorm
    k = f.gradient_accumulation_steps
    return Lamb(
        learning_rate=schedule, beta_1=f.beta_1, beta_2=f.beta_2,
        epsilon=f.epsilon, weight_decay=f.weight_decay or None,
        use_ema=f.use_ema, ema_momentum=f.ema_momentum,
        ema_overwrite_frequency=f.ema_overwrite_frequency,
        gradient_accumulation_steps=k if k > 1 else None,
        loss_scale_factor=f.loss_scale_factor,
        max_trust_ratio=f.max_trust_ratio,
        bias_correction=f.bias_correction, jit_compile=f.jit_compile,
        exclude_from_weight_decay=list(f.exclude_from_weight_decay or []),
        exclude_from_layer_adaptation=(
            None if f.exclude_from_layer_adaptation is None
            else list(f.exclude_from_layer_adaptation)),
        **clip)


class Trainer:
    """Model, optimizer, compiled steps and metrics under one strategy."""

    STATS = ("mlm_loss_sum", "mlm_weight", "mlm_correct", "nsp_loss_sum",
             "nsp_count", "nsp_correct")

    def __init__(self, strategy, config, phase_list):
        import keras
        import tensorflow as tf
        from train import modeling, optimization
        f = FLAGS
        self.strategy = strategy
        self.config = config
        self.phase_list = phase_list
        self.k = f.gradient_accumulation_steps
        self.replicas = strategy.num_replicas_in_sync
        keras.utils.set_random_seed(f.seed)
        schedule = optimization.PretrainingSchedule(
            f.learning_rate, phase_list[0].steps, f.warmup_steps,
            f.end_learning_rate, f.poly_power, f.phase2_steps,
            f.phase2_learning_rate, f.phase2_warmup_steps, self.k)
        self.schedule = schedule
        on_read = dict(synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM,
                       trainable=False)
        with strategy.scope():
            self.model = modeling.BertPretrainer(config)
            self.model.build_for(phase_list[0].seq_length,
                                 phase_list[0].predictions)
            self.lamb = make_optimizer(schedule)
            if f.mixed_precision == "mixed_float16":
                self.optimizer = keras.optimizers.LossScaleOptimizer(
                    self.lamb)
            else:
                self.optimizer = self.lamb
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                    name="global_step")
            self.stats = {name: tf.Variable(0.0, name=name, **on_read)
                          for name in self.STATS}
            self.grad_sq = [tf.Variable(0.0, name=f"grad_sq_{i}", **on_read)
                            for i in range(len(
                                self.model.trainable_variables))]
            self.grad_count = tf.Variable(0.0, name="grad_count", **on_read)
        self.variables = self.model.trainable_variables
        self.checkpoint = tf.train.Checkpoint(
            model=self.model, optimizer=self.optimizer, step=self.step)
        self.seed = f.seed
        self.loss_scaling = f.mixed_precision == "mixed_float16"
        self.static_scale = f.loss_scale_factor
        self._compiled = tf.function(self._forward_backward,
                                     jit_compile=f.jit_compile,
                                     reduce_retracing=True)
        self.train_step = tf.function(self._train_step)
        self.reset_stats = tf.function(self._reset_stats)
        # Norms computed where the weights live; only scalars are copied.
        self._weight_norms = tf.function(lambda: [
            tf.norm(tf.cast(v.value, tf.float32)) for v in self.variables])

    # -- the compiled pieces ---------------------------------------------------

    def _forward_backward(self, features, seed):
        import tensorflow as tf
        from train import modeling
        with tf.GradientTape() as tape:
            mlm_logits, nsp_logits = self.model(features, training=True,
                                                seed=seed)
            stats = modeling.pretraining_losses(features, mlm_logits,
                                                nsp_logits)
            mlm = stats["mlm_loss_sum"] / (stats["mlm_weight"] + 1e-5)
            nsp = stats["nsp_loss_sum"] / stats["nsp_count"]
            # LAMB sums the replicas' gradients: each replica's share is
            # 1/replicas of the mean loss.
            loss = (mlm + nsp) / self.replicas
            if self.loss_scaling:
                loss = self.optimizer.scale_loss(loss)
            elif self.static_scale:
                loss = loss * self.static_scale
        grads = tape.gradient(loss, self.variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        # Squared norms of this replica's gradient of the mean loss.
        factor = float(self.replicas) ** 2
        if self.loss_scaling:
            factor = factor / tf.square(tf.cast(
                self.optimizer.dynamic_scale, tf.float32))
        elif self.static_scale:
            factor = factor / self.static_scale ** 2
        squares = [tf.reduce_sum(tf.square(tf.cast(g, tf.float32))) * factor
                   for g in grads]
        return grads, stats, squares

    def _replica_step(self, features, micro_step):
        import tensorflow as tf
        context = tf.distribute.get_replica_context()
        # Dropout masks depend on the seed, the micro-step and the replica
        # only, so a resumed run draws the same ones.
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.seed, 0], tf.int64), micro_step)
        seed = tf.random.experimental.stateless_fold_in(
            seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
        grads, stats, squares = self._compiled(features, seed)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        for name in self.STATS:
            self.stats[name].assign_add(stats[name])
        for variable, square in zip(self.grad_sq, squares):
            variable.assign_add(square)
        self.grad_count.assign_add(1.0)

    def _train_step(self, iterator):
        import tensorflow as tf
        for i in tf.range(self.k, dtype=tf.int64):
            micro_step = self.step.read_value() * self.k + i
            self.strategy.run(self._replica_step,
                              args=(next(iterator), micro_step))
        self.step.assign_add(1)

    def _reset_stats(self):
        import tensorflow as tf

        def reset():
            for variable in (list(self.stats.values()) + self.grad_sq
                             + [self.grad_count]):
                variable.assign(tf.zeros_like(variable))
        self.strategy.run(reset)

    # -- reading -----------------------------------------------------------------

    def read_stats(self):
        """Means since the last reset; every worker must call it."""
        s = {name: float(v.numpy()) for name, v in self.stats.items()}
        count = max(float(self.grad_count.numpy()), 1.0)
        w_norms = [float(n) for n in self._weight_norms()]
        g_norms = [math.sqrt(max(float(g.numpy()), 0.0) / count)
                   for g in self.grad_sq]
        self.reset_stats()
        return {
            "mlm_loss": s["mlm_loss_sum"] / max(s["mlm_weight"], 1e-5),
            "nsp_loss": s["nsp_loss_sum"] / max(s["nsp_count"], 1e-5),
            "mlm_accuracy": s["mlm_correct"] / max(s["mlm_weight"], 1e-5),
            "nsp_accuracy": s["nsp_correct"] / max(s["nsp_count"], 1e-5),
            "weight_norms": w_norms,
            "grad_norms": g_norms,
            # LAMB's own phi = ||w|| / ||r|| of the last update.
            "trust_ratios": [float(r) for r in
                             self.lamb.trust_ratios.numpy()],
        }

    def learning_rate(self, step):
        """The rate of update number `step` (0-based)."""
        return float(self.schedule(step * self.k))

    def distributed_iterator(self, phase, batches_done):
        from train import input_pipeline
        f = FLAGS
        pipelines = max(1, self._input_pipelines())
        micro_batch = phase.batch_size // self.k
        skip = batches_done * self.k * self.replicas // pipelines
        fn = input_pipeline.dataset_fn(
            phase.files, micro_batch, phase.seq_length, phase.predictions,
            seed=f.seed + 1000 * self.phase_list.index(phase),
            batches_to_skip=skip, shuffle_buffer=f.shuffle_buffer)
        dataset = self.strategy.distribute_datasets_from_function(fn)
        return iter(dataset)

    def _input_pipelines(self):
        import tensorflow as tf
        if isinstance(self.strategy,
                      tf.distribute.MultiWorkerMirroredStrategy):
            return len(self.strategy.cluster_resolver.cluster_spec()
                       .as_dict().get("worker", [])) + len(
                self.strategy.cluster_resolver.cluster_spec().as_dict()
                .get("chief", []))
        if isinstance(self.strategy, tf.distribute.TPUStrategy):
            return self.strategy.extended.num_hosts
        return 1


def export_encoder(encoder, path):
    """Writes a SavedModel whose serving_default signature takes int32
    input_ids, input_mask and segment_ids of shape [batch, length] and
    returns float32 sequence_output [batch, length, hidden] and
    pooled_output [batch, hidden]."""
    import tensorflow as tf
    module = tf.Module(name="bert_encoder")
    module.encoder = encoder

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        tf.TensorSpec([None, None], tf.int32, name="input_mask"),
        tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
    def serve(input_ids, input_mask, segment_ids):
        sequence, pooled = encoder(input_ids, input_mask, segment_ids)
        return {"sequence_output": tf.cast(sequence, tf.float32),
                "pooled_output": tf.cast(pooled, tf.float32)}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def _scalar(name, value):
    """tf.summary.scalar without the tensorboard package: the same record
    (a float32 tensor tagged for TensorBoard's scalars plugin)."""
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32),
                     metadata=metadata.SerializeToString())


def _format_eta(seconds):
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run():
    """Checks the flags, then trains; returns a summary dict.

    Raises InputError (a ValueError) before writing anything when the flags
    or the data are bad.
    """
    f = FLAGS
    check_flags()
    phase_list = phases()
    import tensorflow as tf
    from tf_lamb.distribute import make_strategy
    import keras
    try:
        strategy = make_strategy(f.strategy, tpu=f.tpu, num_gpus=f.num_gpus)
    except ValueError as error:
        raise InputError(str(error)) from None
    check_batch_sizes(phase_list, strategy.num_replicas_in_sync)
    config, _ = resolve_model(phase_list)
    documents_fn, source, fingerprint = None, None, None
    if f.train_files:
        from train import input_pipeline
        try:
            for phase, patterns in zip(phase_list, (f.train_files,
                                                    f.phase2_train_files)):
                phase.files = input_pipeline.check_files(
                    patterns, phase.seq_length, phase.predictions,
                    config.vocab_size)
        except ValueError as error:
            raise InputError(str(error)) from None
    elif f.input_file:
        try:
            documents = cpd.read_documents(f.input_file)
        except ValueError as error:
            raise InputError(str(error)) from None
        if len(documents) < 2 and max(map(len, documents)) < 2:
            raise InputError(
                f"--input_file={','.join(f.input_file)} holds one sentence; "
                f"sentence pairs need two sentences or two documents")
        # The files' sizes and times are part of the name, so that
        # examples made from an older version of the text are not reused.
        stamps = []
        for pattern in f.input_file:
            for path in sorted(tf.io.gfile.glob(pattern)):
                stat = tf.io.gfile.stat(path)
                stamps.append(f"{path}@{stat.length}:{stat.mtime_nsec}")
        source = "text files " + ",".join(f.input_file)
        fingerprint = stamps
        documents_fn = lambda: documents  # noqa: E731
    elif f.tfds_name:
        documents = load_tfds_documents()
        source = f"tfds {f.tfds_name}/{f.tfds_split}"
        documents_fn = lambda: documents  # noqa: E731
    else:
        from train import corpus
        source = "the Python standard library's docstrings"
        documents_fn = corpus.stdlib_documents
    check_model_dir(config)

    # -- from here on, files are written ---------------------------------------
    chief = _is_chief(strategy)
    model_dir = f.model_dir
    work_dir = model_dir if chief else tempfile.mkdtemp(prefix="worker_")
    if chief:
        tf.io.gfile.makedirs(model_dir)
    vocab_file = f.vocab_file
    if documents_fn is not None:
        vocab_file = prepare_data(os.path.join(work_dir, "data"),
                                  documents_fn, source, phase_list, config,
                                  fingerprint)
    if config is None:
        from train import modeling
        config = modeling.BertConfig.for_size(
            f.model_size, len(cpd.read_vocab(vocab_file)))
        check_model_dir(config)
    if f.mixed_precision != "float32":
        keras.mixed_precision.set_global_policy(f.mixed_precision)
    else:
        keras.mixed_precision.set_global_policy("float32")
    if chief:
        with tf.io.gfile.GFile(os.path.join(model_dir, "bert_config.json"),
                               "w") as fh:
            fh.write(config.to_json_string())
        if vocab_file and os.path.abspath(vocab_file) != os.path.abspath(
                os.path.join(model_dir, "vocab.txt")):
            tf.io.gfile.copy(vocab_file, os.path.join(model_dir, "vocab.txt"),
                             overwrite=True)
        with tf.io.gfile.GFile(os.path.join(model_dir, "flags.txt"),
                               "w") as fh:
            fh.write(f.flags_into_string())

    trainer = Trainer(strategy, config, phase_list)
    save_dir = model_dir if chief else os.path.join(work_dir, "checkpoints")
    manager = tf.train.CheckpointManager(
        trainer.checkpoint, save_dir, max_to_keep=f.keep_checkpoint_max)
    latest = tf.train.latest_checkpoint(model_dir)
    if latest:
        trainer.checkpoint.restore(latest).assert_existing_objects_matched()
        print(f"Resumed from {latest}", flush=True)
    start_step = int(trainer.step.numpy())
    total = f.num_train_steps
    writer = (tf.summary.create_file_writer(os.path.join(model_dir, "train"))
              if chief else tf.summary.create_noop_writer())
    paths = [v.path for v in trainer.variables]
    params = sum(int(tf.size(v)) for v in trainer.variables)
    print(f"BERT {config.num_hidden_layers} layers, hidden "
          f"{config.hidden_size}, vocab {config.vocab_size}: {params:,} "
          f"parameters; {f.strategy} strategy "
          f"({strategy.__class__.__name__}) with "
          f"{trainer.replicas} replica(s); steps {start_step} -> {total}",
          flush=True)

    if start_step >= total:
        print(f"Training is complete (step {start_step} of --num_train_steps="
              f"{total}); only the export is redone", flush=True)
    history = []
    step = start_step
    boundaries = [0]
    for phase in phase_list:
        boundaries.append(boundaries[-1] + phase.steps)
    while step < total:
        index = max(i for i in range(len(phase_list)) if boundaries[i] <= step)
        phase = phase_list[index]
        end = boundaries[index + 1]
        iterator = trainer.distributed_iterator(phase, step - boundaries[index])
        if len(phase_list) > 1:
            print(f"Phase {index + 1}: steps {step} -> {end}, "
                  f"{phase.seq_length} tokens, batch {phase.batch_size}",
                  flush=True)
        trainer.reset_stats()
        interval_start, interval_step = time.time(), step
        while step < end:
            trainer.train_step(iterator)
            step += 1
            if step % f.log_steps == 0 or step == end:
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
                        _scalar(f"trust_ratio/{path}", ratio)
                writer.flush()
                interval_start, interval_step = time.time(), step
            if step % f.save_checkpoints_steps == 0 or step == total:
                manager.save(checkpoint_number=step)
    export_path = None
    if f.export_dir != "none":
        export_path = f.export_dir or os.path.join(model_dir, "export")
        target = export_path if chief else os.path.join(work_dir, "export")
        export_encoder(trainer.model.encoder, target)
        if chief:
            print(f"Exported the encoder to {export_path}", flush=True)
    if not chief:
        shutil.rmtree(work_dir, ignore_errors=True)
    if history and chief:
        first, last = history[0], history[-1]
        print(f"MLM loss {first['mlm_loss']:.3f} (step {first['step']}) -> "
              f"{last['mlm_loss']:.3f} (step {last['step']}); MLM accuracy "
              f"{first['mlm_accuracy']:.3f} -> {last['mlm_accuracy']:.3f}",
              flush=True)
    return {"history": history, "trainer": trainer, "export_dir": export_path,
            "start_step": start_step, "vocab_file": vocab_file,
            "config": config}


def run_with_args(argv):
    """Parses `argv` (flags only, no program name) afresh and runs."""
    FLAGS.unparse_flags()
    FLAGS(["pretrain"] + list(argv))
    return run()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        run()
    except InputError as error:
        sys.exit(f"Error: {error}")


define_flags()

if __name__ == "__main__":
    app.run(main)
