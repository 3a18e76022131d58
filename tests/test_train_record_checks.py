"""The checks of TFRecord files on many shards and on remote file systems:
bounded file system calls per shard, parallel checks reporting the first
bad file in order, and `data_error` reading only the files it must.

Remote storage is TensorFlow's in-memory file system (ram://), reached
only through tf.io.gfile and tf.data like gs:// or s3://."""

import builtins
import os
import uuid

import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train.data import record_checks
from train.runtime.errors import DataError

SEQ, PREDS = 32, 5


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return _testing.one_shard(str(tmp_path_factory.mktemp("records")),
                              SEQ, PREDS)


def _shard_bytes(serialized, tmp_path):
    """The bytes of a TFRecord file of `serialized` records."""
    path = str(tmp_path / f"{uuid.uuid4().hex}.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for record in serialized:
            writer.write(record)
    with open(path, "rb") as f:
        return f.read()


def _ram_shards(data, count):
    """`count` files of `data` in a new ram:// folder (a fresh name each
    time: ram:// appends to a file opened again for writing); returns
    their glob pattern and names."""
    folder = f"ram://{uuid.uuid4().hex}/"
    paths = [f"{folder}shard-{i:05d}.tfrecord" for i in range(count)]
    for path in paths:
        with tf.io.gfile.GFile(path, "wb") as f:
            f.write(data)
    return folder + "shard-*.tfrecord", paths


class _Counts(dict):
    def add(self, name, amount=1):
        self[name] = self.get(name, 0) + amount


@pytest.fixture
def counted(monkeypatch):
    """Counts the file system calls of the checks: tf.io.gfile.stat, GFile
    opens, reads and seeks (and the bytes read), passes over a file's
    records (tf.data.TFRecordDataset or tf_record_iterator), and Python's
    open() of a path with a scheme (which cannot work)."""
    counts = _Counts()
    stat, real_gfile = tf.io.gfile.stat, tf.io.gfile.GFile
    dataset, real_open = tf.data.TFRecordDataset, builtins.open
    iterator = tf.compat.v1.io.tf_record_iterator

    class GFile(real_gfile):
        def __init__(self, *args, **kwargs):
            counts.add("gfile_open")
            super().__init__(*args, **kwargs)

        def read(self, n=-1):
            counts.add("gfile_read")
            data = super().read(n)
            counts.add("bytes_read", len(data))
            return data

        def seek(self, *args, **kwargs):
            counts.add("gfile_seek")
            return super().seek(*args, **kwargs)

    def counted_stat(path):
        counts.add("stat")
        return stat(path)

    def counted_dataset(*args, **kwargs):
        counts.add("record_pass")
        return dataset(*args, **kwargs)

    def counted_iterator(*args, **kwargs):
        counts.add("record_pass")
        return iterator(*args, **kwargs)

    def checked_open(file, *args, **kwargs):
        if isinstance(file, str) and "://" in file:
            counts.add("python_open_of_a_scheme_path")
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(tf.io.gfile, "stat", counted_stat)
    monkeypatch.setattr(tf.io.gfile, "GFile", GFile)
    monkeypatch.setattr(tf.data, "TFRecordDataset", counted_dataset)
    monkeypatch.setattr(tf.compat.v1.io, "tf_record_iterator",
                        counted_iterator)
    monkeypatch.setattr(builtins, "open", checked_open)
    return counts


SHARDS = 50
CONFIGS = ((64 << 20, 64), (0, 64), (0, 4))  # full_check_bytes, records


def test_file_calls_per_shard_do_not_grow_with_its_records(
        records, tmp_path, counted):
    calls = {}
    for size in (8, 60):
        data = _shard_bytes(records["serialized"][:size], tmp_path)
        for budget, checked in CONFIGS:
            pattern, paths = _ram_shards(data, SHARDS)
            counted.clear()
            assert record_checks.check_files(
                [pattern], SEQ, PREDS, records["vocab_size"],
                full_check_bytes=budget, records_checked=checked) == paths
            assert "python_open_of_a_scheme_path" not in counted
            per_shard = {k: v / SHARDS for k, v in counted.items()}
            # A stat and one pass over the records per shard ...
            assert per_shard["stat"] <= 2, per_shard
            assert 0 < per_shard["record_pass"] <= 1, per_shard
            # ... and, where the pass stops short of the end, one read of
            # the file's tail: no walk from record to record.
            for call in ("gfile_open", "gfile_seek", "gfile_read"):
                assert per_shard.get(call, 0) <= 1, (call, per_shard)
            assert per_shard.get("bytes_read", 0) <= min(
                len(data), record_checks.TAIL_BYTES), per_shard
            calls[size, budget, checked] = {
                k: v for k, v in counted.items() if k != "bytes_read"}
    for budget, checked in CONFIGS:
        assert calls[8, budget, checked] == calls[60, budget, checked], calls
    # The first 4 records of 60: the rest is the tail, read in one read.
    assert calls[60, 0, 4]["gfile_read"] == SHARDS


def test_truncated_shards_are_found_on_ram(records, tmp_path, counted,
                                           monkeypatch):
    serialized = records["serialized"][:40]
    data = _shard_bytes(serialized, tmp_path)
    pattern, paths = _ram_shards(data, 12)
    # Opening an existing ram:// file for writing appends to it.
    with tf.io.gfile.GFile(paths[7], "wb") as f:
        f.write(data[:5])  # after the 40 records, a header cut short
    with tf.io.gfile.GFile(paths[9], "wb") as f:
        f.write(data[:30])  # after the 40 records, one cut in its data

    def fails(files, expected, **kwargs):
        with pytest.raises(DataError) as caught:
            record_checks.check_files(files, SEQ, PREDS,
                                       records["vocab_size"], **kwargs)
        assert str(caught.value) == expected

    header_cut = (f"is truncated (its header is cut at the end of the "
                  f"file, {len(data) + 5} bytes)")
    data_cut = (f"is truncated or corrupt (it says {len(serialized[0])} "
                f"bytes of data, which run past the end of the file, "
                f"{len(data) + 30} bytes)")
    for budget, checked in ((64 << 20, 64), (0, 16)):
        at = f"record #40 at byte {len(data)}"
        fails([pattern], f"TFRecord file {paths[7]}: {at} {header_cut}",
              full_check_bytes=budget, records_checked=checked)
        fails(paths[8:], f"TFRecord file {paths[9]}: {at} {data_cut}",
              full_check_bytes=budget, records_checked=checked)
    # Files longer than the tail that is read: the walk starts at the first
    # record in it that matches its CRCs, whose number is not known.
    monkeypatch.setattr(record_checks, "TAIL_BYTES",
                        3 * (16 + max(len(r) for r in serialized)))
    at = f"the record at byte {len(data)}"
    fails([paths[7]], f"TFRecord file {paths[7]}: {at} {header_cut}",
          full_check_bytes=0, records_checked=16)
    fails([paths[9]], f"TFRecord file {paths[9]}: {at} {data_cut}",
          full_check_bytes=0, records_checked=16)
    assert "python_open_of_a_scheme_path" not in counted


def test_crc32c_matches_tensorflows_records(records, tmp_path):
    record = records["serialized"][3]
    data = _shard_bytes([record], tmp_path)
    assert int.from_bytes(data[8:12], "little") == (
        record_checks.masked_crc32c(data[:8]))
    assert int.from_bytes(data[-4:], "little") == (
        record_checks.masked_crc32c(record))
    assert record_checks.masked_crc32c(record[:-1] + b"x") != (
        record_checks.masked_crc32c(record))


def _local_file(path, serialized, flip=None):
    """Writes the records (flipping a data byte of record number `flip`);
    returns the offset of that record's data."""
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in serialized:
            writer.write(record)
    if flip is None:
        return None
    offset = sum(16 + len(r) for r in serialized[:flip]) + 12
    with open(path, "r+b") as f:
        f.seek(offset + 7)
        byte = f.read(1)[0]
        f.seek(offset + 7)
        f.write(bytes([byte ^ 0x10]))
    return offset


def _repeated(records, count):
    serialized = records["serialized"]
    return (serialized * (count // len(serialized) + 1))[:count]


@pytest.mark.parametrize("workers", [1, 16])
@pytest.mark.parametrize("budget", [64 << 20, 0])
def test_the_first_bad_file_in_order_is_reported(records, tmp_path,
                                                 monkeypatch, workers,
                                                 budget):
    monkeypatch.setattr(record_checks, "WORKERS", workers)
    good = records["serialized"][:8]
    files = []
    for i in range(20):
        files.append(str(tmp_path / f"a-{i:02d}.tfrecord"))
        _local_file(files[-1], good)
    # Read whole, its bad record last: its check ends after the next ones'.
    # Over the budget, its bad record among the first read: the pipeline
    # over the files' first records fails, and each file is read alone.
    slow = str(tmp_path / "b-slow.tfrecord")
    offset = _local_file(slow, _repeated(records, 4000),
                         flip=3999 if budget else 5)
    fast = str(tmp_path / "c-fast.tfrecord")
    with open(fast, "wb") as f:
        f.write(b"not a TFRecord file")
    with pytest.raises(DataError,
                       match=f"{fast}: record #0 at byte 0"):
        record_checks.check_files([fast], SEQ, PREDS, records["vocab_size"])
    with pytest.raises(DataError) as caught:
        record_checks.check_files(files + [slow, fast], SEQ, PREDS,
                                   records["vocab_size"],
                                   full_check_bytes=budget,
                                   records_checked=16)
    assert str(caught.value).startswith(
        f"TFRecord file {slow} is corrupt at byte {offset}: ")


def test_data_error_reads_only_the_files_it_must(records, tmp_path,
                                                  counted):
    good = records["serialized"][:8]
    files = []
    for i in range(30):
        files.append(str(tmp_path / f"shard-{i:02d}.tfrecord"))
        _local_file(files[-1], good)
    budget = sum(os.path.getsize(f) for f in files)
    bad = {}
    for i in (3, 25):  # over the byte budget: checked for 16 records only
        bad[i] = _local_file(files[i], _repeated(records, 400), flip=150)
        assert os.path.getsize(files[i]) > budget
    assert record_checks.check_files(
        files, SEQ, PREDS, records["vocab_size"], full_check_bytes=budget,
        records_checked=16) == files
    error = tf.errors.DataLossError(None, None, "corrupted record at 7")
    counted.clear()
    found = str(record_checks.data_error(error, files))
    assert found.startswith(f"TFRecord file {files[3]}: the record at byte "
                            f"{bad[3]} is corrupt ("), found
    # The good files were read whole at start-up: not again.
    assert counted["record_pass"] <= 2, counted
    assert counted["stat"] <= len(files), counted
    # The files being read come first.
    found = str(record_checks.data_error(error, files,
                                          reading=[files[25]]))
    assert found.startswith(f"TFRecord file {files[25]}: the record at "
                            f"byte {bad[25]} is corrupt ("), found
    # No bad file: none of the verified files is read again.
    counted.clear()
    error = tf.errors.UnavailableError(None, None, "socket closed")
    found = str(record_checks.data_error(error, files[4:20]))
    assert found == (f"Reading TFRecord 16 files: {', '.join(files[4:7])}, "
                     f"... failed: socket closed")
    assert "record_pass" not in counted, counted
