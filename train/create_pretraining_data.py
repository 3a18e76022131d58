r"""Plain text -> TFRecords for BERT pretraining (masked LM + next sentence).

Input: text files with one sentence per line and a blank line between
documents.  Output: `tf.train.Example` records in the format of Google's BERT
(`input_ids`, `input_mask`, `segment_ids`, `masked_lm_positions`,
`masked_lm_ids`, `masked_lm_weights`, `next_sentence_labels`;
train/data/features.py), readable by
`python -m train.pretrain --train_files=...`.

Text is split into WordPieces exactly as Google BERT's tokenization.py does
(train/data/tokenization.py; lower-casing strips accents, no NFKC), and each
example gets Google's number of masks (train/data/examples.py).  Without
--vocab_file a WordPiece vocabulary is learnt from the input text and
written next to the output as `vocab.txt` (or to --output_vocab_file).  The
same input, flags and --random_seed give the same files, byte for byte.

Example:
  python -m train.create_pretraining_data \
      --input_file='corpus/*.txt' --output_file=data/train.tfrecord \
      --max_seq_length=128 --max_predictions_per_seq=20 \
      --whole_word_mask --dupe_factor=5
"""

import os
import sys

from train.runtime import logs

if __name__ == "__main__":
    # Before TensorFlow loads: its C++ log level is read then.
    logs.quiet_tensorflow()

# The imports below load TensorFlow.
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from train.data import features  # noqa: E402
from train.data.corpus import read_documents, stdlib_documents  # noqa: E402
from train.data.examples import (  # noqa: E402
    Vocab, check_flags, create_instances, write_instances)
from train.data.tokenization import (  # noqa: E402
    learn_vocab, read_vocab, tokenize_documents, write_vocab)


def define_flags():
    """The flags of the examples (train.pretrain has flags of the same
    names and defaults, train/flags.py)."""
    features.define_example_flags()
    flags.DEFINE_integer(
        "random_seed", features.RANDOM_SEED,
        "Seed of the example generator (pairs and masks).")


def create_pretraining_data(
        documents, output_files, vocab_file=None, output_vocab_file=None,
        max_seq_length=features.MAX_SEQ_LENGTH,
        max_predictions=features.MAX_PREDICTIONS_PER_SEQ,
        masked_lm_prob=features.MASKED_LM_PROB,
        short_seq_prob=features.SHORT_SEQ_PROB,
        dupe_factor=features.DUPE_FACTOR, whole_word_mask=False,
        lower_case=True, vocab_size=features.VOCAB_SIZE,
        seed=features.RANDOM_SEED):
    """Text documents -> TFRecord files; returns (vocab file, #examples).

    Learns and writes a vocabulary to `output_vocab_file` when `vocab_file`
    is None.
    """
    if vocab_file is None:
        vocab = learn_vocab(documents, vocab_size, lower_case)
        write_vocab(vocab, output_vocab_file)
        vocab_file = output_vocab_file
    tokens = read_vocab(vocab_file)
    tokenized = tokenize_documents(documents, vocab_file, lower_case)
    instances = create_instances(
        tokenized, Vocab(tokens), max_seq_length, max_predictions,
        masked_lm_prob, short_seq_prob, dupe_factor, whole_word_mask, seed)
    if not instances:
        raise ValueError("The text gave no example (each needs two "
                         "segments of text)")
    write_instances(instances, output_files, max_seq_length, max_predictions)
    return vocab_file, len(instances)


# ---------------------------------------------------------------------------
# The program
# ---------------------------------------------------------------------------


def _define_program_flags():
    flags.DEFINE_list(
        "input_file", None,
        "Comma-separated text files or glob patterns: one sentence per "
        "line, a blank line between documents. Without it, the default "
        "corpus (Python standard library docstrings) is used.")
    flags.DEFINE_list(
        "output_file", None,
        "Comma-separated output TFRecord files; examples are spread over "
        "them round-robin.")
    flags.DEFINE_string(
        "vocab_file", None,
        "WordPiece vocabulary, one token per line. Without it a vocabulary "
        "is learnt from the input text.")
    flags.DEFINE_string(
        "output_vocab_file", None,
        "Where a learnt vocabulary is written; defaults to vocab.txt next "
        "to the first output file.")
    flags.mark_flag_as_required("output_file")


def main(argv):
    FLAGS = flags.FLAGS  # noqa: N806  (read here only, in the binary's main)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        check_flags(FLAGS.max_seq_length, FLAGS.max_predictions_per_seq,
                    FLAGS.masked_lm_prob, FLAGS.short_seq_prob,
                    FLAGS.dupe_factor, FLAGS.vocab_size)
        if FLAGS.vocab_file:
            read_vocab(FLAGS.vocab_file)
            if FLAGS.output_vocab_file:
                raise ValueError("--output_vocab_file is only for a learnt "
                                 "vocabulary; drop it or --vocab_file")
        if FLAGS.input_file:
            documents = read_documents(FLAGS.input_file)
        else:
            documents = stdlib_documents()
    except ValueError as error:
        sys.exit(f"Error: {error}")
    output_files = FLAGS.output_file
    for path in output_files:
        directory = os.path.dirname(path)
        if directory:
            tf.io.gfile.makedirs(directory)
    output_vocab = FLAGS.output_vocab_file or os.path.join(
        os.path.dirname(output_files[0]), "vocab.txt")
    vocab_file, count = create_pretraining_data(
        documents, output_files, vocab_file=FLAGS.vocab_file,
        output_vocab_file=output_vocab,
        max_seq_length=FLAGS.max_seq_length,
        max_predictions=FLAGS.max_predictions_per_seq,
        masked_lm_prob=FLAGS.masked_lm_prob,
        short_seq_prob=FLAGS.short_seq_prob, dupe_factor=FLAGS.dupe_factor,
        whole_word_mask=FLAGS.whole_word_mask,
        lower_case=FLAGS.do_lower_case, vocab_size=FLAGS.vocab_size,
        seed=FLAGS.random_seed)
    print(f"Wrote {count} examples to {', '.join(output_files)}; "
          f"vocabulary: {vocab_file}")


if __name__ == "__main__":
    define_flags()
    _define_program_flags()
    # `--help` lists the main module's key flags: the example flags too.
    flags.adopt_module_key_flags(features)
    app.run(main)
