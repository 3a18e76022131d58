"""The features of a pretraining example, in Google BERT's TFRecord
format, and the defaults of the settings that shape examples.

Every record holds seven features: `input_ids`, `input_mask` and
`segment_ids` (max_seq_length each), `masked_lm_positions`,
`masked_lm_ids` and `masked_lm_weights` (max_predictions_per_seq each) and
`next_sentence_labels` (one). What writes records (train.data.examples),
parses them (train.data.reading, train.data.record_checks), pads an
evaluation batch (train.loop.evaluation) or traces the training step
(train.plan.compile_plan) takes the names, lengths and types from here.
"""

from absl import flags
import tensorflow as tf

# Defaults of the settings that make examples: the fields of PretrainConfig
# and the flags of train.pretrain and train.create_pretraining_data.
MAX_SEQ_LENGTH = 128
MAX_PREDICTIONS_PER_SEQ = 20
MASKED_LM_PROB = 0.15
SHORT_SEQ_PROB = 0.1
DUPE_FACTOR = 5
WHOLE_WORD_MASK = False
DO_LOWER_CASE = True
# The size of a vocabulary learnt from the text (none given).
VOCAB_SIZE = 8000
# The seed of train.create_pretraining_data's example generator
# (train.pretrain draws with its own --seed).
RANDOM_SEED = 12345

# Each feature's values per example ("seq": max_seq_length, "predictions":
# max_predictions_per_seq, or 1) and their type in a record, in the order
# Google's create_pretraining_data.py writes them.
FEATURES = {
    "input_ids": ("seq", tf.int64),
    "input_mask": ("seq", tf.int64),
    "segment_ids": ("seq", tf.int64),
    "masked_lm_positions": ("predictions", tf.int64),
    "masked_lm_ids": ("predictions", tf.int64),
    "masked_lm_weights": ("predictions", tf.float32),
    "next_sentence_labels": (1, tf.int64),
}


def lengths(max_seq_length, max_predictions):
    """{feature name: values per example}, in FEATURES' order."""
    sizes = {"seq": max_seq_length, "predictions": max_predictions, 1: 1}
    return {name: sizes[size] for name, (size, _) in FEATURES.items()}


# Looked up once per feature of every example written: a set, not a
# comparison of TensorFlow dtypes (slow in Python).
_FLOATS = frozenset(name for name, (_, dtype) in FEATURES.items()
                    if dtype == tf.float32)


def is_float(name):
    """Whether feature `name` holds floats (else int64 in a record)."""
    return name in _FLOATS


def feature_spec(max_seq_length, max_predictions):
    """The spec `tf.io.parse_example` reads a record with."""
    return {name: tf.io.FixedLenFeature([length], FEATURES[name][1])
            for name, length in lengths(max_seq_length,
                                        max_predictions).items()}


def batch_specs(batch, max_seq_length, max_predictions):
    """The TensorSpecs of a parsed batch of `batch` examples: the int64
    features as int32, as train.data.reading.parse_batch casts them."""
    return {name: tf.TensorSpec([batch, length],
                                tf.float32 if is_float(name) else tf.int32)
            for name, length in lengths(max_seq_length,
                                        max_predictions).items()}


def to_example(values):
    """A tf.train.Example of `values`: {feature name: its values, padded to
    the feature's length}, one entry per feature of FEATURES."""
    def feature(name):
        if is_float(name):
            return tf.train.Feature(
                float_list=tf.train.FloatList(value=values[name]))
        return tf.train.Feature(
            int64_list=tf.train.Int64List(value=values[name]))
    return tf.train.Example(features=tf.train.Features(
        feature={name: feature(name) for name in FEATURES}))


def define_example_flags():
    """The flags of the settings above, with these defaults: the same in
    train.pretrain and train.create_pretraining_data."""
    flags.DEFINE_integer(
        "max_seq_length", MAX_SEQ_LENGTH,
        "Tokens per example, [CLS] and [SEP]s included; shorter examples are "
        "padded with 0.")
    flags.DEFINE_integer(
        "max_predictions_per_seq", MAX_PREDICTIONS_PER_SEQ,
        "Most masked-LM predictions per example (the rest are padding with "
        "weight 0).")
    flags.DEFINE_float("masked_lm_prob", MASKED_LM_PROB,
                       "Share of the tokens of an example that are masked.")
    flags.DEFINE_float(
        "short_seq_prob", SHORT_SEQ_PROB,
        "Probability of an example shorter than max_seq_length (so that the "
        "model also sees short inputs).")
    flags.DEFINE_integer(
        "dupe_factor", DUPE_FACTOR,
        "How many times the text is turned into examples, each time with "
        "different masks and sentence pairs.")
    flags.DEFINE_bool(
        "whole_word_mask", WHOLE_WORD_MASK,
        "Mask all WordPieces of a word together instead of single pieces.")
    flags.DEFINE_bool("do_lower_case", DO_LOWER_CASE,
                      "Lower-case the text (and strip accents) before "
                      "splitting it into WordPieces.")
    flags.DEFINE_integer(
        "vocab_size", VOCAB_SIZE,
        "Target size of the WordPiece vocabulary learnt when no --vocab_file "
        "is given (the learnt one can be smaller on small corpora).")
