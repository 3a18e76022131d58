"""Corrupt, truncated and mismatched TFRecords: found at start-up where the
start-up check reads them, named in one line (file and byte offset) where
only training or evaluation reaches them, and the last checkpoint kept."""

import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train.data import features
from train.data import reading
from train.data import record_checks
from train.runtime.errors import DataError

SEQ, PREDS = 32, 5


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _testing.one_shard(str(tmp_path_factory.mktemp("records")),
                              SEQ, PREDS)


def _write(path, serialized):
    """Writes the records; returns the byte offset at which each starts
    (each record: 8-byte length, 4-byte CRC, data, 4-byte CRC)."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    sizes = [12 + len(r) + 4 for r in serialized]
    assert os.path.getsize(path) == sum(sizes)
    return list(np.cumsum([0] + sizes[:-1]))


def _flip(path, position):
    with open(path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x10]))


def _big_file(records, path, count, corrupt_index):
    """`count` records (the data's, repeated) with a flipped data byte in
    record number `corrupt_index`; returns that record's offset."""
    serialized = (records["serialized"] * (count // len(
        records["serialized"]) + 1))[:count]
    offsets = _write(path, serialized)
    _flip(path, offsets[corrupt_index] + 12 + 7)
    return int(offsets[corrupt_index])


def _read_until_error(files, batches=1000):
    make = reading.dataset_fn(files, 8, SEQ, PREDS, seed=3,
                                     shuffle_buffer=16)
    with pytest.raises(tf.errors.OpError) as caught:
        for _ in zip(range(batches), make(tf.distribute.InputContext())):
            pass
    return caught.value


def test_flipped_byte_past_the_start_up_check_is_named_with_its_offset(
        records, tmp_path):
    good = str(tmp_path / "a-good.tfrecord")
    _write(good, records["serialized"])
    bad = str(tmp_path / "b-bad.tfrecord")
    offset = _big_file(records, bad, 400, corrupt_index=150)
    files = [good, bad]
    # The start-up check reads the good file whole and the first 16
    # records of the other, which is over the byte budget: it passes.
    budget = os.path.getsize(good) + 100
    assert os.path.getsize(bad) > budget
    assert record_checks.check_files(
        [str(tmp_path / "*.tfrecord")], SEQ, PREDS, records["vocab_size"],
        full_check_bytes=budget, records_checked=16) == files
    error = _read_until_error(files)
    assert isinstance(error, tf.errors.DataLossError)
    found = record_checks.data_error(error, files)
    assert isinstance(found, DataError)
    assert isinstance(found, ValueError)
    message = str(found)
    assert "\n" not in message
    assert bad in message and good not in message
    # TensorFlow gives the offset of the record's data, after its 12-byte
    # header.
    assert f"the record at byte {offset + 12} is corrupt" in message
    # With the default budget the start-up check reads it whole and fails.
    expected = f"{bad} is corrupt at byte {offset + 12}"
    with pytest.raises(DataError, match=re.escape(expected)):
        record_checks.check_files([good, bad], SEQ, PREDS,
                                   records["vocab_size"])


def test_truncated_file_fails_the_start_up_check(records, tmp_path):
    path = str(tmp_path / "cut.tfrecord")
    offsets = _write(path, records["serialized"][:50])
    last = int(offsets[-1])
    for cut_at in (last + 12 + 3, last + 5):  # in the data, in the header
        shutil.copy(path, tmp_path / "whole.tfrecord")
        with open(tmp_path / "whole.tfrecord", "r+b") as f:
            f.truncate(cut_at)
        cut = str(tmp_path / "whole.tfrecord")
        # The start-up check walks the framing, even of a file over the
        # byte budget (tf.data ends a file whose last header is cut short
        # without an error).
        for budget in (64 << 20, 10):
            with pytest.raises(DataError) as caught:
                record_checks.check_files([cut], SEQ, PREDS,
                                           records["vocab_size"],
                                           full_check_bytes=budget)
            message = str(caught.value)
            assert "\n" not in message
            assert cut in message
            assert f"record #49 at byte {last} is truncated" in message
        # data_error finds it too (for a file checked by other means).
        found = record_checks.data_error(
            tf.errors.DataLossError(None, None, "corrupted record at 7"),
            [records["file"], cut])
        assert f"{cut}: record #49 at byte {last} is truncated" in str(found)


def test_record_that_is_not_an_example_is_named(records, tmp_path):
    path = str(tmp_path / "garbage.tfrecord")
    serialized = records["serialized"][:100]
    offsets = _write(path, serialized[:70] + [b"garbage, not an Example"]
                     + serialized[70:])
    assert offsets[70] > 0
    files = [path]
    record_checks.check_files(files, SEQ, PREDS, records["vocab_size"],
                               full_check_bytes=10, records_checked=16)
    error = _read_until_error(files)
    found = str(record_checks.data_error(error, files, SEQ, PREDS))
    assert "\n" not in found
    assert path in found and "not a BERT pretraining example" in found


