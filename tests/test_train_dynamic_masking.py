"""--dynamic_masking (train.data.masking): masks drawn in tf.data follow
Google's rule, checked per example in NumPy; they are a function of the
seed and the example's place in the stream; a resumed run equals an
uninterrupted one."""

import functools

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing
from train import InputError, PretrainConfig, run_pretraining
from train.data import masking, order, reading
from train.data.tokenization import read_vocab

SEQ, PREDICTIONS = 64, 10


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    files, vocab = train_testing.make_records(
        directory, seq_length=SEQ, predictions=PREDICTIONS,
        max_documents=150, dupe_factor=1)
    tokens = read_vocab(vocab)
    return {"files": files, "vocab": vocab, "tokens": tokens}


def _batches(records, count, seed=5, whole_word=False, masked=True,
             start=None, batch=16):
    """`count` batches of the stream (seed 5), as NumPy dicts, with masks
    drawn by `seed` (or the records' own when not `masked`)."""
    draw = None
    if masked:
        rule = masking.MaskingRule.from_vocab_file(records["vocab"], 0.15,
                                                   whole_word)
        draw = functools.partial(masking.mask_batch, seed=seed, rule=rule,
                                 max_predictions=PREDICTIONS)
    make = reading.dataset_fn(records["files"], batch, SEQ, PREDICTIONS,
                              seed=5, shuffle_buffer=50, draw_masks=draw,
                              start_positions=start and [start])
    dataset = make(tf.distribute.InputContext())
    return [{k: v.numpy() for k, v in b.items()}
            for b in dataset.take(count)]


def _originals(batch):
    """NumPy: the ids with each real prediction's original put back."""
    ids = batch["input_ids"].copy()
    for row in range(len(ids)):
        real = batch["masked_lm_weights"][row] > 0
        ids[row, batch["masked_lm_positions"][row][real]] = (
            batch["masked_lm_ids"][row][real])
    return ids


def _words(ids, mask, tokens, whole_word):
    """Google's candidate groups of one example: lists of positions."""
    groups = []
    for i, token_id in enumerate(ids[:int(mask.sum())]):
        token = tokens[token_id]
        if token in ("[CLS]", "[SEP]"):
            continue
        if (whole_word and groups and token.startswith("##")
                and groups[-1][-1] == i - 1):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def test_restoring_undoes_the_records_masks(records):
    static = _batches(records, 3, masked=False)
    mask_id = records["tokens"].index("[MASK]")
    for batch in static:
        restored = masking.restore_tokens(
            {k: tf.constant(v) for k, v in batch.items()}).numpy()
        np.testing.assert_array_equal(restored, _originals(batch))
        # The text has no [MASK]: none is left once the masks are undone.
        assert not (restored == mask_id).any()
        assert (batch["input_ids"] == mask_id).any()


@pytest.mark.parametrize("whole_word", [False, True],
                         ids=["tokens", "whole_words"])
def test_masks_follow_googles_rule(records, whole_word):
    tokens = records["tokens"]
    mask_id = tokens.index("[MASK]")
    special = {i for i, t in enumerate(tokens)
               if t.startswith("[") and t.endswith("]")}
    dynamic = _batches(records, 40, whole_word=whole_word)
    static = _batches(records, 40, masked=False)
    kinds = {"mask": 0, "kept": 0, "random": 0}
    short_of_wanted = 0
    for batch, plain in zip(dynamic, static):
        originals = _originals(plain)
        np.testing.assert_array_equal(_originals(batch), originals)
        for row in range(len(originals)):
            ids, mask = originals[row], plain["input_mask"][row]
            weights = batch["masked_lm_weights"][row]
            n = int(weights.sum())
            positions = batch["masked_lm_positions"][row][:n]
            assert (weights[:n] == 1).all() and (weights[n:] == 0).all()
            assert (batch["masked_lm_positions"][row][n:] == 0).all()
            assert list(positions) == sorted(set(positions.tolist()))
            groups = _words(ids, mask, tokens, whole_word)
            chosen = set(positions.tolist())
            assert chosen <= {i for g in groups for i in g}
            # Whole groups only; as many as Google's count, or short of
            # it only when no group left out would still fit.
            assert all(set(g) <= chosen or not set(g) & chosen
                       for g in groups)
            wanted = min(PREDICTIONS, max(1, round(mask.sum() * 0.15)))
            left = wanted - n
            assert left >= 0
            if left:
                assert whole_word
                assert all(len(g) > left for g in groups
                           if not set(g) & chosen)
                short_of_wanted += 1
            new = batch["input_ids"][row]
            unchosen = [i for i in range(SEQ) if i not in chosen]
            np.testing.assert_array_equal(new[unchosen], ids[unchosen])
            for i in positions:
                if new[i] == mask_id:
                    kinds["mask"] += 1
                elif new[i] == ids[i]:
                    kinds["kept"] += 1
                else:
                    assert new[i] not in special
                    kinds["random"] += 1
    total = sum(kinds.values())
    assert total > 3000
    # 80 / 10 / 10 (a random token equal to the original counts as kept).
    assert abs(kinds["mask"] / total - 0.8) < 0.03, kinds
    assert abs(kinds["kept"] / total - 0.1) < 0.03, kinds
    assert abs(kinds["random"] / total - 0.1) < 0.03, kinds
    if whole_word:
        assert short_of_wanted < 0.2 * 40 * 16


