"""tf.data input for pretraining: TFRecords in Google BERT's format.

Every shape is static and every batch full (drop_remainder), as TPUs need.
The order of the examples depends only on the seed, so that a resumed run
can skip the batches it already trained on and see the same data as an
uninterrupted one.
"""

import tensorflow as tf


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


def check_files(pattern_list, max_seq_length, max_predictions, vocab_size,
                full_check_bytes=64 << 20, records_checked=64):
    """Files matching the patterns, after checking that they hold examples
    of the expected shapes with ids below `vocab_size`.

    Files are read whole (every record's CRC is checked) while their total
    size stays within `full_check_bytes`; of the others only the first
    `records_checked` records are read, so that big data sets start fast.
    Raises ValueError naming the file and the problem.
    """
    files = matching_files(pattern_list, "TFRecord file")
    spec = feature_spec(max_seq_length, max_predictions)
    budget = full_check_bytes
    for path in files:
        size = tf.io.gfile.stat(path).length
        if size == 0:
            raise ValueError(f"TFRecord file {path} is empty")
        dataset = tf.data.TFRecordDataset(path)
        if size > budget:
            dataset = dataset.take(records_checked)
        else:
            budget -= size
        count, max_id = 0, -1
        try:
            for batch in dataset.batch(1024):
                try:
                    parsed = tf.io.parse_example(batch, spec)
                except tf.errors.InvalidArgumentError as error:
                    raise ValueError(
                        f"TFRecord file {path} does not hold BERT "
                        f"pretraining examples with max_seq_length="
                        f"{max_seq_length} and max_predictions_per_seq="
                        f"{max_predictions}: "
                        f"{error.message.splitlines()[0]}") from None
                count += int(batch.shape[0])
                max_id = max(max_id, int(tf.reduce_max(parsed["input_ids"])),
                             int(tf.reduce_max(parsed["masked_lm_ids"])))
        except (tf.errors.DataLossError, tf.errors.OpError) as error:
            if isinstance(error, tf.errors.InvalidArgumentError):
                raise
            raise ValueError(f"TFRecord file {path} is corrupt: "
                             f"{error.message.splitlines()[0]}") from None
        if count == 0:
            raise ValueError(f"TFRecord file {path} holds no record")
        if max_id >= vocab_size:
            raise ValueError(
                f"TFRecord file {path} holds token id {max_id}, but the "
                f"vocabulary has {vocab_size} tokens: the data was made with "
                f"another vocabulary")
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
