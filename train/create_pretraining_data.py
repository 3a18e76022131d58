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
import tempfile

from train.runtime import logs

if __name__ == "__main__":
    # Before TensorFlow loads: its C++ log level is read then.
    logs.quiet_tensorflow()

# The imports below load TensorFlow.
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import tensorflow as tf  # noqa: E402

from train.data import features  # noqa: E402
from train.data import streaming  # noqa: E402
from train.data.corpus import (  # noqa: E402
    read_documents, stdlib_documents, write_text_corpus)  # noqa: F401
from train.data.examples import check_flags  # noqa: E402
from train.data.tokenization import (  # noqa: E402
    learn_vocab_from_counts, read_vocab, write_vocab)


def define_flags():
    """The flags of the examples (train.pretrain has flags of the same
    names and defaults, train/flags.py)."""
    features.define_example_flags()
    flags.DEFINE_integer(
        "random_seed", features.RANDOM_SEED,
        "Seed of the example generator (pairs and masks).")


def create_from_files(
        patterns, output_files, vocab_file=None, output_vocab_file=None,
        max_seq_length=features.MAX_SEQ_LENGTH,
        max_predictions=features.MAX_PREDICTIONS_PER_SEQ,
        masked_lm_prob=features.MASKED_LM_PROB,
        short_seq_prob=features.SHORT_SEQ_PROB,
        dupe_factor=features.DUPE_FACTOR, whole_word_mask=False,
        lower_case=True, vocab_size=features.VOCAB_SIZE,
        seed=features.RANDOM_SEED, num_workers=1,
        unit_bytes=streaming.UNIT_BYTES, progress_seconds=10.0):
    """Text files -> TFRecord files, streamed one unit of text at a time
    (train.data.streaming); returns (vocab file, #examples).

    Learns and writes a vocabulary to `output_vocab_file` when `vocab_file`
    is None (from word counts, also streamed).
    """
    units = streaming.plan_units(patterns, unit_bytes)
    with streaming.workers(num_workers) as pool:
        if vocab_file is None:
            counts, _ = streaming.count_words(units, lower_case, pool=pool,
                                           progress_seconds=progress_seconds)
            write_vocab(learn_vocab_from_counts(counts, vocab_size),
                        output_vocab_file)
            vocab_file = output_vocab_file
        read_vocab(vocab_file)
        settings = streaming.Settings(
            vocab_file, lower_case, max_seq_length, max_predictions,
            masked_lm_prob, short_seq_prob, dupe_factor, whole_word_mask,
            seed)
        count, _ = streaming.write_examples(units, settings, output_files,
                                            pool, progress_seconds)
    if not count:
        raise ValueError("The text gave no example (each needs two "
                         "segments of text)")
    return vocab_file, count


def create_pretraining_data(documents, output_files, **settings):
    """Documents (lists of sentences) -> TFRecord files through a text file
    of them, as `create_from_files` makes them; returns (vocab file,
    #examples)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "corpus.txt")
        write_text_corpus(documents, path)
        return create_from_files([path], output_files, **settings)


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
        "them round-robin. With --output_shards=N, one base name: the "
        "files are <base>-00000-of-0000N and so on.")
    flags.DEFINE_integer(
        "output_shards", 1,
        "Number of output files made from one --output_file base name.")
    flags.DEFINE_integer(
        "num_workers", 1,
        "Processes that make examples (each a unit of text at a time); "
        "the output is the same for any number.")
    flags.DEFINE_integer(
        "unit_bytes", streaming.UNIT_BYTES,
        "Text per unit of work (cut at a document boundary): the memory of "
        "a worker, the pool of documents the random next sentence is drawn "
        "from, and a seed of its own. Changing it changes the examples.")
    flags.DEFINE_float(
        "progress_seconds", 10.0,
        "Seconds between progress lines on stderr (documents, examples, "
        "MB/s, time left); a run shorter than that prints none.")
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
        if FLAGS.num_workers < 1:
            raise ValueError(f"--num_workers must be >= 1, got "
                             f"{FLAGS.num_workers}")
        if FLAGS.unit_bytes < 1:
            raise ValueError(f"--unit_bytes must be >= 1, got "
                             f"{FLAGS.unit_bytes}")
        output_files = streaming.output_files(FLAGS.output_file,
                                              FLAGS.output_shards)
        for path in output_files:
            directory = os.path.dirname(path)
            if directory:
                tf.io.gfile.makedirs(directory)
        output_vocab = FLAGS.output_vocab_file or os.path.join(
            os.path.dirname(output_files[0]), "vocab.txt")
        settings = dict(
            vocab_file=FLAGS.vocab_file, output_vocab_file=output_vocab,
            max_seq_length=FLAGS.max_seq_length,
            max_predictions=FLAGS.max_predictions_per_seq,
            masked_lm_prob=FLAGS.masked_lm_prob,
            short_seq_prob=FLAGS.short_seq_prob,
            dupe_factor=FLAGS.dupe_factor,
            whole_word_mask=FLAGS.whole_word_mask,
            lower_case=FLAGS.do_lower_case, vocab_size=FLAGS.vocab_size,
            seed=FLAGS.random_seed, num_workers=FLAGS.num_workers,
            unit_bytes=FLAGS.unit_bytes,
            progress_seconds=FLAGS.progress_seconds)
        if FLAGS.input_file:
            vocab_file, count = create_from_files(
                FLAGS.input_file, output_files, **settings)
        else:
            vocab_file, count = create_pretraining_data(
                stdlib_documents(), output_files, **settings)
    except ValueError as error:
        sys.exit(f"Error: {error}")
    print(f"Wrote {count} examples to {', '.join(output_files)}; "
          f"vocabulary: {vocab_file}")


if __name__ == "__main__":
    define_flags()
    _define_program_flags()
    # `--help` lists the main module's key flags: the example flags too.
    flags.adopt_module_key_flags(features)
    app.run(main)
