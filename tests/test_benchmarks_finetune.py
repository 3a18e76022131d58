"""benchmarks.finetune and its finetune_tasks and finetune_bag_of_words: the
order task's examples, that the pretraining never sees them, the
bag-of-words baseline on toy tasks, and a --quick run (pretrains, exports,
scores the three rows with each seed)."""

import json
import os

import numpy as np
import pytest

from benchmarks import finetune
from benchmarks import finetune_bag_of_words
from benchmarks import finetune_tasks
from train.data import corpus
from tests.support import train_testing

QUICK = finetune.FinetuneConfig.quick("unused")


def _documents(count, length):
    """Documents of unique sentences, so that where a sentence comes from
    and what follows it is known."""
    return [[f"Sentence {s} of document {d}." for s in range(length + d % 3)]
            for d in range(count)]


def test_order_examples_are_balanced_adjacent_pairs_swapped_when_labelled():
    documents = _documents(40, 3)
    next_of = {a: b for document in documents
               for a, b in zip(document, document[1:])}
    pairs = sum(len(document) - 1 for document in documents)
    examples = finetune_tasks.order_examples(documents, seed=3)
    assert len(examples) == pairs
    labels = [label for _, _, label in examples]
    assert abs(labels.count(0) - labels.count(1)) <= 1
    for first, second, label in examples:
        if label == 1:
            assert next_of.get(first) == second
        else:
            assert next_of.get(second) == first
        # Both segments from one document.
        assert first.split()[-1] == second.split()[-1]
    # Each pair once, whichever way round.
    assert len({frozenset(e[:2]) for e in examples}) == pairs
    # Which pairs are swapped depends on the seed.
    assert finetune_tasks.order_examples(documents, seed=4) != examples


def test_order_examples_leave_out_excluded_and_equal_pairs():
    documents = [["A a a a.", "B b b b.", "C c c c."],
                 ["D d d d.", "D d d d.", "E e e e."]]
    examples = finetune_tasks.order_examples(
        documents, seed=0, excluded={("C c c c.", "B b b b.")})
    assert sorted(frozenset(e[:2]) for e in examples) == sorted(
        [frozenset({"A a a a.", "B b b b."}),
         frozenset({"D d d d.", "E e e e."})])


def test_pretraining_and_task_documents_split_the_corpus():
    documents = corpus.stdlib_documents(300)
    pretraining, task = finetune_tasks.split_documents(documents, 0.3)
    assert len(pretraining) + len(task) == len(documents)
    assert 0.2 < len(task) / len(documents) < 0.4
    texts = {"\n".join(d) for d in pretraining}
    assert not any("\n".join(d) in texts for d in task)
    # The split depends on the text, not on the order.
    assert finetune_tasks.split_documents(documents[::-1],
                                          0.3)[1] == task[::-1]


def test_a_pair_shared_with_the_pretraining_text_is_refused():
    with pytest.raises(AssertionError, match="1 sentence pairs"):
        finetune_tasks.check_unseen([("B b b b.", "A a a a.", 0)],
                              [["A a a a.", "B b b b.", "C c c c."]])
    finetune_tasks.check_unseen([("A a a a.", "C c c c.", 0)],
                          [["A a a a.", "B b b b.", "C c c c."]])


def test_the_pretraining_text_is_rewritten_only_when_it_changes(tmp_path):
    path = str(tmp_path / "corpus.txt")
    finetune_tasks.write_pretraining_corpus(_documents(3, 2), path)
    os.utime(path, (1, 1))
    finetune_tasks.write_pretraining_corpus(_documents(3, 2), path)
    # The same text keeps its time: the run's examples are reused.
    assert os.stat(path).st_mtime == 1
    finetune_tasks.write_pretraining_corpus(_documents(4, 2), path)
    assert os.stat(path).st_mtime != 1
    assert corpus.read_documents([path]) == _documents(4, 2)


def _inputs(first, second, per_segment):
    """[CLS] first [SEP] second [SEP] for arrays of one token each."""
    n = len(first)
    ids = np.stack([np.full(n, 2), first, np.full(n, 3), second,
                    np.full(n, 3)], axis=1).astype(np.int32)
    types = np.tile(np.array([0, 0, 0, 1, 1], np.int32), (n, 1))
    return {"input_word_ids": ids, "input_mask": np.ones_like(ids),
            "input_type_ids": types if per_segment else np.zeros_like(ids)}


def _order_toy(rng, n, vocab):
    """Two different tokens, the lower first (label 1) or second (0): the
    counts of the example are the same either way."""
    a, b = rng.integers(4, vocab, n), rng.integers(4, vocab, n)
    a, b = a[a != b], b[a != b]
    labels = rng.integers(0, 2, len(a))
    low, high = np.minimum(a, b), np.maximum(a, b)
    return (np.where(labels == 1, low, high), np.where(labels == 1, high, low),
            labels.astype(np.int32))


def _fit_and_score(train, test, vocab, per_segment):
    (x, y), (test_x, test_y) = [
        (finetune_bag_of_words.count_features(
            _inputs(a, b, per_segment), vocab, per_segment), labels)
        for a, b, labels in (train, test)]
    params = finetune_bag_of_words.fit_bag_of_words(
        x, y, 2, 1, finetune.FinetuneConfig())
    return finetune_bag_of_words.bag_of_words_accuracy(params, test_x, test_y)


