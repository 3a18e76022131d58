"""Streamed example creation (train.data.streaming): units cut at document
boundaries, the same shards whatever the number of workers, memory bounded
by a unit, the random next sentence drawn within a unit, progress lines,
and the learnt vocabulary from streamed word counts."""

import collections
import os

import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train.data import corpus
from train.data import examples
from train.data import streaming
from train.data import tokenization


def _text(path, documents):
    corpus.write_text_corpus(documents, str(path))
    return str(path)


def test_units_hold_the_documents_of_the_whole_file(tmp_path):
    """Concatenated, the units' documents are read_documents' of the whole
    file, also with CRLF lines, lines of blanks and leading blank lines."""
    path = tmp_path / "odd.txt"
    parts = ["\n\n  \n"]
    for i in range(300):
        ending = "\r\n" if i % 3 == 0 else "\n"
        parts.append(f"Sentence one of {i}.{ending}Two of {i}, longer "
                     f"here.{ending}" + (" \t" if i % 5 == 0 else "")
                     + ending)
    path.write_bytes("".join(parts).encode("utf-8"))
    whole = corpus.read_documents([str(path)])
    for unit_bytes in (1, 50, 997, 10 ** 6):
        units = streaming.plan_units([str(path)], unit_bytes)
        assert units[0].start == 0 and units[-1].end == path.stat().st_size
        assert all(a.end == b.start for a, b in zip(units, units[1:]))
        assert [u.index for u in units] == list(range(len(units)))
        read = [d for u in units for d in streaming.read_unit(u)]
        assert read == whole, unit_bytes
    assert len(streaming.plan_units([str(path)], 997)) > 10


def test_output_file_names():
    assert streaming.output_files(["a", "b"]) == ["a", "b"]
    assert streaming.output_files(["out/x"], 3) == [
        "out/x-00000-of-00003", "out/x-00001-of-00003",
        "out/x-00002-of-00003"]
    assert streaming.output_files(["a", "b"], 2) == ["a", "b"]
    with pytest.raises(ValueError, match="--output_shards=3 with 2"):
        streaming.output_files(["a", "b"], 3)


def test_shards_are_the_same_for_one_and_two_workers(tmp_path):
    """Two real runs of the program, one with 2 worker processes: every
    shard and the learnt vocabulary byte for byte; the vocabulary is the
    one learnt from all the documents at once; progress lines only when
    asked for by a short interval."""
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 400)
    results = {}
    for workers, progress in ((1, 10), (2, 0)):
        out = tmp_path / f"w{workers}"
        result = _testing.run(
            ["-m", "train.create_pretraining_data", f"--input_file={text}",
             f"--output_file={out}/train", "--output_shards=3",
             f"--num_workers={workers}", "--unit_bytes=20000",
             f"--progress_seconds={progress}", "--max_seq_length=32",
             "--max_predictions_per_seq=5", "--vocab_size=500",
             "--dupe_factor=2", "--random_seed=9"], timeout=400)
        assert result.returncode == 0, result.stderr[-3000:]
        results[workers] = result
    names = ["vocab.txt"] + [f"train-{i:05d}-of-00003" for i in range(3)]
    assert sorted(os.listdir(tmp_path / "w1")) == sorted(names)
    for name in names:
        first, second = ((tmp_path / f"w{w}" / name).read_bytes()
                         for w in (1, 2))
        assert len(first) > 1000 and first == second, name
    whole = tokenization.learn_vocab(corpus.read_documents([text]), 500)
    assert (tmp_path / "w1" / "vocab.txt").read_text().splitlines() == whole
    assert "Progress:" not in results[1].stderr
    lines = [line for line in results[2].stderr.splitlines()
             if line.startswith("Progress:")]
    assert len(lines) >= 5, results[2].stderr[-2000:]
    assert all(" documents" in line and " MB/s, ETA " in line
               for line in lines)
    assert any(" examples, " in line for line in lines)


def _instrumented(monkeypatch):
    """Records how many documents each read of a unit holds."""
    held = []
    read_unit = streaming.read_unit

    def counting(unit):
        documents = read_unit(unit)
        held.append(len(documents))
        return documents

    monkeypatch.setattr(streaming, "read_unit", counting)
    return held


