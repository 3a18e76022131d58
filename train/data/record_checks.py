"""Checks of TFRecord files: at start-up (`check_files`) and after a read
error while training (`data_error`).

Data sets are often hundreds of shards on a remote file system (gs://,
s3://), where every file system call is a request.  So each file costs a
bounded number of calls and bytes whatever its size (no record-by-record
seeks), and the files are checked in parallel: TensorFlow's file reads
release the GIL, and waiting on requests one file after the other was most
of the start-up time.  Results do not depend on the parallelism: the first
bad file in the files' order is the one reported.

"""

import concurrent.futures
import dataclasses
import itertools
import logging
import re
import sys

import tensorflow as tf

from train.data.features import feature_spec
from train.data.reading import matching_files
from train.runtime.errors import DataError

# A TFRecord record is framed as: length (uint64, little-endian), a masked
# CRC-32C of the length (uint32), the data, a masked CRC-32C of the data.
_HEADER_BYTES, _FOOTER_BYTES = 12, 4
_FRAME_BYTES = _HEADER_BYTES + _FOOTER_BYTES

# Of a file not read to its end, this many bytes at its end are read in one
# read to check the framing of its last records (a truncated last record,
# which tf.data drops without an error).  Enough for a dozen records of 512
# tokens (about 4 KB each): the walk needs one whole record to start from.
TAIL_BYTES = 64 << 10

# Files checked at once.  The work is mostly waiting on reads (remote file
# systems) or in TensorFlow's kernels, both outside the GIL.
WORKERS = 16

# Records parsed at once: few eager calls per file, small tensors.
_BATCH = 1024

# Files read whole (every CRC checked) by check_files in this process, by
# (path, size, modification time): data_error does not read them again.
_verified = set()

# A vocabulary more than this many times larger than the highest token id
# in the records gets a warning.  On the text it was made for, a WordPiece
# vocabulary's ids are soon used up to near its size: a learnt vocabulary
# only keeps pieces of its text, and Google's vocab.txt puts rare pieces
# among the common ones (measured: the first 8 records of 128 tokens made
# from the default corpus reach id 7935 of a learnt 8000-token vocabulary,
# and 10587 of a 10778-token one).  Records made with a vocabulary half the
# size or less (the usual mistake: the wrong vocab.txt) stay below it.
VOCAB_WARNING_RATIO = 2


def _in_order(function, items, workers=None):
    """function(item) for each item, run in a thread pool, yielded in the
    items' order.  Calls not started yet are cancelled when the caller
    stops early (at the first bad file)."""
    items = list(items)
    workers = max(1, min(workers or WORKERS, len(items)))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(function, item) for item in items]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


# -- CRC-32C (Castagnoli), as TFRecord frames use it -------------------------
# Only for the few records at a file's tail (tens of bytes to a few KB):
# Python's speed does not matter there, and no dependency is needed.

