"""tf.data input for pretraining: TFRecords in Google BERT's format.

Every shape is static and every batch full (drop_remainder), as TPUs need.
The order of the examples depends only on the seed, so that a resumed run
can skip the batches it already trained on and see the same data as an
uninterrupted one.
"""

import re
import sys

import tensorflow as tf

from train.errors import DataError


def feature_spec(max_seq_length, max_predictions):
    ints = lambda n: tf.io.FixedLenFeature([n], tf.int64)  # noqa: E731
    return {
        "input_ids": ints(max_seq_length),
        "input_mask": ints(max_seq_length),
        "segment_ids": ints(max_seq_length),
        "masked_lm_positions": ints(max_predictions),
        "masked_lm_ids": ints(max_predictions),
        "masked_lm_weights": tf.io.FixedLenFeature([max_predictions],
                                                   tf.float32),
        "next_sentence_labels": ints(1),
    }


def parse_batch(serialized, max_seq_length, max_predictions):
    """A batch of serialized Examples -> dict of int32/float32 tensors."""
    parsed = tf.io.parse_example(serialized,
                                 feature_spec(max_seq_length, max_predictions))
    return {name: tf.cast(value, tf.int32) if value.dtype == tf.int64
            else value for name, value in parsed.items()}


def matching_files(patterns, kind):
    """Sorted files matching each glob pattern in turn; ValueError naming a
    pattern that matches nothing (`kind` says what was looked for)."""
    files = []
    for pattern in patterns:
        matched = sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise ValueError(f"No {kind} matches {pattern!r}")
        files.extend(matched)
    return files


# A TFRecord record is framed as: length (uint64, little-endian), a masked
# CRC-32C of the length (uint32), the data, a masked CRC-32C of the data.
_HEADER_BYTES, _FOOTER_BYTES = 12, 4

# Files read whole (every CRC checked) by check_files in this process, by
# (path, size, modification time): data_error looks at them last.
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


def _stamp(path):
    stat = tf.io.gfile.stat(path)
    return path, stat.length, stat.mtime_nsec


def _tf_message(error):
    """The first line of a TensorFlow error without its op decorations."""
    message = (getattr(error, "message", None) or str(error)).strip()
    message = message.splitlines()[0] if message else type(error).__name__
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).strip()


def _corrupt_offset(message):
    match = re.search(r"(?:corrupted|truncated) record at (\d+)", message)
    return int(match.group(1)) if match else None


def check_framing(path, size=None):
    """None if `path` is a sequence of whole TFRecord records, else a
    one-line description of the first record that is cut short.

    Reads only the 12-byte header of each record (no CRC), so that a file
    whose last record was truncated (which tf.data silently drops) is found
    at start-up without reading the file.
    """
    size = tf.io.gfile.stat(path).length if size is None else size
    # Python's own file object seeks in about a microsecond, GFile's in tens
    # (8 s for the 220,000 records of a 70 MB file).
    local = "://" not in path
    offset = records = 0
    with (open(path, "rb") if local else tf.io.gfile.GFile(path, "rb")) as f:
        while offset < size:
            if size - offset < _HEADER_BYTES:
                return (f"record #{records} at byte {offset} is truncated "
                        f"(its header is cut at the end of the file, "
                        f"{size} bytes)")
            f.seek(offset)
            length = int.from_bytes(f.read(8), "little")
            end = offset + _HEADER_BYTES + length + _FOOTER_BYTES
            if end > size:
                return (f"record #{records} at byte {offset} is truncated "
                        f"or corrupt (it says {length} bytes of data, which "
                        f"run past the end of the file, {size} bytes)")
            offset, records = end, records + 1
    return None


def _scan(path, spec=None):
    """None if all of `path`'s records pass their CRC checks (and parse
    with `spec`, when given), else a one-line description of the first
    that does not."""
    dataset = tf.data.TFRecordDataset(path, buffer_size=8 << 20)
    read = 0
    try:
        for batch in dataset.batch(1024):
            if spec is not None:
                try:
                    tf.io.parse_example(batch, spec)
                except tf.errors.InvalidArgumentError:
                    for i in range(int(batch.shape[0])):
                        try:
                            tf.io.parse_example(batch[i:i + 1], spec)
                        except tf.errors.InvalidArgumentError as error:
                            return (f"record #{read + i} is not a BERT "
                                    f"pretraining example of the expected "
                                    f"shapes ({_tf_message(error)})")
            read += int(batch.shape[0])
    except tf.errors.OpError as error:
        message = _tf_message(error)
        offset = _corrupt_offset(message)
        where = (f"the record at byte {offset}" if offset is not None
                 else f"a record after the first {read}")
        return f"{where} is corrupt ({message})"
    return None


