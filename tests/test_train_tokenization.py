"""The project's tokenizer against an independent re-derivation of Google
BERT's (tests/references/google_bert_tokenization.py): the same words and ids; its
vocabulary learner against HuggingFace `tokenizers`' trainer."""

import sys

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from tests.references import google_bert_tokenization as google
from train.data import corpus
from train.data.tokenization import (SPECIAL_TOKENS, BertTokenizer,
                                basic_tokenize, learn_vocab, read_vocab,
                                tokenize_documents, write_vocab)

# Lines where tokenizers are known to disagree with Google's: compatibility
# characters (NFKC would rewrite them), accents, CJK, punctuation, control
# and format characters, emoji, long words, Greek final sigma, Turkish I.
HARD_LINES = [
    "ᴵᴺᵀᵃ and ﬁnance, ① ② Ⅻ, ＦＵＬＬ ｗｉｄｔｈ ＡＢＣ１２３, ㎏ ™ ½ ℌ",
    "Café déjà vu: naïve coöperation, Ångström, São Paulo, Ærøskøbing",
    "Crème brûlée\u0301 and e\u0301\u0302 (combining marks), ǅ Ǆ ǆ",
    "中文字符和日本語のテキスト、한국어 텍스트 and 𠀀𪜀 mixed漢字text",
    "Punctuation!? «quotes» “curly” — dashes… ¿qué? ¡sí! a-b_c/d\\e~f^g`h",
    "Control\x00chars\x01 and\x7f\u200bzero\u200dwidth\ufeff\ufffd\u00ad",
    "Tabs\tand\nnewlines\rand\u00a0nbsp\u2003em\u3000ideographic\u2028ls",
    "Emoji 😀👍🏽 🇫🇷 👨‍👩‍👧 and private use \ue000\U000f0000 unassigned \u0378",
    "ΟΔΟΣ ΣΟΦΟΣ. ΣΑΣ, σς Σ ΑΣ\u0301 İstanbul ıi ẞ straße ﬀ",
    "x" * 199 + " " + "y" * 200 + " " + "z" * 201 + " " + "é" * 201,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "[CLS] [MASK] ##ing <b>html</b> $100.00 50% C++ e-mail@host.org",
    "Greek ano teleia \u0387 question \u037e varia \u1fef, Arabic ، ؟",
    "",
    "   \t\n  ",
]


@pytest.fixture(scope="module")
def documents():
    return corpus.stdlib_documents()


@pytest.fixture(scope="module")
def vocab_file(documents, tmp_path_factory):
    """A vocabulary learnt from the default corpus, plus tokens that the
    hard lines need (whole words, ## continuations, CJK, symbols)."""
    tokens = learn_vocab(documents, 3000)
    extra = ["inta", "ᴵᴺᵀᵃ", "ﬁ", "##ﬁ", "①", "ｆ", "##ｕ", "##ｌ", "cafe",
             "deja", "中", "文", "日", "本", "語", "한국어", "😀", "##👍",
             "οδος", "οδοσ", "σοφος", "##ς", "σ", "ς", "istanbul", "i",
             "strasse", "straße", "x" * 199, "y" * 200, "##ing", "html"]
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    write_vocab(tokens + [t for t in extra if t not in tokens], str(path))
    return str(path)


@pytest.mark.parametrize("lower_case", [True, False])
def test_hard_lines_give_googles_words_and_ids(vocab_file, lower_case):
    vocab = google.load_vocab(vocab_file)
    tokenizer = BertTokenizer(read_vocab(vocab_file), lower_case)
    for line in HARD_LINES:
        assert basic_tokenize(line, lower_case) == google.basic_tokenize(
            line, lower_case), line
        assert tokenizer.tokenize(line) == google.tokenize_ids(
            line, vocab, lower_case), line


def test_no_nfkc_and_facts_of_googles_tokenization(vocab_file):
    """A few outcomes spelt out, so that a reference that drifted with the
    project would still be caught."""
    assert basic_tokenize("ᴵᴺᵀᵃ") == ["ᴵᴺᵀᵃ"]  # NFKC would give "inta"
    assert basic_tokenize("ﬁne Ｗｉｄｅ") == ["ﬁne", "ｗｉｄｅ"]
    assert basic_tokenize("Déjà-vu!") == ["deja", "-", "vu", "!"]
    assert basic_tokenize("Déjà", lower_case=False) == ["Déjà"]
    assert basic_tokenize("ΟΔΟΣ") == ["οδος"]  # Python's final sigma
    assert basic_tokenize("a\x00b\u200bc d\u2028e") == ["abc", "d", "e"]
    assert basic_tokenize("漢字text") == ["漢", "字", "text"]
    assert basic_tokenize("$5^2") == ["$", "5", "^", "2"]
    tokenizer = BertTokenizer(read_vocab(vocab_file))
    ids = tokenizer.ids
    assert tokenizer.tokenize("x" * 199) == [[ids["x" * 199]]]
    assert tokenizer.tokenize("y" * 200) == [[ids["y" * 200]]]
    assert tokenizer.tokenize("z" * 201) == [[ids["[UNK]"]]]


