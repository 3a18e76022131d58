"""tf.data input for pretraining: TFRecords in Google BERT's format.

Every shape is static and every batch full (drop_remainder), as TPUs need.
The order of the examples depends only on the seed and the pipeline layout
(`train.data.order`), so that a resumed run sees the same data as an
uninterrupted one, starting where it stopped without reading what it
already trained on.
"""

import tensorflow as tf

from train.data import order
from train.data.features import feature_spec


def parse_batch(serialized, max_seq_length, max_predictions):
    """A batch of serialized Examples -> dict of int32/float32 tensors."""
    parsed = tf.io.parse_example(
        serialized, feature_spec(max_seq_length, max_predictions))
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


def dataset_fn(files, global_batch_size, max_seq_length, max_predictions,
               seed, batches_to_skip=0, shuffle_buffer=10000,
               start_positions=None, draw_masks=None):
    """A function for `strategy.distribute_datasets_from_function`.

    `global_batch_size` is the batch of one micro-step over all replicas.
    The order is `train.data.order`'s, a function of the seed and the
    pipeline layout only; each batch carries its examples' positions
    under `order.POSITION_KEY`. `start_positions`, per input
    pipeline, is the (block, index) its stream starts at (a resume
    without replay); else `batches_to_skip` per-replica batches per input
    pipeline are read and dropped (before parsing). `draw_masks(features,
    tags)`, if given, replaces each batch's masks (train.data.masking).
    """
    files = list(files)

    def make(input_context):
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        pipeline = input_context.input_pipeline_id
        start = (0, 0) if start_positions is None else (
            start_positions[pipeline])
        dataset = order.stream(
            files, seed, shuffle_buffer,
            pipelines=input_context.num_input_pipelines, pipeline=pipeline,
            start=start)
        if batches_to_skip:
            dataset = dataset.skip(batches_to_skip * batch)
        dataset = dataset.batch(batch, drop_remainder=True)

        def parse(records, tags):
            features = parse_batch(records, max_seq_length, max_predictions)
            if draw_masks is not None:
                features = draw_masks(features, tags)
            features[order.POSITION_KEY] = tags
            return features

        dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                              deterministic=True)
        options = tf.data.Options()
        options.deterministic = True
        dataset = dataset.with_options(options)
        return dataset.prefetch(tf.data.AUTOTUNE)

    return make