def _crc_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def masked_crc32c(data):
    """TFRecord's masked CRC-32C of `data` (bytes)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _first_record(data):
    """The index in `data` (bytes from inside a TFRecord file) of the first
    record whose length and data both match their CRCs, or None.  A match
    by chance has odds of 2**-64."""
    little = int.from_bytes
    for at in range(len(data) - _FRAME_BYTES + 1):
        end = at + _FRAME_BYTES + little(data[at:at + 8], "little")
        if (end <= len(data) and little(data[at + 8:at + 12], "little")
                == masked_crc32c(data[at:at + 8])
                and little(data[end - 4:end], "little")
                == masked_crc32c(data[at + 12:end - 4])):
            return at
    return None


# -- framing -----------------------------------------------------------------

def _walk(data, at, base, record):
    """None if `data` (the bytes of a file from byte `base` to its end) is
    whole records from index `at` on, else a description of the first that
    is cut short.  `record` is the number of the record at `at` in the file
    (None where unknown)."""
    size = base + len(data)
    while at < len(data):
        offset = base + at
        where = (f"record #{record} at byte {offset}" if record is not None
                 else f"the record at byte {offset}")
        if len(data) - at < _HEADER_BYTES:
            return (f"{where} is truncated (its header is cut at the end of "
                    f"the file, {size} bytes)")
        length = int.from_bytes(data[at:at + 8], "little")
        if at + _FRAME_BYTES + length > len(data):
            return (f"{where} is truncated or corrupt (it says {length} "
                    f"bytes of data, which run past the end of the file, "
                    f"{size} bytes)")
        at += _FRAME_BYTES + length
        record = None if record is None else record + 1
    return None


def framing_problem(path, size, offset=0, record=0):
    """None if the records of `path` (`size` bytes) from byte `offset` on,
    where record number `record` starts, are whole, else a one-line
    description of the first that is cut short.

    One read: of the bytes from `offset` to the end when they are at most
    TAIL_BYTES; else of the last TAIL_BYTES, walked from the first record
    in them that matches its CRCs (a file whose last record is longer than
    that is taken as whole).
    """
    start = max(offset, size - TAIL_BYTES)
    if start >= size:
        return None
    with tf.io.gfile.GFile(path, "rb") as f:
        f.seek(start)
        data = f.read(size - start)
    if start == offset:
        return _walk(data, 0, start, record)
    at = _first_record(data)
    return None if at is None else _walk(data, at, start, None)


# -- reading records ---------------------------------------------------------

def _tf_message(error):
    """The first line of a TensorFlow error without its op decorations."""
    message = (getattr(error, "message", None) or str(error)).strip()
    message = message.splitlines()[0] if message else type(error).__name__
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip()


def _corrupt_offset(message):
    match = re.search(r"(?:corrupted|truncated) record at (\d+)", message)
    return int(match.group(1)) if match else None


@dataclasses.dataclass
class _Pass:
    """What one pass over a file's records found."""

    count: int = 0  # records read whole, each before `offset`
    offset: int = 0  # where the record after them starts
    max_id: int = -1  # highest input or masked token id
    error: object = None  # the tf.errors.OpError that ended the pass
    unparsed: tuple = None  # (record number, message): not an Example


def _unparsed(batch, spec):
    """(index, message) of the first record of `batch` that does not parse
    with `spec`."""
    for i in range(len(batch)):
        try:
            tf.io.parse_example(batch[i:i + 1], spec)
        except tf.errors.InvalidArgumentError as error:
            return i, _tf_message(error)
    return 0, "the batch does not parse"


class _QuietDeprecation(logging.Filter):
    """Drops TensorFlow's notice that tf_record_iterator is deprecated (in
    favour of tf.data, which costs ~80 ms a file to set up, against under
    1 ms: most of the start-up time on hundreds of small shards)."""

    def filter(self, record):
        return "tf_record_iterator" not in record.getMessage()


tf.get_logger().addFilter(_QuietDeprecation())


def _read_records(path, spec=None, limit=None):
    """One pass over the records of `path` (its first `limit`, or all):
    every record's CRCs checked, parsed with `spec` when given.  The
    records' lengths give where the last one read ends, so that the framing
    of a file read to its end needs no other read."""
    if limit is None:
        # Reads ahead up to 16 MiB: the whole file, which is read anyway.
        records = tf.compat.v1.io.tf_record_iterator(path)
    else:
        # Reads ahead 256 KB only, for the first records of a big file.
        records = tf.data.TFRecordDataset(path).take(
            limit).as_numpy_iterator()
    done = _Pass()
    try:
        while limit is None or done.count < limit:
            wanted = _BATCH if limit is None else min(_BATCH,
                                                      limit - done.count)
            batch = list(itertools.islice(records, wanted))
            if not batch:
                break
            if spec is not None:
                try:
                    parsed = tf.io.parse_example(batch, spec)
                except tf.errors.InvalidArgumentError:
                    i, message = _unparsed(batch, spec)
                    done.unparsed = done.count + i, message
                    return done
                done.max_id = max(
                    done.max_id, int(tf.reduce_max(parsed["input_ids"])),
                    int(tf.reduce_max(parsed["masked_lm_ids"])))
            done.offset += sum(map(len, batch)) + len(batch) * _FRAME_BYTES
            done.count += len(batch)
    except tf.errors.OpError as error:
        done.error = error
    return done