def test_every_code_point_between_letters():
    """Each code point in a context where cleaning, splitting, casing and
    accent stripping all show: Google's words in both casing modes."""
    mismatched = []
    codes = [c for c in range(sys.maxunicode + 1)
             if not 0xD800 <= c <= 0xDFFF]
    for lower_case, step in ((True, 1), (False, 3)):
        for start in range(0, len(codes), 4096):
            line = "".join(f"Σ{chr(c)}é " for c in codes[start:start + 4096:
                                                           step])
            if basic_tokenize(line, lower_case) != google.basic_tokenize(
                    line, lower_case):
                mismatched.append((lower_case, hex(codes[start])))
    assert not mismatched


def test_default_corpus_gives_googles_ids(documents, vocab_file):
    vocab = google.load_vocab(vocab_file)
    tokenized = tokenize_documents(documents, vocab_file)
    expected = []
    for document in documents:
        sentences = [s for s in (google.tokenize_ids(line, vocab)
                                 for line in document) if s]
        if sentences:
            expected.append(sentences)
    assert len(expected) == len(documents) > 1000
    assert tokenized == expected


def test_learnt_vocabulary_keeps_the_special_tokens_first(documents):
    tokens = learn_vocab(documents[:300], 700)
    assert tokens[:5] == list(SPECIAL_TOKENS)
    assert len(tokens) == len(set(tokens)) == 700
    assert any(t.startswith("##") for t in tokens)
    # Every word of the text is covered without [UNK]: the vocabulary holds
    # each character of the text, alone and as a continuation.
    tokenizer = BertTokenizer(tokens)
    words = [w for d in documents[:300] for s in d
             for w in tokenizer.tokenize(s)]
    assert all(tokenizer.unk not in w for w in words)


def test_vocab_file_is_read_as_google_reads_it(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n a \nb\u2028c\n"
                     "\nlast".encode())
    tokens = read_vocab(str(path))
    assert tokens == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a",
                      "b\u2028c", "", "last"]
    assert {t: i for i, t in enumerate(tokens)} == google.load_vocab(
        str(path))


def _huggingface_vocab(documents, vocab_size):
    """HuggingFace `tokenizers`' BPE trainer (which its WordPiece trainer
    runs) on the same words, each character after a word's first written
    as a code point of its own that stands for its ##continuation: then
    every id of the trainer comes from its sorted alphabet, not from a
    hash map, and its ties between equal counts fall as ours do."""
    words = [w for d in documents for s in d for w in basic_tokenize(s)]
    used = {c for w in words for c in w}
    free = (chr(c) for c in range(0xF0000, 0x110000) if chr(c) not in used)
    continuation = dict(zip(sorted(used), free))
    back = {code: "##" + c for c, code in continuation.items()}
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
        show_progress=False)
    tokenizer.train_from_iterator(
        [w[0] + "".join(continuation[c] for c in w[1:]) for w in words],
        trainer)
    learnt = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])

    def text(code):
        return back[code][2:] if code in back else code

    return [t if t in SPECIAL_TOKENS else
            ("##" if t[0] in back else "") + "".join(map(text, t))
            for t, _ in learnt]


@pytest.mark.parametrize("count, size", [(300, 700), (1200, 3000)])
def test_learnt_vocabulary_is_huggingfaces(documents, count, size):
    """The same tokens in the same order as HuggingFace's trainer, once its
    ids are made independent of hash-map order."""
    assert learn_vocab(documents[:count], size) == _huggingface_vocab(
        documents[:count], size)


def test_learnt_vocabulary_reaches_the_target_and_ties_by_age():
    # "ab" and "cd" are equally frequent: the pair of older tokens ("a" is
    # older than "c") is merged first, whatever the order of the text.
    for text in (["ab cd"], ["cd ab"]):
        tokens = learn_vocab([text], len(SPECIAL_TOKENS) + 4 + 2 + 1)
        assert tokens[len(SPECIAL_TOKENS):] == ["a", "b", "c", "d", "##b",
                                                "##d", "ab"]
    # a ##a ##a ##a: the overlapping pair (##a, ##a) counts twice per word
    # and is merged first, left to right (a ##aa ##a); then (a, ##aa) and
    # (##aa, ##a) tie and the one of older tokens goes first.
    tokens = learn_vocab([["aaaa"] * 3], 100)
    assert tokens[len(SPECIAL_TOKENS):] == ["a", "##a", "##aa", "aaa",
                                            "aaaa"]


def test_a_missing_vocab_file_is_named_once(tmp_path):
    missing = str(tmp_path / "no_such_vocab.txt")
    with pytest.raises(ValueError) as error:
        read_vocab(missing)
    message = str(error.value)
    assert message == (f"Cannot read vocab file {missing}: No such file or "
                       f"directory")
    assert message.count(missing) == 1