def test_documents_held_at_once_do_not_grow_with_the_input(tmp_path,
                                                           monkeypatch):
    documents = corpus.stdlib_documents(max_documents=300)
    vocab = str(tmp_path / "vocab.txt")
    tokenization.write_vocab(tokenization.learn_vocab(documents, 400), vocab)
    settings = streaming.Settings(vocab, True, 32, 5, 0.15, 0.1, 1, False, 3)
    held = {}
    for times in (1, 4):
        text = _text(tmp_path / f"x{times}.txt", documents * times)
        held[times] = _instrumented(monkeypatch)
        count, read = streaming.write_examples(
            streaming.plan_units([text], 8000), settings,
            [str(tmp_path / f"out{times}")])
        monkeypatch.undo()
        assert read == 300 * times and count > 100 * times
    longest = max(len("\n".join(d)) for d in documents)
    # A unit holds the documents of about unit_bytes of text, whatever the
    # whole input: the same most at 4x the text as at 1x.
    assert max(held[4]) <= (8000 + longest) / min(
        len("\n".join(d)) for d in documents)
    assert max(held[4]) <= max(held[1]) + 5
    assert sum(held[4]) == 1200 and max(held[4]) < 1200 / 20


def test_workers_hold_at_most_two_units_each():
    """run_units with a pool of 2 never has more than 4 units in flight or
    waiting, however many units there are."""

    class Pending:
        def __init__(self, pool, task):
            self.pool, self.task = pool, task

        def get(self):
            self.pool.outstanding -= 1
            return self.task[0]

    class FakePool:
        outstanding = most = 0

        def apply_async(self, function, args):
            self.outstanding += 1
            self.most = max(self.most, self.outstanding)
            return Pending(self, args[0])

    pool = FakePool()
    units = list(range(50))
    assert list(streaming.run_units(None, units, None,
                                    streaming.Pool(pool, 2))) == units
    assert pool.most == 4


def _vocab(path, words):
    tokenization.write_vocab(list(tokenization.SPECIAL_TOKENS) + words,
                             str(path))
    return str(path)


def test_the_random_next_sentence_comes_from_the_same_unit(tmp_path):
    """Two units: documents of 'apple' words, then of 'zebra' words. A
    pair never mixes them, and a random next sentence comes from another
    document of the unit."""
    marks = [f"d{k}" for k in range(60)]
    first = [[f"apple {marks[k]} one two three."] * 3 for k in range(30)]
    second = [[f"zebra {marks[k]} one two three."] * 3
              for k in range(30, 60)]
    text = _text(tmp_path / "t.txt", first)
    size = os.path.getsize(text)
    text = _text(tmp_path / "t.txt", first + second)
    units = streaming.plan_units([text], size - 1)
    assert len(units) == 2 and units[0].end == size
    words = ["apple", "zebra", "one", "two", "three", "."] + marks
    vocab = _vocab(tmp_path / "vocab.txt", words)
    ids = {w: i + len(tokenization.SPECIAL_TOKENS)
           for i, w in enumerate(words)}
    settings = streaming.Settings(vocab, True, 24, 3, 0.15, 0.0, 3, False, 1)
    randoms = 0
    for unit, own, other in ((units[0], "apple", "zebra"),
                             (units[1], "zebra", "apple")):
        result = streaming.unit_examples((unit, settings))
        for record in result.records:
            feature = tf.train.Example.FromString(record).features.feature
            tokens = list(feature["input_ids"].int64_list.value)
            originals = dict(zip(
                feature["masked_lm_positions"].int64_list.value,
                feature["masked_lm_ids"].int64_list.value))
            tokens = [originals.get(i, t) for i, t in enumerate(tokens)]
            segments = feature["segment_ids"].int64_list.value
            assert ids[other] not in tokens
            doc = collections.defaultdict(set)
            for token, segment in zip(tokens, segments):
                if token >= ids["d0"]:
                    doc[segment].add(token)
            if feature["next_sentence_labels"].int64_list.value[0]:
                randoms += 1
                # The draw retries until it finds another document.
                assert doc[0] and doc[1] and not doc[0] & doc[1]
    assert randoms > 10


def test_the_streamed_vocabulary_is_the_whole_texts(tmp_path):
    documents = corpus.stdlib_documents(max_documents=250)
    text = _text(tmp_path / "t.txt", documents)
    units = streaming.plan_units([text], 5000)
    assert len(units) > 5
    counts, read = streaming.count_words(units)
    assert read == len(documents)
    assert tokenization.learn_vocab_from_counts(counts, 700) == (
        tokenization.learn_vocab(documents, 700))


def test_units_have_seeds_of_their_own():
    seeds = {streaming.unit_seed(s, i) for s in (1, 2) for i in range(100)}
    assert len(seeds) == 200
    assert streaming.unit_seed(1, 5) == streaming.unit_seed(1, 5)
    assert examples.EXAMPLES_VERSION >= 4
