r"""Plain text -> TFRecords for BERT pretraining (masked LM + next sentence).

Input: text files with one sentence per line and a blank line between
documents.  Output: `tf.train.Example` records in the format of Google's BERT
(`input_ids`, `input_mask`, `segment_ids`, `masked_lm_positions`,
`masked_lm_ids`, `masked_lm_weights`, `next_sentence_labels`), readable by
`python -m train.pretrain --train_files=...`.

Text is split into WordPieces exactly as Google BERT's tokenization.py does
(`BertTokenizer`; lower-casing strips accents, no NFKC), and each example
gets Google's number of masks.  Without --vocab_file a WordPiece vocabulary
is learnt from the input text (HuggingFace `tokenizers`' WordPiece trainer)
and written next to the output as `vocab.txt` (or to --output_vocab_file).

Example:
  python -m train.create_pretraining_data \
      --input_file='corpus/*.txt' --output_file=data/train.tfrecord \
      --max_seq_length=128 --max_predictions_per_seq=20 \
      --whole_word_mask --dupe_factor=5
"""

import collections
import functools
import json
import os
import random
import re
import sys
import unicodedata

from absl import app
from absl import flags
from absl import logging

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

FEATURE_NAMES = ("input_ids", "input_mask", "segment_ids",
                 "masked_lm_positions", "masked_lm_ids", "masked_lm_weights",
                 "next_sentence_labels")


def define_flags(seed_flag=True):
    """The data flags; also used by train.pretrain (which has its own
    --seed instead of --random_seed)."""
    flags.DEFINE_integer(
        "max_seq_length", 128,
        "Tokens per example, [CLS] and [SEP]s included; shorter examples are "
        "padded with 0.")
    flags.DEFINE_integer(
        "max_predictions_per_seq", 20,
        "Most masked-LM predictions per example (the rest are padding with "
        "weight 0).")
    flags.DEFINE_float("masked_lm_prob", 0.15,
                       "Share of the tokens of an example that are masked.")
    flags.DEFINE_float(
        "short_seq_prob", 0.1,
        "Probability of an example shorter than max_seq_length (so that the "
        "model also sees short inputs).")
    flags.DEFINE_integer(
        "dupe_factor", 5,
        "How many times the text is turned into examples, each time with "
        "different masks and sentence pairs.")
    flags.DEFINE_bool(
        "whole_word_mask", False,
        "Mask all WordPieces of a word together instead of single pieces.")
    flags.DEFINE_bool("do_lower_case", True,
                      "Lower-case the text (and strip accents) before "
                      "splitting it into WordPieces.")
    flags.DEFINE_integer(
        "vocab_size", 8000,
        "Target size of the WordPiece vocabulary learnt when no --vocab_file "
        "is given (the learnt one can be smaller on small corpora).")
    if seed_flag:
        flags.DEFINE_integer(
            "random_seed", 12345,
            "Seed of the example generator (pairs and masks).")


# ---------------------------------------------------------------------------
# Text and vocabulary
# ---------------------------------------------------------------------------


def _read_bytes(path, kind):
    """The bytes of `path`; ValueError "Cannot read <kind><path>: ..."."""
    import tensorflow as tf
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as error:
        raise ValueError(f"Cannot read {kind}{path}: {error}") from None


def read_documents(patterns):
    """Documents (lists of sentences) from text files matching `patterns`.

    Raises ValueError when a pattern matches nothing or no text is found.
    """
    from train.input_pipeline import matching_files
    paths = matching_files(patterns, "input file")
    documents, current = [], []
    for path in paths:
        data = _read_bytes(path, "")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"{path} is not UTF-8 text: {error}") from None
        for line in text.splitlines():
            line = line.strip()
            if line:
                current.append(line)
            elif current:
                documents.append(current)
                current = []
        if current:
            documents.append(current)
            current = []
    if not documents:
        raise ValueError(f"No text in {', '.join(paths)}")
    return documents