def test_unexplained_error_still_gives_one_line(records):
    error = tf.errors.UnavailableError(
        None, None, "{{function_node __wrapped__IteratorGetNext}} socket "
        "closed\nmore lines [Op:IteratorGetNext]")
    found = record_checks.data_error(error, [records["file"]])
    assert str(found) == (f"Reading TFRecord {records['file']} failed: "
                          f"socket closed")


def test_vocabulary_much_larger_than_the_ids_is_warned_of(records, capfd):
    ids = [tf.io.parse_example(r, features.feature_spec(SEQ, PREDS))
           for r in tf.data.TFRecordDataset(records["file"]).batch(10000)]
    max_id = max(int(tf.reduce_max(p[k])) for p in ids
                 for k in ("input_ids", "masked_lm_ids"))
    size = records["vocab_size"]
    assert max_id < size
    record_checks.check_files([records["file"]], SEQ, PREDS, size)
    assert "Warning" not in capfd.readouterr().err
    big = record_checks.VOCAB_WARNING_RATIO * (max_id + 1) + 1
    record_checks.check_files([records["file"]], SEQ, PREDS, big - 1)
    assert "Warning" not in capfd.readouterr().err
    record_checks.check_files([records["file"]], SEQ, PREDS, big)
    err = capfd.readouterr().err
    assert (f"Warning: the vocabulary has {big} tokens but the highest "
            f"token id in the records checked is {max_id} ") in err, err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------
# The training binary, end to end
# ---------------------------------------------------------------------------

TINY = ["--model_size=tiny", f"--max_seq_length={SEQ}",
        f"--max_predictions_per_seq={PREDS}", "--train_batch_size=8",
        "--warmup_steps=1", "--learning_rate=1e-3", "--shuffle_buffer=8",
        "--log_steps=5"]
# Over 64 MiB, the start-up check's byte budget: only the first records of
# the file are read before training.
BIG_RECORDS = 230_000
CORRUPT_INDEX = 400  # reached after ~50 steps of 8 examples


@pytest.fixture(scope="module")
def big_corrupt_file(records, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("big") / "big.tfrecord")
    offset = _big_file(records, path, BIG_RECORDS, CORRUPT_INDEX)
    assert os.path.getsize(path) > 64 << 20
    return path, offset


def _assert_one_line_error(result, path, offset):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = lines[-1]
    assert last.startswith("Error: ") and path in last, last
    assert f"at byte {offset + 12}" in last, last


def _restorable(model_dir):
    prefix = tf.train.latest_checkpoint(model_dir)
    assert prefix is not None
    reader = tf.train.load_checkpoint(prefix)
    names = reader.get_variable_to_shape_map()
    assert len(names) > 10
    for name in names:
        reader.get_tensor(name)  # every tensor reads back whole
    return prefix


def test_training_on_a_corrupt_record_ends_in_one_line(
        records, big_corrupt_file, tmp_path):
    path, offset = big_corrupt_file
    model_dir = str(tmp_path / "model")
    result = _testing.run(
        ["-m", "train.pretrain", f"--train_files={path}",
         f"--vocab_file={records['vocab']}", f"--model_dir={model_dir}",
         "--num_train_steps=100000", "--save_checkpoints_steps=10"] + TINY,
        timeout=600)
    _assert_one_line_error(result, path, offset)
    prefix = _restorable(model_dir)
    step = int(prefix.rsplit("-", 1)[1])
    assert step >= 10


def test_evaluating_a_corrupt_record_ends_in_one_line(
        records, big_corrupt_file, tmp_path):
    path, offset = big_corrupt_file
    model_dir = str(tmp_path / "model")
    trained = _testing.run(
        ["-m", "train.pretrain", f"--train_files={records['file']}",
         f"--vocab_file={records['vocab']}", f"--model_dir={model_dir}",
         "--num_train_steps=4", "--save_checkpoints_steps=2"] + TINY,
        timeout=600)
    assert trained.returncode == 0, trained.stderr[-3000:]
    before = _restorable(model_dir)
    result = _testing.run(
        ["-m", "train.pretrain", "--mode=eval", f"--eval_files={path}",
         f"--vocab_file={records['vocab']}", f"--model_dir={model_dir}",
         "--eval_batch_size=8"] + TINY, timeout=600)
    _assert_one_line_error(result, path, offset)
    assert _restorable(model_dir) == before
