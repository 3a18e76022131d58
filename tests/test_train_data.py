"""Tests of the default corpus, create_pretraining_data, the input pipeline
and the learning-rate schedule of the train package."""

import collections
import dataclasses
import re

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train.data import corpus
from train.data import examples
from train.data import features
from train.data import reading
from train.data import record_checks
from train.data import sources
from train.data import tokenization
from train.loop import schedule


def test_default_corpus_is_deterministic_english_prose():
    first = corpus.stdlib_documents(max_documents=200)
    second = corpus.stdlib_documents(max_documents=200)
    assert first == second
    assert len(first) == 200
    sentences = [s for d in first for s in d]
    assert all(len(d) >= 2 for d in first)
    assert not any(s.startswith(">>>") for s in sentences)
    words = collections.Counter(w.lower() for s in sentences
                                for w in s.split())
    for common in ("the", "a", "is", "of"):
        assert words[common] > 20


def _parse_all(paths, seq, preds):
    dataset = tf.data.TFRecordDataset(paths).batch(1000).map(
        lambda r: tf.io.parse_example(r, features.feature_spec(
            seq, preds)))
    parts = [{k: v.numpy() for k, v in batch.items()} for batch in dataset]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def test_cli_writes_google_bert_records(tmp_path):
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 120)
    out = tmp_path / "out"
    result = _testing.run(
        ["-m", "train.create_pretraining_data", f"--input_file={text}",
         f"--output_file={out}/a.tfrecord,{out}/b.tfrecord",
         "--max_seq_length=48", "--max_predictions_per_seq=8",
         "--vocab_size=500", "--dupe_factor=2"], timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    vocab = (out / "vocab.txt").read_text().splitlines()
    assert vocab[:5] == list(tokenization.SPECIAL_TOKENS)
    records = _parse_all([str(out / "a.tfrecord"), str(out / "b.tfrecord")],
                         48, 8)
    n = len(records["input_ids"])
    assert n > 100
    cls, sep = vocab.index("[CLS]"), vocab.index("[SEP]")
    for i in range(n):
        ids, mask = records["input_ids"][i], records["input_mask"][i]
        length = int(mask.sum())
        assert np.all(mask[:length] == 1) and np.all(mask[length:] == 0)
        assert np.all(ids[length:] == 0)
        assert ids[0] == cls and ids[length - 1] == sep
        seps = np.flatnonzero(ids[:length] == sep)
        assert len(seps) >= 2
        segments = records["segment_ids"][i]
        assert np.all(segments[:seps[0] + 1] == 0)
        assert np.all(segments[seps[0] + 1:length] == 1)
        weights = records["masked_lm_weights"][i]
        count = int(weights.sum())
        assert count >= 1 and np.all(weights[:count] == 1)
        positions = records["masked_lm_positions"][i][:count]
        assert np.all(np.diff(positions) > 0)
        assert np.all((positions > 0) & (positions < length))
        assert not np.isin(positions, seps).any()
        assert np.all(records["masked_lm_ids"][i][:count] < len(vocab))
    labels = records["next_sentence_labels"][:, 0]
    assert set(labels) == {0, 1}
    # Half of the pairs of multi-sentence chunks take a random B, and a
    # chunk of one sentence always does (as in Google's BERT): with short
    # docstrings the random share is above one half.
    assert 0.45 < labels.mean() < 0.85


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("masking")
    text = _testing.write_small_corpus(str(tmp_path / "t.txt"), 400)
    documents = corpus.read_documents([text])
    vocab_tokens = tokenization.learn_vocab(documents, 800)
    vocab_file = str(tmp_path / "vocab.txt")
    tokenization.write_vocab(vocab_tokens, vocab_file)
    return tokenization.tokenize_documents(documents, vocab_file), vocab_tokens


@pytest.mark.parametrize("whole_word", [False, True])
def test_masking_statistics(tokenized, whole_word):
    documents, tokens = tokenized
    vocab = examples.Vocab(tokens)
    instances = examples.create_instances(
        documents, vocab, max_seq_length=64, max_predictions=64,
        dupe_factor=3, whole_word_mask=whole_word, seed=3)
    masked = same = replaced_by_mask = 0
    short = wanted_total = 0
    for inst in instances:
        # Google's count: round(0.15 * length), [CLS] and [SEP]s included,
        # at least one. Whole words that would overshoot it are skipped,
        # so a whole-word example can fall short by less than a word.
        wanted = max(1, int(round(len(inst.tokens) * 0.15)))
        assert len(inst.masked_positions) <= wanted
        if len(inst.masked_positions) < wanted:
            assert whole_word
            short += 1
        masked += len(inst.masked_positions)
        wanted_total += wanted
        for position, original in zip(inst.masked_positions,
                                      inst.masked_ids):
            now = inst.tokens[position]
            replaced_by_mask += now == vocab.mask
            same += now == original
    random_share = 1 - (replaced_by_mask + same) / masked
    # Rounding each example's count lifts the share a little above 0.15.
    total = sum(len(inst.tokens) for inst in instances)
    assert 0.15 <= wanted_total / total < 0.16
    assert masked / wanted_total > (0.97 if whole_word else 1 - 1e-12)
    assert short < 0.2 * len(instances)
    assert replaced_by_mask / masked == pytest.approx(0.8, abs=0.02)
    # A random replacement can draw the original token: a little over 10%.
    assert same / masked == pytest.approx(0.1, abs=0.02)
    assert random_share == pytest.approx(0.1, abs=0.02)
    if whole_word:
        # A masked continuation piece (##...) has the piece before it
        # masked too, unless truncation left it first in its segment.
        checked = 0
        for inst in instances[:300]:
            positions = set(inst.masked_positions)
            for p, original in zip(inst.masked_positions, inst.masked_ids):
                if tokens[original].startswith("##"):
                    checked += 1
                    assert p - 1 in positions or inst.tokens[p - 1] in (
                        vocab.cls, vocab.sep)
        assert checked > 20


def test_pipeline_batches_are_static_and_deterministic(tmp_path):
    files, vocab = _testing.make_records(str(tmp_path), shards=2,
                                         max_documents=100, dupe_factor=1)
    size = len(open(vocab).read().splitlines())
    assert record_checks.check_files([str(tmp_path / "*.tfrecord")], 32, 5,
                                      size) == sorted(files)
    make = reading.dataset_fn(files, 4, 32, 5, seed=1,
                                     shuffle_buffer=50)
    context = tf.distribute.InputContext()
    first = [b["input_ids"].numpy() for b in make(context).take(6)]
    again = [b["input_ids"].numpy() for b in make(context).take(6)]
    np.testing.assert_array_equal(first, again)
    skipping = reading.dataset_fn(files, 4, 32, 5, seed=1,
                                         batches_to_skip=4,
                                         shuffle_buffer=50)
    skipped = [b["input_ids"].numpy() for b in skipping(context).take(2)]
    np.testing.assert_array_equal(skipped, first[4:6])
    spec = make(context).element_spec
    assert spec["input_ids"].shape == (4, 32)
    assert spec["masked_lm_weights"].shape == (4, 5)


def test_schedule_warmup_decay_and_phase2():
    s = schedule.PretrainingSchedule(
        1.0, phase1_steps=100, warmup_steps=10, end_learning_rate=0.0,
        phase2_steps=20, phase2_learning_rate=0.5, phase2_warmup_steps=5,
        accumulation_steps=2)
    rate = lambda update: float(s(2 * update + 1))  # noqa: E731
    assert rate(0) == pytest.approx(0.1)
    assert rate(4) == pytest.approx(0.5)
    assert rate(9) == pytest.approx(1.0)
    assert rate(50) == pytest.approx(0.5)
    assert rate(99) == pytest.approx(0.01)
    assert rate(100) == pytest.approx(0.1)  # phase 2 warms up again
    assert rate(104) == pytest.approx(0.5)
    assert rate(110) == pytest.approx(0.25)
    assert rate(119) == pytest.approx(0.025)
    rates = [rate(u) for u in range(10, 100)]
    assert all(a > b for a, b in zip(rates, rates[1:]))


def test_made_examples_are_counted_in_numbers(tmp_path, capsys):
    """The line after making examples gives numbers, one per phase, not a
    Python list ("-> [1637] examples")."""
    from train.data import sources
    from train.config import PretrainConfig
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 60)
    for changes, wanted in (
            ({}, r"documents -> \d+ examples, vocabulary"),
            (dict(num_train_steps=2, phase2_steps=1,
                  phase2_max_seq_length=48, phase2_max_predictions_per_seq=6),
             r"documents -> \d+ examples \(phase 1\), \d+ \(phase 2\), "
             r"vocabulary")):
        config = PretrainConfig(
            input_file=text, max_seq_length=32, max_predictions_per_seq=5,
            vocab_size=300, dupe_factor=1, **changes)
        sources.prepare_examples(str(tmp_path / f"data{len(changes)}"),
                              sources.find_source(config), config.phases(),
                              config, None)
        out = capsys.readouterr().out
        assert re.search(wanted, out), out
        assert "[" not in out.splitlines()[-1], out



