r"""Time from start to the first batch of a resumed run's input pipeline.

A resumed run starts its data where the checkpoint says (train/order.py:
the order is a function of the position), so the wait before its first
update should not grow with how far the run got. This times, in one
process, building `train.data.reading.dataset_fn`'s pipeline and taking
its first batch when resuming at each of --updates (the position of the
record after that many updates of --batch examples), against update 0; and
the fallback that replays the data (a checkpoint without positions) at
--replay_updates. Examples are made from the default corpus (the demo's
data, at 128 tokens) into --data_dir unless it holds them already.

  python -m benchmarks.resume
  python -m benchmarks.resume --updates=0,10000,100000 --batch=256 \
      --replay_updates=10000 --json_out=/tmp/resume.json
"""

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

import tensorflow as tf

from train import create_pretraining_data as cpd
from train.data import corpus
from train.data import order
from train.data import reading

SEQ, PREDICTIONS = 128, 20


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", default="0,10000,100000",
                        help="comma-separated updates to resume at")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--shuffle_buffer", type=int, default=10000)
    parser.add_argument("--replay_updates", type=int, default=10000,
                        help="also time replaying this many updates' data "
                             "(0: not)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timings per point (the median is reported)")
    parser.add_argument("--max_documents", type=int, default=None,
                        help="documents of the default corpus to use "
                             "(default: all)")
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--vocab_size", type=int, default=8000)
    parser.add_argument("--data_dir", default=os.path.join(
        tempfile.gettempdir(), "tf_lamb_resume_benchmark"))
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--json_out", default=None)
    return parser.parse_args(argv)


def make_data(args):
    """The default corpus's examples (one file, like the demo's), made
    once per settings into a folder of --data_dir."""
    folder = os.path.join(args.data_dir, f"docs{args.max_documents}_"
                          f"dupe{args.dupe_factor}_vocab{args.vocab_size}")
    files = sorted(glob.glob(os.path.join(folder, "*.tfrecord")))
    if files:
        return files
    os.makedirs(folder, exist_ok=True)
    documents = corpus.stdlib_documents(args.max_documents)
    output = os.path.join(folder, "train.tfrecord")
    cpd.create_pretraining_data(
        documents, [output + ".partial"],
        output_vocab_file=os.path.join(folder, "vocab.txt"),
        max_seq_length=SEQ, max_predictions=PREDICTIONS,
        dupe_factor=args.dupe_factor, vocab_size=args.vocab_size, seed=7)
    os.rename(output + ".partial", output)
    return [output]


def position_after(files, args, records):
    """The (block, index) of the record after the first `records` of the
    stream, as a run's checkpoint would hold it: found from the files'
    record counts (counted here, not by the timed resume)."""
    counts = {path.encode(): sum(1 for _ in tf.data.TFRecordDataset(path))
              for path in files}
    block = 0
    while True:
        chosen = order.block_files(
            files, tf.constant(block, tf.int64), args.seed).numpy()
        size = sum(counts[path] for path in chosen)
        if records < size:
            return block, records
        records -= size
        block += 1


def first_batch_seconds(files, args, start=None, replay=0):
    """Seconds from building the pipeline to holding its first batch."""
    started = time.perf_counter()
    make = reading.dataset_fn(
        files, args.batch, SEQ, PREDICTIONS, seed=args.seed,
        batches_to_skip=replay, shuffle_buffer=args.shuffle_buffer,
        start_positions=None if start is None else [start])
    batch = next(iter(make(tf.distribute.InputContext())))
    seconds = time.perf_counter() - started
    return seconds, batch[order.POSITION_KEY].numpy()[0].tolist()


def run(args):
    files = make_data(args)
    records = sum(1 for _ in tf.data.TFRecordDataset(files))
    first_batch_seconds(files, args)  # the first graph built, untimed
    rows = []
    for updates in [int(u) for u in args.updates.split(",")]:
        start = position_after(files, args, updates * args.batch)
        times, tag = [], None
        for _ in range(args.repeats):
            seconds, tag = first_batch_seconds(files, args, start)
            times.append(seconds)
        # The first example is the one at the position asked for.
        assert tuple(tag[1:]) == start, (tag, start)
        rows.append({"updates": updates, "mode": "position",
                     "seconds": statistics.median(times)})
    if args.replay_updates:
        seconds, _ = first_batch_seconds(files, args,
                                         replay=args.replay_updates)
        rows.append({"updates": args.replay_updates, "mode": "replay",
                     "seconds": seconds})
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio_to_first"] = row["seconds"] / base
    return {"records": records, "files": len(files), "batch": args.batch,
            "shuffle_buffer": args.shuffle_buffer, "rows": rows}


def print_table(result, out=sys.stdout):
    print(f"{result['records']:,} records in {result['files']} file(s), "
          f"batch {result['batch']}, shuffle window "
          f"{result['shuffle_buffer']}", file=out)
    print(f"{'resume at update':>17} {'how':>9} {'first batch s':>14} "
          f"{'ratio':>7}", file=out)
    for row in result["rows"]:
        print(f"{row['updates']:>17,} {row['mode']:>9} "
              f"{row['seconds']:>14.3f} {row['ratio_to_first']:>7.2f}",
              file=out)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    print_table(result)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2, sort_keys=True)
    return result


if __name__ == "__main__":
    main()