def _read_heads(paths, spec, limit):
    """The first `limit` records of each of `paths` (a _Pass each, with
    every CRC checked and every record parsed), read by one tf.data
    pipeline: setting one up costs ~80 ms, too much once per file.  None
    when a read or a parse fails in any file: the caller then reads each
    file alone, to name the first bad one."""
    count = len(paths)
    done = [_Pass() for _ in paths]
    files = tf.data.Dataset.from_tensor_slices(
        (tf.range(count), tf.constant(paths)))
    records = files.interleave(
        lambda i, path: tf.data.TFRecordDataset(path).take(limit).map(
            lambda record: (i, record)),
        cycle_length=min(WORKERS, count),
        num_parallel_calls=min(WORKERS, count), deterministic=True)
    try:
        for ids, batch in records.batch(_BATCH):
            parsed = tf.io.parse_example(batch, spec)
            top = tf.maximum(tf.reduce_max(parsed["input_ids"], axis=1),
                             tf.reduce_max(parsed["masked_lm_ids"], axis=1))
            records_of = tf.math.bincount(ids, minlength=count).numpy()
            maxima = tf.math.unsorted_segment_max(top, ids, count).numpy()
            lengths = tf.math.unsorted_segment_sum(
                tf.strings.length(batch), ids, count).numpy()
            for k in records_of.nonzero()[0]:
                read = int(records_of[k])
                done[k].count += read
                done[k].offset += int(lengths[k]) + read * _FRAME_BYTES
                done[k].max_id = max(done[k].max_id, int(maxima[k]))
    except tf.errors.OpError:
        return None
    return done


def _stamp(path, stat):
    return path, stat.length, stat.mtime_nsec


# -- at start-up -------------------------------------------------------------

def _check_file(path, stat, whole, spec, records_checked, describe,
                done=None):
    """check_files' check of one file: (problem or None, highest token id).
    Reads the file's records (all, or the first `records_checked`, unless
    `done` says what reading them found) and, unless that reached its end,
    at most TAIL_BYTES more."""
    size = stat.length
    if size == 0:
        return f"TFRecord file {path} is empty", -1
    if done is None:
        done = _read_records(path, spec, None if whole else records_checked)
    to_end = (done.error is None and done.unparsed is None
              and (whole or done.count < records_checked))
    if not (to_end and done.offset == size):
        try:
            problem = framing_problem(path, size, done.offset, done.count)
        except tf.errors.OpError as error:
            problem = f"cannot be read ({_tf_message(error)})"
        if problem:
            return f"TFRecord file {path}: {problem}", -1
    if done.unparsed is not None:
        return (f"TFRecord file {path} does not hold BERT pretraining "
                f"examples with {describe}: record #{done.unparsed[0]}: "
                f"{done.unparsed[1]}"), -1
    if done.error is not None:
        message = _tf_message(done.error)
        offset = _corrupt_offset(message)
        where = f" at byte {offset}" if offset is not None else ""
        return f"TFRecord file {path} is corrupt{where}: {message}", -1
    if done.count == 0:
        return f"TFRecord file {path} holds no record", -1
    if to_end:
        _verified.add(_stamp(path, stat))
    return None, done.max_id


def check_files(pattern_list, max_seq_length, max_predictions, vocab_size,
                full_check_bytes=64 << 20, records_checked=64):
    """Files matching the patterns, after checking that they hold examples
    of the expected shapes with ids below `vocab_size`.

    Files are read whole (every record's CRC checked, every record parsed)
    while their total size stays within `full_check_bytes`; of the others
    only the first `records_checked` records are read, so that big data
    sets start fast: a bad record deeper in them shows up while training,
    where `data_error` turns it into a DataError.  The framing of every
    file is checked too (a truncated last record, which tf.data silently
    drops): from the record lengths of a file read to its end, else by one
    read of its last TAIL_BYTES.  Per file: a stat, one pass over its
    records (one tf.data pipeline reads the first records of all the files
    over the budget) and at most one more read, whatever its size; WORKERS
    files at once.
    Raises DataError (a ValueError) naming the first bad file, in the
    files' order, and its problem.  Warns (on stderr) when the vocabulary
    is more than VOCAB_WARNING_RATIO times larger than the highest token id
    read.
    """
    files = matching_files(pattern_list, "TFRecord file")
    spec = feature_spec(max_seq_length, max_predictions)
    describe = (f"max_seq_length={max_seq_length} and "
                f"max_predictions_per_seq={max_predictions}")
    budget, plans = full_check_bytes, []
    for path, stat in zip(files, _in_order(tf.io.gfile.stat, files)):
        whole = stat.length <= budget
        if whole:
            budget -= stat.length
        plans.append((path, stat, whole))
    # The first records of the files over the budget, in one pipeline;
    # where it fails, _check_file reads each of them alone.
    partial = [p for p, stat, whole in plans if not whole and stat.length]
    heads = {}
    if partial:
        heads = dict(zip(partial, _read_heads(partial, spec, records_checked)
                         or ()))
    max_id = -1
    checks = _in_order(lambda plan: _check_file(
        *plan, spec, records_checked, describe, heads.get(plan[0])), plans)
    try:
        for (path, _, _), (problem, file_max_id) in zip(plans, checks):
            if problem:
                raise DataError(problem)
            if file_max_id >= vocab_size:
                raise DataError(
                    f"TFRecord file {path} holds token id {file_max_id}, "
                    f"but the vocabulary has {vocab_size} tokens: the data "
                    f"was made with another vocabulary")
            max_id = max(max_id, file_max_id)
    finally:
        checks.close()  # cancels the checks not started, waits for the rest
    if vocab_size > VOCAB_WARNING_RATIO * (max_id + 1):
        print(f"Warning: the vocabulary has {vocab_size} tokens but the "
              f"highest token id in the records checked is {max_id} (a "
              f"vocabulary of {max_id + 1} would do): were the records made "
              f"with another vocabulary file?", file=sys.stderr, flush=True)
    return files


