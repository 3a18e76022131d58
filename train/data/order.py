"""The training stream's order as a function of its position.

A resumed run must see the records an uninterrupted run would have seen
from the same update on. Replaying the stream from its start and dropping
what was already trained on costs time in proportion to how far the run
got (tf.data's own iterator checkpoints save nothing through
`tf.distribute`'s distributed iterators). Here the order is instead a pure
function of a position, so a run resumes by computing where it was:

- An input pipeline's infinite stream is a concatenation of blocks. Block
  `b` is group `g = b % groups` of epoch `e = b // groups`: the pipeline's
  files permuted by (seed, e) (stateless), cut into groups of `cycle`
  consecutive files (`cycle = min(8, files)`, the interleave of earlier
  versions), read round-robin one record at a time.
- Each block is cut into windows of `window` records (the shuffle buffer);
  the records of window `w` are permuted by (seed, b, w), again stateless.
- Every element carries its position as an int32 tag (pipeline, block,
  index in the block's permuted order). The trainer keeps the tag of the
  last record each replica consumed (`PositionState`), in the checkpoint.

To start at (b, i), blocks before b are not read at all; of block b, the
raw records of the windows before i's are read and dropped before any
parsing or shuffling, then the first `i % window` records of i's window.
So the records read before the first batch are bounded by one block,
whatever the update reached.
"""

import numpy as np
import tensorflow as tf

# The feature that carries each example's tag through the pipeline; the
# trainer pops it before the model sees the features.
POSITION_KEY = "data_position"
# Bumped whenever the order below changes, so that positions recorded under
# another order are not used (the resume falls back to replaying).
ORDER_VERSION = 1
MAX_CYCLE = 8
# Far beyond any run: the block range is infinite in practice.
_NO_END = 2 ** 62
# Stateless draws name their algorithm: "auto_select" may pick a
# different one on another device, which would change the order.
ALGORITHM = "philox"
# What a layout vector holds (see `layout`).
LAYOUT_FIELDS = ("order_version", "phase", "seed", "pipelines", "replicas",
                 "replica_batch", "files", "window")


def pipeline_files(files, pipelines, pipeline):
    """(files this pipeline reads, record shards): each pipeline reads its
    own files when there are enough to go round, else every pipeline reads
    all files and keeps every `pipelines`-th record."""
    files = list(files)
    if pipelines > 1 and len(files) >= pipelines:
        return files[pipeline::pipelines], 1
    return files, max(1, pipelines)


def stateless_key(seed, *data):
    """A stateless seed from the run's seed and the indices given."""
    key = tf.stack([tf.constant(seed, tf.int64), tf.constant(0, tf.int64)])
    for value in data:
        key = tf.random.experimental.stateless_fold_in(
            key, tf.cast(value, tf.int64), alg=ALGORITHM)
    return key


def permutation(size, key):
    """A permutation of range(size) drawn from the stateless `key`: the
    order of 64-bit random draws (ties, nearly impossible, kept in index
    order by the stable sort)."""
    draws = tf.random.stateless_uniform(
        [size], key, minval=None, maxval=None, dtype=tf.int64, alg=ALGORITHM)
    return tf.argsort(draws, stable=True)