# Google's tokenization (tokenization.py of google-research/bert).  Every
# Unicode question is answered by Python's `unicodedata`, as it is for
# Google's code, and the steps run in Google's order; only the mechanics
# differ (translation tables and regular expressions instead of a loop over
# characters), which is what makes it fast.  tensorflow_text's BertTokenizer
# is not used: it applies NFKC ("ᴵᴺᵀᵃ" -> "inta"), which Google does not.

# Words longer than this (in characters) become [UNK], as in Google's
# WordpieceTokenizer (whose default is 200; HuggingFace's copy uses 100).
MAX_CHARS_PER_WORD = 200

# Changes whenever the same text, vocabulary and flags give other examples,
# so that a cache of examples (train.pretrain's data directory) is remade:
# 2 = Google's tokenization (no NFKC) and Google's count of masks.
EXAMPLES_VERSION = 2

# CJK ideographs get spaces around them (code point ranges, as in Google's
# _is_chinese_char, not a Unicode property).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
               (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
               (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _char_class(codes):
    """A regular-expression character class body for sorted code points."""
    parts, start, previous = [], None, None
    for code in list(codes) + [None]:
        if start is not None and code == previous + 1:
            previous = code
            continue
        if start is not None:
            parts.append(re.escape(chr(start)) if start == previous else
                         f"{re.escape(chr(start))}-{re.escape(chr(previous))}")
        start = previous = code
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def _unicode_tables():
    """(clean table, accent table, CJK regex, word regex), from one pass
    over every code point (about a second, once per process)."""
    clean, accents, punctuation, separators = {}, {}, [], [ord(" ")]
    for code in range(sys.maxunicode + 1):
        ch = chr(code)
        category = unicodedata.category(ch)
        if ch in "\t\n\r" or category == "Zs":
            clean[code] = " "
        elif code in (0, 0xFFFD) or category in ("Cc", "Cf"):
            clean[code] = None
        elif ch.isspace():
            # Survives cleaning (U+2028, U+2029), but Google's str.split()
            # still splits on it.
            separators.append(code)
        if category == "Mn":
            accents[code] = None
        # Every ASCII character that is neither a letter, a digit, a space
        # nor a control character counts as punctuation, as in Google's.
        if category[0] == "P" or (33 <= code <= 126 and not ch.isalnum()):
            punctuation.append(code)
    cjk = re.compile("[" + "".join(
        f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in _CJK_RANGES)
        + "]")
    punct = _char_class(punctuation)
    words = re.compile(f"[{punct}]|[^{punct}{_char_class(separators)}]+")
    return clean, accents, cjk, words


def basic_tokenize(text, lower_case=True):
    """Google's BasicTokenizer: the words of `text` (strings).

    Drops NUL, U+FFFD and control characters; whitespace separates words;
    CJK ideographs and punctuation characters are words of their own; with
    `lower_case`, text is lower-cased and stripped of accents (NFD, then
    non-spacing marks dropped).  No NFKC.
    """
    clean, accents, cjk, words = _unicode_tables()
    text = cjk.sub(r" \g<0> ", text.translate(clean))
    if lower_case:
        # Lower-casing the whole line equals Google's word by word: the only
        # context-dependent rule (a final sigma) stops at the spaces.
        text = unicodedata.normalize("NFD", text.lower()).translate(accents)
    return words.findall(text)


class BertTokenizer:
    """Text -> WordPiece ids exactly as Google BERT's FullTokenizer.

    `vocab` is a list of tokens (the id is the index; a repeated token
    keeps its last index, as Google's load_vocab does).
    """

    def __init__(self, vocab, lower_case=True):
        self.ids = {token: i for i, token in enumerate(vocab)}
        if "[UNK]" not in self.ids:
            raise ValueError("The vocabulary lacks [UNK]")
        self.unk = self.ids["[UNK]"]
        self.lower_case = lower_case
        self._cache = {}

    def wordpiece(self, word):
        """The ids of one word: greedy longest match first, continuations
        prefixed with '##'; [UNK] alone if any part matches nothing."""
        pieces = self._cache.get(word)
        if pieces is not None:
            return pieces
        pieces = self._split(word)
        if len(self._cache) < 1_000_000:
            self._cache[word] = pieces
        return pieces

    def _split(self, word):
        if len(word) > MAX_CHARS_PER_WORD:
            return [self.unk]
        pieces, start = [], 0
        while start < len(word):
            prefix = "##" if start else ""
            for end in range(len(word), start, -1):
                found = self.ids.get(prefix + word[start:end])
                if found is not None:
                    pieces.append(found)
                    start = end
                    break
            else:
                return [self.unk]
        return pieces

    def tokenize(self, text):
        """The ids of `text`, one list per word."""
        return [self.wordpiece(w)
                for w in basic_tokenize(text, self.lower_case)]


def learn_vocab(documents, vocab_size=8000, lower_case=True):
    """A WordPiece vocabulary (list of tokens, SPECIAL_TOKENS first, [PAD]
    at 0) for the text, learnt by HuggingFace `tokenizers`' WordPiece
    trainer from the words of Google's BasicTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    tokenizer = Tokenizer(models.WordPiece(
        unk_token="[UNK]", max_input_chars_per_word=MAX_CHARS_PER_WORD))
    # The trainer sees the words joined by spaces: they hold no whitespace.
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        continuing_subword_prefix="##", show_progress=False)
    lines = (" ".join(basic_tokenize(s, lower_case))
             for document in documents for s in document)
    tokenizer.train_from_iterator(lines, trainer)
    learnt = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    vocab = list(SPECIAL_TOKENS)
    vocab += [t for t, _ in learnt if t not in SPECIAL_TOKENS]
    return vocab


def write_vocab(vocab, path):
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("".join(token + "\n" for token in vocab))


def read_vocab(path):
    """Tokens of a vocab file, one per line; ValueError if unusable.

    Lines end at '\n' only and are stripped, as in Google's load_vocab.
    """
    data = _read_bytes(path, "vocab file ")
    try:
        tokens = data.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        raise ValueError(f"Vocab file {path} is not UTF-8 text") from None
    if tokens and tokens[-1] == "":
        tokens.pop()
    tokens = [t.strip() for t in tokens]
    missing = [t for t in ("[UNK]", "[CLS]", "[SEP]", "[MASK]")
               if t not in tokens]
    if missing:
        raise ValueError(f"Vocab file {path} lacks the tokens {missing}")
    return tokens


def tokenize_documents(documents, vocab_file, lower_case=True):
    """Documents as lists of sentences, sentences as lists of words and words
    as lists of WordPiece ids (Google BERT's tokenization, BertTokenizer).
    Sentences without a word and documents without a sentence are left
    out."""
    tokenizer = BertTokenizer(read_vocab(vocab_file), lower_case)
    result = []
    for document in documents:
        tokenized = [words for words in map(tokenizer.tokenize, document)
                     if words]
        if tokenized:
            result.append(tokenized)
    return result


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------

Instance = collections.namedtuple(
    "Instance", ["tokens", "segment_ids", "masked_positions", "masked_ids",
                 "is_random_next"])


class Vocab:
    """The ids the example generator needs."""

    def __init__(self, tokens):
        index = {t: i for i, t in enumerate(tokens)}
        self.size = len(tokens)
        self.cls, self.sep = index["[CLS]"], index["[SEP]"]
        self.mask = index["[MASK]"]
        special = {index[t] for t in SPECIAL_TOKENS if t in index}
        # Random replacements are ordinary tokens, never a special one.
        self.ordinary = [i for i in range(len(tokens)) if i not in special
                         and not (tokens[i].startswith("[")
                                  and tokens[i].endswith("]"))]


def _flatten(sentences):
    """Sentences of words of pieces -> (piece ids, word-start flags)."""
    ids, starts = [], []
    for sentence in sentences:
        for word in sentence:
            for j, piece in enumerate(word):
                ids.append(piece)
                starts.append(j == 0)
    return ids, starts


def _truncate_pair(a, b, max_tokens, rng):
    """Drops pieces from the front or back of the longer segment."""
    while len(a[0]) + len(b[0]) > max_tokens:
        longer = a if len(a[0]) > len(b[0]) else b
        if rng.random() < 0.5:
            del longer[0][0], longer[1][0]
        else:
            longer[0].pop()
            longer[1].pop()


def mask_tokens(tokens, word_starts, vocab, masked_lm_prob, max_predictions,
                whole_word_mask, rng):
    """Chooses round(masked_lm_prob * len(tokens)) ordinary tokens (at
    least 1, at most max_predictions; Google's count, which includes [CLS]
    and [SEP]s in the length), replacing 80% of them
    by [MASK], 10% by a random token and leaving 10% unchanged.

    Returns (new tokens, sorted positions, original ids at the positions).
    """
    groups = []
    for i, token in enumerate(tokens):
        if token in (vocab.cls, vocab.sep):
            continue
        if whole_word_mask and groups and not word_starts[i] and (
                groups[-1][-1] == i - 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    # Google's count: a share of all the tokens, [CLS] and [SEP]s included.
    wanted = min(max_predictions,
                 max(1, int(round(len(tokens) * masked_lm_prob))))
    rng.shuffle(groups)
    output = list(tokens)
    chosen = []
    for group in groups:
        if len(chosen) >= wanted:
            break
        if len(chosen) + len(group) > wanted:
            continue
        for i in group:
            r = rng.random()
            if r < 0.8:
                output[i] = vocab.mask
            elif r >= 0.9:
                output[i] = rng.choice(vocab.ordinary)
            chosen.append(i)
    chosen.sort()
    return output, chosen, [tokens[i] for i in chosen]


def _document_instances(documents, index, vocab, max_seq_length,
                        short_seq_prob, masked_lm_prob, max_predictions,
                        whole_word_mask, rng):
    document = documents[index]
    max_tokens = max_seq_length - 3
    target = max_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_tokens)
    instances, chunk, length, i = [], [], 0, 0
    while i < len(document):
        chunk.append(document[i])
        length += sum(len(w) for w in document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = _flatten(chunk[:a_end])
            random_next = len(chunk) == 1 or rng.random() < 0.5
            if random_next and len(documents) > 1:
                b_target = max(1, target - len(a[0]))
                other = index
                for _ in range(10):
                    other = rng.randrange(len(documents))
                    if other != index:
                        break
                other_doc = documents[other]
                start = rng.randrange(len(other_doc))
                b_sentences, b_length = [], 0
                for sentence in other_doc[start:]:
                    b_sentences.append(sentence)
                    b_length += sum(len(w) for w in sentence)
                    if b_length >= b_target:
                        break
                b = _flatten(b_sentences)
                i -= len(chunk) - a_end  # unused sentences come back
            else:
                random_next = False
                b = _flatten(chunk[a_end:])
            a, b = (list(a[0]), list(a[1])), (list(b[0]), list(b[1]))
            _truncate_pair(a, b, max_tokens, rng)
            if a[0] and b[0]:
                tokens = [vocab.cls] + a[0] + [vocab.sep] + b[0] + [vocab.sep]
                starts = [True] + a[1] + [True] + b[1] + [True]
                segments = [0] * (len(a[0]) + 2) + [1] * (len(b[0]) + 1)
                masked, positions, ids = mask_tokens(
                    tokens, starts, vocab, masked_lm_prob, max_predictions,
                    whole_word_mask, rng)
                instances.append(Instance(masked, segments, positions, ids,
                                          random_next))
            chunk, length = [], 0
            target = max_tokens
            if rng.random() < short_seq_prob:
                target = rng.randint(2, max_tokens)
        i += 1
    return instances


def create_instances(documents, vocab, max_seq_length=128,
                     max_predictions=20, masked_lm_prob=0.15,
                     short_seq_prob=0.1, dupe_factor=5,
                     whole_word_mask=False, seed=12345):
    """Sentence-pair examples with masks, in a seeded random order.

    `documents` come from `tokenize_documents`; `vocab` is a `Vocab`.
    """
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be >= 5, got {max_seq_length}")
    rng = random.Random(seed)
    instances = []
    for _ in range(dupe_factor):
        for index in range(len(documents)):
            instances.extend(_document_instances(
                documents, index, vocab, max_seq_length, short_seq_prob,
                masked_lm_prob, max_predictions, whole_word_mask, rng))
    rng.shuffle(instances)
    return instances


def instance_to_example(instance, max_seq_length, max_predictions):
    import tensorflow as tf
    n = len(instance.tokens)
    pad = max_seq_length - n
    p = len(instance.masked_positions)
    p_pad = max_predictions - p

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    features = {
        "input_ids": ints(instance.tokens + [0] * pad),
        "input_mask": ints([1] * n + [0] * pad),
        "segment_ids": ints(instance.segment_ids + [0] * pad),
        "masked_lm_positions": ints(instance.masked_positions + [0] * p_pad),
        "masked_lm_ids": ints(instance.masked_ids + [0] * p_pad),
        "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(
            value=[1.0] * p + [0.0] * p_pad)),
        "next_sentence_labels": ints([1 if instance.is_random_next else 0]),
    }
    return tf.train.Example(features=tf.train.Features(feature=features))


def write_instances(instances, output_files, max_seq_length,
                    max_predictions):
    """Writes the examples round-robin into `output_files`."""
    import tensorflow as tf
    writers = [tf.io.TFRecordWriter(path) for path in output_files]
    try:
        for i, instance in enumerate(instances):
            example = instance_to_example(instance, max_seq_length,
                                          max_predictions)
            writers[i % len(writers)].write(example.SerializeToString())
    finally:
        for writer in writers:
            writer.close()


def write_metadata(path, **values):
    import tensorflow as tf
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump(values, f, indent=2, sort_keys=True)
        f.write("\n")


def create_pretraining_data(documents, output_files, vocab_file=None,
                            output_vocab_file=None, max_seq_length=128,
                            max_predictions=20, masked_lm_prob=0.15,
                            short_seq_prob=0.1, dupe_factor=5,
                            whole_word_mask=False, lower_case=True,
                            vocab_size=8000, seed=12345):
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


def check_flags(max_seq_length, max_predictions, masked_lm_prob,
                short_seq_prob, dupe_factor, vocab_size):
    """ValueError for values no example can be made with."""
    if max_seq_length < 5:
        raise ValueError(f"--max_seq_length must be >= 5, got "
                         f"{max_seq_length}")
    if not 1 <= max_predictions <= max_seq_length:
        raise ValueError(
            f"--max_predictions_per_seq must be in [1, max_seq_length="
            f"{max_seq_length}], got {max_predictions}")
    if not 0 < masked_lm_prob < 1:
        raise ValueError(f"--masked_lm_prob must be in (0, 1), got "
                         f"{masked_lm_prob}")
    if not 0 <= short_seq_prob <= 1:
        raise ValueError(f"--short_seq_prob must be in [0, 1], got "
                         f"{short_seq_prob}")
    if dupe_factor < 1:
        raise ValueError(f"--dupe_factor must be >= 1, got {dupe_factor}")
    if vocab_size < len(SPECIAL_TOKENS) + 1:
        raise ValueError(f"--vocab_size must be > {len(SPECIAL_TOKENS)}, "
                         f"got {vocab_size}")


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
            from train import corpus
            documents = corpus.stdlib_documents()
    except ValueError as error:
        sys.exit(f"Error: {error}")
    import tensorflow as tf
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
    logging.info("Wrote %d examples to %s (vocabulary %s)", count,
                 ", ".join(output_files), vocab_file)
    print(f"Wrote {count} examples to {', '.join(output_files)}; "
          f"vocabulary: {vocab_file}")


if __name__ == "__main__":
    define_flags()
    _define_program_flags()
    app.run(main)
