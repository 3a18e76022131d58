"""Start-up on many shards: the time of `train.data.record_checks.check_files`.

Writes one shard of random BERT pretraining examples, copies it --shards
times into a folder under /tmp (or --dir), and times check_files over them
with its default byte budget (the data set's first 64 MiB are read whole,
of the other files only the first records; --full_check_bytes=0 reads
only the first records of each), --repeats times in one process (the
files are in the page cache after the first).

  python -m benchmarks.startup --shards=500
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from train.data import record_checks


def _example(rng, seq_len, predictions, vocab):
    ints = lambda values: tf.train.Feature(  # noqa: E731
        int64_list=tf.train.Int64List(value=[int(v) for v in values]))
    features = {
        "input_ids": ints(rng.integers(1, vocab, seq_len)),
        "input_mask": ints(np.ones(seq_len)),
        "segment_ids": ints(np.arange(seq_len) >= seq_len // 2),
        "masked_lm_positions": ints(np.sort(rng.choice(
            seq_len, predictions, replace=False))),
        "masked_lm_ids": ints(rng.integers(1, vocab, predictions)),
        "masked_lm_weights": tf.train.Feature(float_list=tf.train.FloatList(
            value=[1.0] * predictions)),
        "next_sentence_labels": ints([rng.integers(2)]),
    }
    return tf.train.Example(features=tf.train.Features(
        feature=features)).SerializeToString(deterministic=True)


def make_shards(directory, shards, records, seq_len, predictions, vocab):
    """`shards` copies of one file of `records` random examples; their
    paths."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    first = os.path.join(directory, "shard-00000.tfrecord")
    with tf.io.TFRecordWriter(first) as writer:
        for _ in range(records):
            writer.write(_example(rng, seq_len, predictions, vocab))
    paths = [first]
    for i in range(1, shards):
        paths.append(os.path.join(directory, f"shard-{i:05d}.tfrecord"))
        shutil.copyfile(first, paths[-1])
    return paths


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=500)
    parser.add_argument("--records", type=int, default=100,
                        help="records per shard")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--predictions", type=int, default=20)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full_check_bytes", type=int, default=64 << 20,
                        help="check_files' budget of bytes read whole (0: "
                        "only the first records of each shard, as for big "
                        "shards)")
    parser.add_argument("--dir", default=None,
                        help="where the shards go (default: a new folder "
                        "under /tmp, removed at the end)")
    args = parser.parse_args(argv)
    if args.shards < 1 or args.records < 1 or args.repeats < 1:
        parser.error("--shards, --records and --repeats must be positive")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    directory = args.dir or tempfile.mkdtemp(prefix="startup-", dir="/tmp")
    try:
        paths = make_shards(directory, args.shards, args.records,
                            args.seq_len, args.predictions, args.vocab)
        shard_bytes = os.path.getsize(paths[0])
        pattern = os.path.join(directory, "shard-*.tfrecord")
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            checked = record_checks.check_files(
                [pattern], args.seq_len, args.predictions, args.vocab,
                full_check_bytes=args.full_check_bytes)
            times.append(time.perf_counter() - start)
            assert checked == paths
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    result = {
        "benchmark": "startup", "shards": args.shards,
        "records_per_shard": args.records, "seq_len": args.seq_len,
        "full_check_bytes": args.full_check_bytes,
        "shard_bytes": shard_bytes,
        "check_files_s": times, "median_s": statistics.median(times),
        "min_s": min(times), "cpus": os.cpu_count(),
        "tensorflow": tf.__version__}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
