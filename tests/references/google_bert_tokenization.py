"""A reference for the tokenization of Google's BERT (tokenization.py of
google-research/bert: BasicTokenizer then WordpieceTokenizer), re-derived
from its published algorithm as a plain character loop, for the tests.

It is deliberately slow and literal: one decision per character, in the
order Google makes them, with Python's `unicodedata` answering every
Unicode question (as it does for Google's code).  The project's tokenizer
(train.create_pretraining_data.BertTokenizer) is checked against it in
tests/test_train_tokenization.py.

The algorithm, step by step:
1. Clean: drop U+0000, U+FFFD and control characters (categories Cc and
   Cf, except tab, newline and carriage return); turn whitespace (space,
   tab, newline, carriage return and category Zs) into a space.
2. Put a space on both sides of every CJK ideograph (fixed code point
   ranges, not a Unicode property).
3. Split on whitespace (Python's `str.split()`).
4. When lower-casing: each piece is lower-cased (`str.lower`), decomposed
   (NFD) and stripped of non-spacing marks (category Mn).  No NFKC.
5. Split each piece on punctuation: every punctuation character becomes a
   word of its own.  ASCII non-alphanumeric printable characters and the
   Unicode categories P* are punctuation.
6. WordPiece: a word longer than 200 characters is [UNK]; otherwise the
   longest vocabulary entry that starts the rest of the word is taken
   (continuations prefixed with '##'), and a word with a part that no
   entry matches becomes a single [UNK].
"""

import unicodedata

MAX_CHARS_PER_WORD = 200

_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF),
               (0x2A700, 0x2B73F), (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF),
               (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))
_ASCII_PUNCT_RANGES = ((33, 47), (58, 64), (91, 96), (123, 126))


def _whitespace(ch):
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch) in ("Cc", "Cf")


def _punctuation(ch):
    code = ord(ch)
    if any(low <= code <= high for low, high in _ASCII_PUNCT_RANGES):
        return True
    return unicodedata.category(ch)[0] == "P"


def _cjk(ch):
    code = ord(ch)
    return any(low <= code <= high for low, high in _CJK_RANGES)


def basic_tokenize(text, lower_case=True):
    """Steps 1-5: the words of `text`."""
    cleaned = []
    for ch in text:
        if ord(ch) in (0, 0xFFFD) or _control(ch):
            continue
        cleaned.append(" " if _whitespace(ch) else ch)
    spaced = []
    for ch in cleaned:
        spaced.append(f" {ch} " if _cjk(ch) else ch)
    words = []
    for piece in "".join(spaced).split():
        if lower_case:
            piece = piece.lower()
            piece = "".join(
                ch for ch in unicodedata.normalize("NFD", piece)
                if unicodedata.category(ch) != "Mn")
        current = ""
        for ch in piece:
            if _punctuation(ch):
                if current:
                    words.append(current)
                    current = ""
                words.append(ch)
            else:
                current += ch
        if current:
            words.append(current)
    # Google joins the words with spaces and splits again: a word can only
    # vanish there if it is whitespace, which step 3 already removed.
    return " ".join(words).split()


def wordpiece(word, vocab, unk="[UNK]"):
    """Step 6 for one word: its pieces (strings)."""
    if len(word) > MAX_CHARS_PER_WORD:
        return [unk]
    pieces, start = [], 0
    while start < len(word):
        for end in range(len(word), start, -1):
            candidate = word[start:end] if start == 0 else (
                "##" + word[start:end])
            if candidate in vocab:
                pieces.append(candidate)
                start = end
                break
        else:
            return [unk]
    return pieces


def load_vocab(path):
    """token -> id as Google reads vocab.txt: one token per '\\n'-ended
    line, stripped; a repeated token keeps its last line number."""
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    if lines[-1] == "":  # the file's last line ended with a newline
        lines.pop()
    vocab = {}
    for index, line in enumerate(lines):
        vocab[line.strip()] = index
    return vocab


def tokenize_ids(text, vocab, lower_case=True):
    """The WordPiece ids of `text`, one list per word."""
    return [[vocab[p] for p in wordpiece(w, vocab)]
            for w in basic_tokenize(text, lower_case)]