def data_error(error, files, max_seq_length=None, max_predictions=None):
    """A DataError for a tf.errors.OpError raised while reading `files`
    (or a UnicodeDecodeError: TensorFlow raises one instead when the
    message of a parse error quotes a record's bytes that are not UTF-8).

    tf.data interleaves the files and TensorFlow's message names no file,
    so the files are read again (every CRC checked; every record parsed too
    when max_seq_length and max_predictions are given) until the bad one is
    found: the error names it and the bad record's byte offset.  Files that
    check_files read whole are read last.  When no file is found bad, the
    message says what TensorFlow said and which files were being read.
    """
    files = list(files)
    message = _tf_message(error)
    spec = None
    if max_seq_length is not None and max_predictions is not None:
        spec = feature_spec(max_seq_length, max_predictions)

    def verified(path):
        try:
            return _stamp(path) in _verified
        except tf.errors.OpError:
            return False

    for path in sorted(files, key=verified):
        try:
            problem = check_framing(path)
            if problem is None:
                problem = _scan(path, spec)
        except tf.errors.OpError as read_error:
            problem = f"cannot be read ({_tf_message(read_error)})"
        if problem:
            return DataError(f"TFRecord file {path}: {problem}")
    named = files[0] if len(files) == 1 else (
        f"{len(files)} files: {', '.join(files[:3])}"
        + (", ..." if len(files) > 3 else ""))
    return DataError(f"Reading TFRecord {named} failed: {message}")


def check_files(pattern_list, max_seq_length, max_predictions, vocab_size,
                full_check_bytes=64 << 20, records_checked=64):
    """Files matching the patterns, after checking that they hold examples
    of the expected shapes with ids below `vocab_size`.

    The record framing of every local file is checked (a truncated last
    record, which tf.data silently drops, is found by reading 12 bytes a
    record).  Files are read whole (every record's
    CRC is checked) while their total size stays within `full_check_bytes`;
    of the others only the first `records_checked` records are read, so
    that big data sets start fast: a bad record deeper in them shows up
    while training, where `data_error` turns it into a DataError.
    Raises DataError (a ValueError) naming the file and the problem.  Warns
    (on stderr) when the vocabulary is more than VOCAB_WARNING_RATIO times
    larger than the highest token id read.
    """
    files = matching_files(pattern_list, "TFRecord file")
    spec = feature_spec(max_seq_length, max_predictions)
    budget = full_check_bytes
    max_id = -1
    for path in files:
        size = tf.io.gfile.stat(path).length
        if size == 0:
            raise DataError(f"TFRecord file {path} is empty")
        whole = size <= budget
        # Seeking from header to header is cheap on local disks but costs a
        # request per record on remote file systems: those are only walked
        # when they are read whole anyway.
        if whole or "://" not in path:
            problem = check_framing(path, size)
            if problem:
                raise DataError(f"TFRecord file {path}: {problem}")
        dataset = tf.data.TFRecordDataset(path)
        if whole:
            budget -= size
        else:
            dataset = dataset.take(records_checked)
        count, file_max_id = 0, -1
        try:
            for batch in dataset.batch(1024):
                try:
                    parsed = tf.io.parse_example(batch, spec)
                except tf.errors.InvalidArgumentError as error:
                    raise DataError(
                        f"TFRecord file {path} does not hold BERT "
                        f"pretraining examples with max_seq_length="
                        f"{max_seq_length} and max_predictions_per_seq="
                        f"{max_predictions}: {_tf_message(error)}") from None
                count += int(batch.shape[0])
                file_max_id = max(
                    file_max_id, int(tf.reduce_max(parsed["input_ids"])),
                    int(tf.reduce_max(parsed["masked_lm_ids"])))
        except tf.errors.OpError as error:
            message = _tf_message(error)
            offset = _corrupt_offset(message)
            where = f" at byte {offset}" if offset is not None else ""
            raise DataError(f"TFRecord file {path} is corrupt{where}: "
                            f"{message}") from None
        if count == 0:
            raise DataError(f"TFRecord file {path} holds no record")
        if file_max_id >= vocab_size:
            raise DataError(
                f"TFRecord file {path} holds token id {file_max_id}, but "
                f"the vocabulary has {vocab_size} tokens: the data was made "
                f"with another vocabulary")
        max_id = max(max_id, file_max_id)
        if whole:
            _verified.add(_stamp(path))
    if vocab_size > VOCAB_WARNING_RATIO * (max_id + 1):
        print(f"Warning: the vocabulary has {vocab_size} tokens but the "
              f"highest token id in the records checked is {max_id} (a "
              f"vocabulary of {max_id + 1} would do): were the records made "
              f"with another vocabulary file?", file=sys.stderr, flush=True)
    return files


def dataset_fn(files, global_batch_size, max_seq_length, max_predictions,
               seed, batches_to_skip=0, shuffle_buffer=10000):
    """A function for `strategy.distribute_datasets_from_function`.

    `global_batch_size` is the batch of one micro-step over all replicas;
    `batches_to_skip` counts per-replica batches per input pipeline.
    """
    files = list(files)

    def make(input_context):
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        pipelines = input_context.num_input_pipelines
        pipeline = input_context.input_pipeline_id
        dataset = tf.data.Dataset.from_tensor_slices(files)
        shard_files = pipelines > 1 and len(files) >= pipelines
        if shard_files:
            dataset = dataset.shard(pipelines, pipeline)
        dataset = dataset.repeat().shuffle(len(files), seed=seed)
        dataset = dataset.interleave(
            tf.data.TFRecordDataset, cycle_length=min(8, len(files)),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if pipelines > 1 and not shard_files:
            dataset = dataset.shard(pipelines, pipeline)
        dataset = dataset.shuffle(shuffle_buffer, seed=seed + 1)
        dataset = dataset.batch(batch, drop_remainder=True)
        dataset = dataset.map(
            lambda records: parse_batch(records, max_seq_length,
                                        max_predictions),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        if batches_to_skip:
            dataset = dataset.skip(batches_to_skip)
        options = tf.data.Options()
        options.deterministic = True
        dataset = dataset.with_options(options)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return make