def test_masks_are_a_function_of_the_seed_and_the_position(records):
    whole = _batches(records, 12, batch=8)
    assert [b["input_ids"].tolist() for b in _batches(records, 12,
                                                      batch=8)] == [
        b["input_ids"].tolist() for b in whole]
    # A stream resumed after the 5th batch draws the same masks.
    last = whole[4][order.POSITION_KEY][-1]
    resumed = _batches(records, 7, batch=8, start=(last[1], last[2] + 1))
    for a, b in zip(resumed, whole[5:]):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    # Another seed, other masks on the same records.
    other = _batches(records, 12, seed=6, batch=8)
    assert all((_originals(a) == _originals(b)).all()
               for a, b in zip(other, whole))
    assert any((a["masked_lm_positions"] != b["masked_lm_positions"]).any()
               for a, b in zip(other, whole))


def test_the_same_record_gets_other_masks_in_another_epoch(records):
    seen = {}
    differs = same_record = 0
    for batch in _batches(records, 60, batch=16):
        originals = _originals(batch)
        for row in range(len(originals)):
            key = originals[row].tobytes()
            positions = batch["masked_lm_positions"][row].tolist()
            if key in seen:
                same_record += 1
                differs += seen[key] != positions
            seen[key] = positions
    assert same_record > 100
    assert differs > 0.9 * same_record


def _config(records, model_dir, **changes):
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=PREDICTIONS,
                    train_batch_size=8, warmup_steps=1, shuffle_buffer=50,
                    learning_rate=1e-2, export_dir="none", log_steps=2,
                    train_files=tuple(records["files"]),
                    vocab_file=records["vocab"], model_dir=str(model_dir),
                    dynamic_masking=True, whole_word_mask=True)
    settings.update(changes)
    return PretrainConfig(**settings)


def _values(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(
        str(model_dir)))
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if name.startswith("model/")}


def test_a_resumed_run_draws_the_masks_of_an_uninterrupted_one(
        records, tmp_path, capsys):
    whole = tmp_path / "whole"
    result = run_pretraining(_config(records, whole, num_train_steps=4,
                                     save_checkpoints_steps=2))
    # The resumed run: the uninterrupted run's directory as it was after
    # update 2.
    cut = tmp_path / "cut"
    cut.mkdir()
    for path in whole.iterdir():
        if path.is_file() and not path.name.startswith(
                ("ckpt-4.", "checkpoint", "events")):
            (cut / path.name).write_bytes(path.read_bytes())
    (cut / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n'
                                    'all_model_checkpoint_paths: "ckpt-2"\n')
    capsys.readouterr()
    resumed = run_pretraining(_config(records, cut, num_train_steps=4,
                                      save_checkpoints_steps=2))
    assert resumed["start_step"] == 2 and resumed["step"] == 4
    assert "replaying" not in capsys.readouterr().out
    one, two = _values(whole), _values(cut)
    assert one.keys() == two.keys() and one
    for name in one:
        np.testing.assert_array_equal(one[name], two[name], err_msg=name)
    # The run's own data has the drawn masks, not the records'.
    drawn = next(result["trainer"].distributed_iterator(0, 0))
    plain = _batches(records, 1, masked=False, batch=8)[0]
    assert not np.array_equal(drawn["masked_lm_positions"].numpy(),
                              plain["masked_lm_positions"])


def test_records_without_their_vocabulary_are_refused(records, tmp_path):
    with pytest.raises(InputError, match="--dynamic_masking with "
                       "--train_files needs --vocab_file"):
        _config(records, tmp_path / "run", vocab_file=None)
    flags = train_testing.parse_flags(["--dynamic_masking"])
    assert flags.dynamic_masking is True
