"""Example creation on a large text: MB/s with 1 and 2 workers, peak memory
at 1x and 4x the text.

Repeats the default corpus (Python's docstrings) into a text file of --mb
MB under /tmp (or --dir), learns a vocabulary once from the default corpus,
then times `python -m train.create_pretraining_data` on it (that
vocabulary, --output_shards=4) with each number of --workers, each run a
process of its own. The memory check makes examples from a quarter of the
text with one worker too: the peak at 4x the text should be at most 1.2x
the peak at 1x. Memory is the peak of the process tree (the program and
its workers), summed from /proc every 0.2 s, and the largest peak of any
one process (getrusage of the children).

  python -m benchmarks.example_creation            # 200 MB, 10+ minutes
  python -m benchmarks.example_creation --mb=8     # a quick look
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Runs a command and prints the largest peak RSS (KB) of any process under
# it: RUSAGE_CHILDREN covers every descendant that was waited for.
_WRAPPER = ("import resource, subprocess, sys; "
            "code = subprocess.call(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(code)")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def repeat_corpus(path, megabytes, text):
    """Writes `text` again and again into `path` up to `megabytes` MB."""
    target = int(megabytes * 1e6)
    data = text.encode("utf-8")
    with open(path, "wb") as f:
        written = 0
        while written < target:
            part = data[:target - written]
            # Whole documents only: cut at the last blank line, or after
            # the first document when none fits.
            if len(part) < len(data):
                cut = part.rfind(b"\n\n")
                part = data[:(cut if cut >= 0 else data.find(b"\n\n")) + 2]
            f.write(part)
            written += len(part)
    return os.path.getsize(path)


def _children():
    """{pid: parent pid} of every process, from /proc."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                parents[int(name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                continue
    return parents


def tree_rss(pid):
    """Resident bytes of `pid` and all its descendants (0 off Linux)."""
    if not os.path.isdir("/proc"):
        return 0
    parents = _children()
    tree, frontier = {pid}, [pid]
    while frontier:
        current = frontier.pop()
        for child, parent in parents.items():
            if parent == current and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for member in tree:
        try:
            with open(f"/proc/{member}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def measure(text_file, vocab_file, out_dir, workers, extra=()):
    """One run of the program: wall seconds, peak tree RSS, largest
    process RSS, examples written."""
    command = [sys.executable, "-c", _WRAPPER, sys.executable, "-m",
               "train.create_pretraining_data", f"--input_file={text_file}",
               f"--vocab_file={vocab_file}",
               f"--output_file={out_dir}/examples", "--output_shards=4",
               f"--num_workers={workers}", "--progress_seconds=60",
               *extra]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=env,
                               cwd=ROOT, text=True)
    peak = 0
    while process.poll() is None:
        peak = max(peak, tree_rss(process.pid))
        time.sleep(0.2)
    seconds = time.perf_counter() - start
    output = process.stdout.read().split()
    if process.returncode:
        raise RuntimeError(f"{command} exited {process.returncode}")
    examples = sum(1 for _ in _records(out_dir))
    shutil.rmtree(out_dir, ignore_errors=True)
    return {"workers": workers, "seconds": seconds,
            "peak_tree_rss_mb": peak / 1e6,
            "max_process_rss_mb": int(output[-1]) * 1024 / 1e6,
            "examples": examples}


def _records(directory):
    import tensorflow as tf
    names = sorted(n for n in os.listdir(directory)
                   if n.startswith("examples"))
    for batch in tf.data.TFRecordDataset(
            [os.path.join(directory, n) for n in names]).batch(4096):
        yield from batch.numpy()


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0,
                        help="MB of text for the timed runs")
    parser.add_argument("--workers", default="1,2",
                        help="comma-separated numbers of workers")
    parser.add_argument("--dupe_factor", type=int, default=5)
    parser.add_argument("--skip_memory_check", action="store_true",
                        help="no run at a quarter of the text")
    parser.add_argument("--dir", default=None,
                        help="where the text and examples go (default: a "
                        "new folder under /tmp, removed at the end)")
    args = parser.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(",")]
    if args.mb <= 0 or min(args.workers) < 1:
        parser.error("--mb and --workers must be positive")
    return args


def _setup(directory, args):
    """(text of --mb MB, text of a quarter of it, vocab file, bytes)."""
    from train.data import corpus
    from train.data import tokenization
    documents = corpus.stdlib_documents()
    text = "".join("\n".join(d) + "\n\n" for d in documents)
    vocab_file = os.path.join(directory, "vocab.txt")
    tokenization.write_vocab(tokenization.learn_vocab(documents),
                             vocab_file)
    big = os.path.join(directory, "text.txt")
    quarter = os.path.join(directory, "quarter.txt")
    sizes = (repeat_corpus(big, args.mb, text),
             repeat_corpus(quarter, args.mb / 4, text))
    return big, quarter, vocab_file, sizes


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    directory = args.dir or tempfile.mkdtemp(prefix="examples-", dir="/tmp")
    extra = [f"--dupe_factor={args.dupe_factor}"]
    try:
        big, quarter, vocab_file, (size, quarter_size) = _setup(directory,
                                                                args)
        runs = []
        for workers in args.workers:
            run = measure(big, vocab_file, os.path.join(directory, "out"),
                          workers, extra)
            run["mb_per_s"] = size / 1e6 / run["seconds"]
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
        memory = None
        if not args.skip_memory_check:
            small = measure(quarter, vocab_file,
                            os.path.join(directory, "out"), 1, extra)
            full = next((r for r in runs if r["workers"] == 1), None) or (
                measure(big, vocab_file, os.path.join(directory, "out"), 1,
                        extra))
            memory = {
                "mb": [quarter_size / 1e6, size / 1e6],
                "peak_tree_rss_mb": [small["peak_tree_rss_mb"],
                                     full["peak_tree_rss_mb"]],
                "max_process_rss_mb": [small["max_process_rss_mb"],
                                       full["max_process_rss_mb"]],
                "ratio": full["peak_tree_rss_mb"] / small["peak_tree_rss_mb"],
            }
            memory["goal_met"] = memory["ratio"] <= 1.2
    finally:
        if args.dir is None:
            shutil.rmtree(directory, ignore_errors=True)
    one = next((r for r in runs if r["workers"] == 1), None)
    result = {"benchmark": "example_creation", "text_mb": size / 1e6,
              "dupe_factor": args.dupe_factor, "runs": runs,
              "memory": memory, "cpus": os.cpu_count()}
    if one:
        result["speedup"] = {str(r["workers"]): r["mb_per_s"]
                             / one["mb_per_s"] for r in runs}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