def groups_per_epoch(num_files):
    cycle = min(MAX_CYCLE, num_files)
    return -(-num_files // cycle)


def block_files(files, block, seed):
    """The files of `block` (a tensor), in reading order: group
    `block % groups` of the epoch's permutation of `files`."""
    count = len(files)
    cycle = min(MAX_CYCLE, count)
    groups = groups_per_epoch(count)
    epoch, group = block // groups, block % groups
    # 1: the purpose "files of an epoch" (windows use 2).
    order = permutation(count, stateless_key(seed, 1, epoch))
    chosen = order[group * cycle:tf.minimum((group + 1) * cycle, count)]
    return tf.gather(tf.constant(files), chosen)


def _raw_block(files, block, seed, parallel=True):
    """The records of `block`, unparsed, in their order before the window
    shuffle: its files read round-robin, one record at a time (the same
    order read in parallel or not)."""
    cycle = min(MAX_CYCLE, len(files))
    return tf.data.Dataset.from_tensor_slices(
        block_files(files, block, seed)).interleave(
            tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
            # `deterministic` only applies to (and is only accepted quietly
            # with) a parallel reader; the sequential one is in order.
            **(dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               if parallel else {}))


def _block(files, block, start, seed, window, shards, shard, pipeline,
           parallel=True):
    """Block `block` from its position `start`: (record, tag) elements.

    The raw records of the windows before `start`'s are dropped unread by
    the shuffle and the parser; the first window is then drawn whole (its
    permutation needs it) and cut at `start`."""
    records = _raw_block(files, block, seed, parallel)
    first_window = start // window
    # Whole windows of this pipeline's records are skipped: a multiple of
    # `shards` raw records, so the sharding below keeps its phase.
    records = records.skip(first_window * window * shards)
    if shards > 1:
        records = records.shard(shards, shard)
    windows = tf.data.Dataset.zip((
        tf.data.Dataset.range(first_window, _NO_END),
        records.batch(window)))

    def permute(index, batch):
        size = tf.shape(batch, out_type=tf.int64)[0]
        # 2: the purpose "records of a window".
        order = permutation(size, stateless_key(seed, 2, block, index))
        # The first window starts at `start`: the records before it are
        # cut here, at once, rather than one element at a time.
        begin = tf.where(index == first_window, start % window, 0)
        positions = index * window + tf.range(begin, size, dtype=tf.int64)
        kept = tf.size(positions, out_type=tf.int64)
        tags = tf.stack([
            tf.fill([kept], tf.constant(pipeline, tf.int64)),
            tf.fill([kept], block), positions], axis=1)
        return tf.gather(batch, order[begin:]), tf.cast(tags, tf.int32)

    return windows.map(permute).unbatch()


def stream(files, seed, window, pipelines=1, pipeline=0, start=(0, 0)):
    """This pipeline's infinite stream of (serialized record, int32 tag
    [pipeline, block, index]) from position `start` = (block, index)."""
    files, shards = pipeline_files(files, pipelines, pipeline)
    shard = pipeline if shards > 1 else 0
    first_block, first_index = (int(start[0]), int(start[1]))
    blocks = tf.data.Dataset.range(first_block + 1, _NO_END).flat_map(
        lambda block: _block(files, block, tf.constant(0, tf.int64), seed,
                             window, shards, shard, pipeline))
    # The block resumed in: its records before the start are skipped
    # one at a time, cheaper without the parallel reader's hand-offs
    # (measured: 10,000 records in ~0.6 s in parallel on a busy 2-core
    # machine).
    first = _block(files, tf.constant(first_block, tf.int64),
                   tf.constant(first_index, tf.int64), seed, window, shards,
                   shard, pipeline, parallel=first_index < window)
    return first.concatenate(blocks)


def layout(phase, seed, pipelines, replicas, replica_batch, files, window):
    """What a stream's positions depend on besides the position, as a
    vector (LAYOUT_FIELDS): positions recorded under another layout are not
    used."""
    return np.array([ORDER_VERSION, phase, seed, pipelines, replicas,
                     replica_batch, files, window], np.int64)


def resume_points(positions, recorded_layout, expected_layout, pipelines):
    """Per pipeline, the position (block, index) of its next record after
    the recorded last tags `positions` ([replicas, 3]: pipeline, block,
    index); None when they cannot be used (none recorded, or recorded
    under another layout)."""
    positions = np.asarray(positions)
    if not np.array_equal(np.asarray(recorded_layout), expected_layout):
        return None
    if positions.size == 0 or (positions < 0).any():
        return None
    points = []
    for pipeline in range(pipelines):
        mine = positions[positions[:, 0] == pipeline]
        if not len(mine):
            return None
        # A pipeline's tags grow along its stream: its replicas' last
        # batches end at different tags, the greatest is the latest.
        block, index = max((int(b), int(i)) for _, b, i in mine)
        points.append((block, index + 1))
    return points


class PositionState(tf.Module):
    """The last tag each replica consumed and the layout of the stream
    they came from, as mirrored variables kept in the checkpoint (the
    chief's checkpoint holds every pipeline's: the tags are all-reduced)."""

    def __init__(self, replicas):
        super().__init__(name="data_position")
        self.replicas = replicas
        mirrored = dict(trainable=False,
                        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.positions = tf.Variable(
            tf.fill([replicas, 3], tf.constant(-1, tf.int64)),
            name="positions", **mirrored)
        self.layout = tf.Variable(tf.zeros([len(LAYOUT_FIELDS)], tf.int64),
                                  name="layout", **mirrored)

    def record(self, tags, context):
        """In a replica: stores the last of this replica's `tags` ([batch,
        3] int32) in its row, and every other replica's in theirs."""
        row = tf.one_hot(context.replica_id_in_sync_group, self.replicas,
                         dtype=tf.int32)[:, None] * tags[-1][None, :]
        # int32: the type every strategy (TPUs included) reduces.
        rows = context.all_reduce(tf.distribute.ReduceOp.SUM, row)
        self.positions.assign(tf.cast(rows, tf.int64))

    def forget(self, new_layout):
        """No usable position until the next update (a stream started by
        replaying)."""
        self.positions.assign(tf.fill(tf.shape(self.positions),
                                      tf.constant(-1, tf.int64)))
        self.layout.assign(new_layout)


class TrainingCheckpoint(tf.train.Checkpoint):
    """A tf.train.Checkpoint whose `data_position` may be missing from
    the checkpoint read (one written before positions were kept) or be of
    another shape (written with another number of replicas): the rest is
    restored and matched as usual, the positions are marked unknown (the
    stream is then replayed)."""

    _OPTIONAL = "data_position"

    def _lacks_usable_positions(self, path):
        try:
            # The prefix's own reader: tf.train.load_checkpoint first asks
            # whether the path is a folder, which a prefix is on ram://.
            reader = tf.compat.v1.train.NewCheckpointReader(path)
        except (tf.errors.OpError, ValueError):
            # Unreadable: the restore below says why.
            return False
        prefix = f"{self._OPTIONAL}/"
        expected = [list(v.shape)
                    for v in getattr(self, self._OPTIONAL).variables]
        saved = sorted(shape for name, shape in
                       reader.get_variable_to_shape_map().items()
                       if name.startswith(prefix))
        return saved != sorted(expected)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Set past the attribute tracking: the names are no dependency.
        object.__setattr__(self, "_names", tuple(kwargs))

    def _without_positions(self):
        state = getattr(self, self._OPTIONAL)
        state.forget(tf.zeros_like(state.layout))
        return tf.train.Checkpoint(**{
            name: getattr(self, name) for name in self._names
            if name != self._OPTIONAL})

    def restore(self, save_path, options=None):
        if save_path and self._lacks_usable_positions(save_path):
            return self._without_positions().restore(save_path, options)
        return super().restore(save_path, options)

    def read(self, save_path, options=None):
        if save_path and self._lacks_usable_positions(save_path):
            return self._without_positions().read(save_path, options)
        return super().read(save_path, options)