def test_schedule_change_warning():
    """What a resumed run says when its flags give another schedule than
    its checkpoint's; nothing when only the accumulation differs."""
    old = schedule.PretrainingSchedule(1e-2, phase1_steps=20,
                                       warmup_steps=2)
    same = schedule.PretrainingSchedule(1e-2, phase1_steps=20,
                                        warmup_steps=2, accumulation_steps=4)
    assert schedule.change_warning(old.get_config(), same, 10) is None
    longer = schedule.PretrainingSchedule(1e-2, phase1_steps=40,
                                          warmup_steps=4)
    assert schedule.change_warning(old.get_config(), longer, 20) == (
        "Warning: resuming at update 20 with another learning-rate "
        "schedule: horizon (--num_train_steps) 20 -> 40 updates; "
        "--warmup_steps 2 -> 4; the rate jumps from 5.000e-04 (update 20) "
        "to 5.000e-03 (update 21). The schedule of the new flags is used "
        "from here on")


def test_heldout_split_depends_on_the_text_alone():
    documents = [[f"sentence {i} of a document.", f"another {i}."]
                 for i in range(2000)]
    train, heldout = sources.split_heldout(documents, 0.05)
    assert 60 < len(heldout) < 140  # ~5 % of 2,000
    assert not {tuple(d) for d in train} & {tuple(d) for d in heldout}
    assert len(train) + len(heldout) == len(documents)
    # The same documents in another order are held out alike.
    again_train, again_heldout = sources.split_heldout(documents[::-1], 0.05)
    assert sorted(map(tuple, again_heldout)) == sorted(map(tuple, heldout))
    assert sources.split_heldout(documents, 0.0) == (documents, [])


