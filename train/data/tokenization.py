"""Text -> WordPiece ids, as Google BERT's tokenization.py does, and the
WordPiece vocabulary: learnt from text, read and written.

`basic_tokenize` splits text into words and `BertTokenizer` splits words
into WordPiece ids exactly as Google's `FullTokenizer` (lower-casing strips
accents, no NFKC). `learn_vocab` learns a vocabulary from text with the
algorithm of HuggingFace `tokenizers`' WordPiece trainer (merges of the most
frequent pair of pieces), made deterministic: the same text and size give
the same `vocab.txt`, token for token, in every process.
"""

import collections
import functools
import heapq
import re
import sys
import unicodedata

import tensorflow as tf

from train.data import features
from train.runtime import paths

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Google's tokenization (tokenization.py of google-research/bert).  Every
# Unicode question is answered by Python's `unicodedata`, as it is for
# Google's code, and the steps run in Google's order; only the mechanics
# differ (translation tables and regular expressions instead of a loop over
# characters), which is what makes it fast.  tensorflow_text's BertTokenizer
# is not used: it applies NFKC ("ᴵᴺᵀᵃ" -> "inta"), which Google does not.

# Words longer than this (in characters) become [UNK], as in Google's
# WordpieceTokenizer (whose default is 200; HuggingFace's copy uses 100).
MAX_CHARS_PER_WORD = 200

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


def learn_vocab(documents, vocab_size=features.VOCAB_SIZE,
                lower_case=True):
    """A WordPiece vocabulary (list of tokens) learnt from the words of
    Google's BasicTokenizer in `documents` (lists of sentences).

    The tokens are SPECIAL_TOKENS ([PAD] at 0), every character of the
    text, every character that follows another in a word as a
    ##continuation, then the piece of each merge of the most frequent
    adjacent pair of pieces, until there are `vocab_size` tokens or no
    pair is left: the algorithm of HuggingFace `tokenizers`'
    WordPieceTrainer. Ties go to the pair of older tokens (lower ids), and
    every id follows from the text alone, so the result is the same in
    every process; tokenizers' own trainer numbers the ##continuations in
    hash-map order, which changes its vocabulary from one process to the
    next (huggingface/tokenizers#1794).
    """
    counts = collections.Counter(
        word for document in documents for sentence in document
        for word in basic_tokenize(sentence, lower_case))
    return learn_vocab_from_counts(counts, vocab_size)


def learn_vocab_from_counts(counts, vocab_size=features.VOCAB_SIZE):
    """`learn_vocab` from word counts ({word: count}, in the order the
    words first occur), as train.data.streaming counts them one unit of
    text at a time: the memory is bounded by the distinct words, not by
    the text."""
    tokens = list(SPECIAL_TOKENS)
    tokens += sorted({c for word in counts for c in word})
    tokens += sorted({"##" + c for word in counts for c in word[1:]})
    ids = {token: i for i, token in enumerate(tokens)}
    pairs = _PairCounts(
        [[ids[w[0]]] + [ids["##" + c] for c in w[1:]] for w in counts],
        list(counts.values()))
    while len(tokens) < vocab_size:
        pair = pairs.most_frequent()
        if pair is None:
            break
        # The second piece is always a ##continuation.
        piece = tokens[pair[0]] + tokens[pair[1]][2:]
        if piece not in ids:
            ids[piece] = len(tokens)
            tokens.append(piece)
        pairs.merge(pair, ids[piece])
    return tokens


class _PairCounts:
    """How often each adjacent pair of ids occurs in words of ids (each word
    weighted by its count), the words it occurs in, and a heap of
    (-count, pair) whose stale entries are corrected when they come up."""

    def __init__(self, words, counts):
        self.words, self.counts = words, counts
        self.count = collections.Counter()
        self.where = collections.defaultdict(set)
        for i, word in enumerate(words):
            for pair in zip(word, word[1:]):
                self.count[pair] += counts[i]
                self.where[pair].add(i)
        self.heap = [(-c, pair) for pair, c in self.count.items()]
        heapq.heapify(self.heap)

    def most_frequent(self):
        """The pair of the highest count (of the lowest ids among equal
        counts), or None when no pair is left."""
        while self.heap:
            negative, pair = heapq.heappop(self.heap)
            count = self.count[pair]
            if count == -negative and count > 0:
                return pair
            if count > 0:
                heapq.heappush(self.heap, (-count, pair))
        return None

    def merge(self, pair, new_id):
        """Replaces `pair` by `new_id` in every word, left to right."""
        first, second = pair
        count, where, grown = self.count, self.where, set()
        for i in self.where.pop(pair):
            word, weight, j = self.words[i], self.counts[i], 0
            while j < len(word) - 1:
                if word[j] != first or word[j + 1] != second:
                    j += 1
                    continue
                # Only the pairs around the merged one change.
                if j > 0:
                    count[word[j - 1], first] -= weight
                    count[word[j - 1], new_id] += weight
                    where[word[j - 1], new_id].add(i)
                    grown.add((word[j - 1], new_id))
                if j + 2 < len(word):
                    count[second, word[j + 2]] -= weight
                    count[new_id, word[j + 2]] += weight
                    where[new_id, word[j + 2]].add(i)
                    grown.add((new_id, word[j + 2]))
                count[pair] -= weight
                word[j:j + 2] = [new_id]
                j += 1
        # Only pairs with the new id gained occurrences; the others' stale
        # entries are corrected in most_frequent.
        for p in grown:
            heapq.heappush(self.heap, (-count[p], p))


def _read_bytes(path, kind):
    """The bytes of `path`; ValueError "Cannot read <kind><path>: ..."."""
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as error:
        raise ValueError(
            f"Cannot read {kind}{path}: {_reason(error, path)}") from None


def _reason(error, path):
    """TensorFlow's message for a file, without the path it starts with
    ("<path>; No such file or directory"): the caller names the file."""
    message = (error.message or str(error)).strip()
    prefix = f"{path};"
    if message.startswith(prefix):
        return message[len(prefix):].strip()
    return message


def write_vocab(vocab, path):
    paths.write_atomically(path, "".join(token + "\n" for token in vocab))


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
    return tokenize_with(BertTokenizer(read_vocab(vocab_file), lower_case),
                         documents)


def tokenize_with(tokenizer, documents):
    """`tokenize_documents` with a BertTokenizer already made."""
    result = []
    for document in documents:
        tokenized = [words for words in map(tokenizer.tokenize, document)
                     if words]
        if tokenized:
            result.append(tokenized)
    return result