# -- after a read error ------------------------------------------------------

def _find_problem(path, spec):
    """data_error's check of one file: None if it is good or was read whole
    by check_files (same size and time), else its problem."""
    try:
        stat = tf.io.gfile.stat(path)
    except tf.errors.OpError as error:
        return f"cannot be read ({_tf_message(error)})"
    if _stamp(path, stat) in _verified:
        return None
    done = _read_records(path, spec)
    try:
        problem = None
        if not (done.error is None and done.unparsed is None
                and done.offset == stat.length):
            problem = framing_problem(path, stat.length, done.offset,
                                      done.count)
    except tf.errors.OpError as error:
        problem = f"cannot be read ({_tf_message(error)})"
    if problem:
        return problem
    if done.error is not None:
        message = _tf_message(done.error)
        offset = _corrupt_offset(message)
        where = (f"the record at byte {offset}" if offset is not None
                 else f"a record after the first {done.count}")
        return f"{where} is corrupt ({message})"
    if done.unparsed is not None:
        return (f"record #{done.unparsed[0]} is not a BERT pretraining "
                f"example of the expected shapes ({done.unparsed[1]})")
    return None


def data_error(error, files, max_seq_length=None, max_predictions=None,
               reading=None):
    """A DataError for a tf.errors.OpError raised while reading `files`
    (or a UnicodeDecodeError: TensorFlow raises one instead when the
    message of a parse error quotes a record's bytes that are not UTF-8).

    tf.data interleaves the files and TensorFlow's message names no file,
    so files are read again until the bad one is found: the error names it
    and the bad record's byte offset.  What is read: each file's size, then
    every record of it (every CRC checked; every record
    parsed too when max_seq_length and max_predictions are given), and at
    most TAIL_BYTES more where the records do not end at the file's end.
    Files that check_files read whole in this process, unchanged since, are
    not read.  The files of `reading` (those being read when the error
    came, where the caller knows them) come first, then the others in
    order; WORKERS at once, stopping at the first bad one in that order.
    When no file is found bad, the message says what TensorFlow said and
    which files were being read.
    """
    files = list(files)
    message = _tf_message(error)
    spec = None
    if max_seq_length is not None and max_predictions is not None:
        spec = feature_spec(max_seq_length, max_predictions)
    first = set(reading or ())
    candidates = ([p for p in files if p in first]
                  + [p for p in files if p not in first])
    checks = _in_order(lambda path: _find_problem(path, spec), candidates)
    try:
        for path, problem in zip(candidates, checks):
            if problem:
                return DataError(f"TFRecord file {path}: {problem}")
    finally:
        checks.close()  # cancels the checks not started, waits for the rest
    named = files[0] if len(files) == 1 else (
        f"{len(files)} files: {', '.join(files[:3])}"
        + (", ..." if len(files) > 3 else ""))
    return DataError(f"Reading TFRecord {named} failed: {message}")