def test_bag_of_words_learns_what_counts_tell_and_not_order():
    vocab = 40
    rng = np.random.default_rng(0)
    # Which of two tokens an example holds: counts tell.
    def word_toy(n):
        labels = rng.integers(0, 2, n)
        return (np.where(labels == 1, 5, 6), rng.integers(7, vocab, n),
                labels.astype(np.int32))
    assert _fit_and_score(word_toy(400), word_toy(400), vocab, False) > 0.99
    train, test = _order_toy(rng, 2000, vocab), _order_toy(rng, 2000, vocab)
    # Order alone, one set of counts for the whole example: chance.
    assert abs(_fit_and_score(train, test, vocab, False) - 0.5) < 0.05
    # The same with each segment counted apart: which token comes first is
    # then in the counts, and a linear score (second minus first) tells.
    assert _fit_and_score(train, test, vocab, True) > 0.9


def test_count_features_count_each_segment_apart():
    inputs = _inputs(np.array([5]), np.array([5]), per_segment=True)
    inputs["input_word_ids"][0, -1] = 0
    inputs["input_mask"][0, -1] = 0
    counts = finetune_bag_of_words.count_features(inputs, 10, per_segment=True)
    expected = np.zeros(20)
    expected[[2, 3, 5]] = 1           # [CLS], [SEP], 5 in segment A
    expected[10 + 5] = 1              # 5 in segment B; padding not counted
    np.testing.assert_array_equal(counts[0], expected)
    shared = finetune_bag_of_words.count_features(inputs, 10,
                                                  per_segment=False)
    np.testing.assert_array_equal(shared[0], expected[:10] + expected[10:])


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "out"
    result = train_testing.run(["-m", "benchmarks.finetune", "--quick",
                                f"--output_dir={out}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_quick_run_reports_three_rows_with_each_seed(quick_run):
    out, stdout = quick_run
    results = json.loads((out / "results.json").read_text())
    assert list(results["tasks"]) == ["order"]
    task = results["tasks"]["order"]
    assert task["train_examples"] > task["held_out_examples"] > 20
    assert abs(task["chance"] - 0.5) < 0.02
    assert results["order_documents_unseen_by_pretraining"] is True
    for row in ("bag_of_words", "random", "pretrained"):
        runs = task[row]["runs"]
        assert len(runs) == len(QUICK.seeds) == 2
        accuracies = [r["held_out_accuracy"] for r in runs]
        for accuracy in accuracies:
            # A whole number of held-out examples right.
            correct = accuracy * task["held_out_examples"]
            assert abs(correct - round(correct)) < 1e-6
        summary = task[row]["held_out_accuracy"]
        assert summary["mean"] == pytest.approx(np.mean(accuracies))
        assert (summary["min"], summary["max"]) == (min(accuracies),
                                                    max(accuracies))
        assert (f"{row:12s} held-out accuracy {summary['mean']:.3f} "
                f"[{summary['min']:.3f}-{summary['max']:.3f}]") in stdout
    for row in ("random", "pretrained"):
        assert all(np.isfinite(r["final_train_loss"])
                   for r in task[row]["runs"])
    assert results["pretraining"]["steps"] == QUICK.pretrain_steps
    assert np.isfinite(results["pretraining"]["heldout"]["masked_lm_loss"])
    # The pretrained encoder is the export of the run made here.
    assert (out / "pretrain" / "export" / "saved_model.pb").exists()
    assert (out / "random_encoder" / "saved_model.pb").exists()


def test_quick_run_order_examples_are_unseen_adjacent_pairs(quick_run):
    out, _ = quick_run
    examples = json.loads((out / "order_examples.json").read_text())
    pretraining_text = corpus.read_documents([str(
        out / "pretrain_corpus.txt")])
    seen = {(a, b) for d in pretraining_text for a, b in zip(d, d[1:])}
    documents = corpus.stdlib_documents(QUICK.pretrain_documents)
    where = {}
    for number, document in enumerate(documents):
        for a, b in zip(document, document[1:]):
            where.setdefault((a, b), set()).add(number)
    task_documents = {}
    for split in ("train", "held_out"):
        labels = [label for _, _, label in examples[split]]
        assert abs(labels.count(0) - labels.count(1)) <= 1
        task_documents[split] = set()
        for first, second, label in examples[split]:
            pair = (first, second) if label == 1 else (second, first)
            # Adjacent in the corpus, in this order, swapped exactly when
            # labelled 0, and never adjacent in the pretraining text.
            assert pair in where
            assert pair not in seen and pair[::-1] not in seen
            task_documents[split] |= where[pair]
    # No task document is in the pretraining text; training and held-out
    # examples come from different documents.
    pretraining = {"\n".join(d) for d in pretraining_text}
    for number in task_documents["train"] | task_documents["held_out"]:
        assert "\n".join(documents[number]) not in pretraining
    assert not task_documents["train"] & task_documents["held_out"]


def test_a_folder_without_saved_model_is_refused(tmp_path):
    result = train_testing.run(["-m", "benchmarks.finetune", "--quick",
                                f"--saved_model={tmp_path}",
                                f"--output_dir={tmp_path / 'out'}"],
                               timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"Error: --saved_model {tmp_path} holds no SavedModel")