def test_context_free_baseline_by_hand():
    # Training tokens: 5 x3, 6 x1 (8 tokens in all with 7 x4).
    train = [[[[5, 5], [6]], [[5, 7, 7, 7, 7]]]]
    instances = [
        examples.Instance([], [], [1, 2], [5, 7], True),
        examples.Instance([], [], [3], [9], False),
        examples.Instance([], [], [1], [7], False)]
    baseline = sources.context_free_baseline(train, instances)
    total, vocab = 8, 10  # ids 0..9 seen: add-one over 10 ids
    expected = -np.mean([np.log((3 + 1) / (total + vocab)),
                         np.log((4 + 1) / (total + vocab)),
                         np.log((0 + 1) / (total + vocab)),
                         np.log((4 + 1) / (total + vocab))])
    assert baseline["masked_lm_unigram_cross_entropy"] == pytest.approx(
        expected)
    assert baseline["masked_lm_most_frequent_accuracy"] == 0.5  # 7, twice
    assert baseline["next_sentence_majority_accuracy"] == pytest.approx(2 / 3)
    assert baseline["predictions"] == 4


def test_a_run_evaluates_documents_it_never_trained_on(tmp_path, capsys):
    """Held-out documents make no training example; the run ends with
    their metrics beside the context-free baseline."""
    from train import PretrainConfig, run_pretraining
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 200)
    config = PretrainConfig(
        input_file=(text,), max_seq_length=32, max_predictions_per_seq=5,
        vocab_size=300, dupe_factor=1, heldout_share=0.2,
        model_dir=str(tmp_path / "run"), num_train_steps=2, log_steps=2,
        train_batch_size=8, export_dir="none", model_size="tiny")
    result = run_pretraining(config)
    out = capsys.readouterr().out
    assert re.search(r"Held-out \(\d+ examples of \d+ documents never "
                     r"trained on\): MLM loss [\d.]+ against [\d.]+ for word "
                     r"frequencies alone", out), out
    heldout = result["heldout"]
    assert heldout["examples"] > 0
    assert 0 < heldout["baseline"]["masked_lm_unigram_cross_entropy"] < 10
    # The training examples are made from the other documents only.
    train, held = sources.split_heldout(corpus.read_documents([text]), 0.2)
    made = re.search(r"(\d+) documents -> .*; (\d+) held-out documents",
                     out)
    assert made and (int(made[1]), int(made[2])) == (len(train), len(held))
    assert (tmp_path / "run" / "data" / sources.HELDOUT_FILE).exists()
    # --heldout_share=0 turns it off.
    off = run_pretraining(dataclasses.replace(
        config, heldout_share=0.0, model_dir=str(tmp_path / "off")))
    assert off["heldout"] is None
    assert "Held-out" not in capsys.readouterr().out
