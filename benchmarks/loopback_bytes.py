"""Bytes the workers of a `multi_worker` run exchange, by accumulation.

Starts two `python -m train.pretrain --strategy=multi_worker` workers on
127.0.0.1 (TF_CONFIG), with the same flags but --gradient_accumulation_steps,
and counts the bytes the loopback interface carried while they ran
(/proc/net/dev, so run it on a quiet machine: every process's loopback
traffic counts). The gradients' all-reduces dominate; the ratio of a
configuration's bytes to the first one's shows how often the gradients
cross.

  python -m benchmarks.loopback_bytes --accumulation=1,4 --updates=8
  python -m benchmarks.loopback_bytes --checkout=/path/to/older/tf_lamb

--checkout runs another checkout's train.pretrain (an older commit, for a
before/after comparison); each worker makes the default corpus's examples
itself.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def loopback_bytes():
    """Bytes received on `lo` since boot (what it sends, it receives)."""
    with open("/proc/net/dev") as table:
        for line in table:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_workers(checkout, flags, directory, timeout):
    """Two workers of one run; returns (loopback bytes, seconds)."""
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    processes, logs = [], []
    before, started = loopback_bytes(), time.time()
    try:
        for index in range(2):
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                       PYTHONPATH=checkout, TF_CONFIG=json.dumps({
                           "cluster": cluster,
                           "task": {"type": "worker", "index": index}}))
            log = open(os.path.join(directory, f"worker{index}.log"), "w")
            logs.append(log)
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "train.pretrain",
                 "--strategy=multi_worker",
                 f"--model_dir={os.path.join(directory, 'run')}"] + flags,
                cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True))
        deadline = time.time() + timeout
        while time.time() < deadline and any(
                p.poll() is None for p in processes):
            time.sleep(0.5)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in logs:
            log.close()
    codes = [p.returncode for p in processes]
    if codes != [0, 0]:
        with open(os.path.join(directory, "worker0.log")) as log:
            tail = log.read()[-3000:]
        raise RuntimeError(f"workers exited {codes}:\n{tail}")
    return loopback_bytes() - before, time.time() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accumulation", default="1,4",
                        help="comma-separated --gradient_accumulation_steps")
    parser.add_argument("--updates", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32,
                        help="global batch of one update")
    parser.add_argument("--checkout", default=ROOT,
                        help="the tf_lamb checkout whose train.pretrain runs")
    parser.add_argument("--timeout", type=int, default=900)
    args = parser.parse_args(argv)
    rows = []
    for steps in [int(x) for x in args.accumulation.split(",")]:
        directory = tempfile.mkdtemp(prefix="loopback_")
        try:
            flags = [f"--num_train_steps={args.updates}",
                     f"--train_batch_size={args.batch}",
                     f"--gradient_accumulation_steps={steps}",
                     f"--log_steps={args.updates}",
                     f"--save_checkpoints_steps={args.updates}",
                     "--heldout_share=0", "--export_dir=none",
                     "--max_seq_length=32", "--max_predictions_per_seq=5",
                     "--dupe_factor=1"]
            sent, seconds = run_workers(os.path.abspath(args.checkout),
                                        flags, directory, args.timeout)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        rows.append({"accumulation": steps, "updates": args.updates,
                     "loopback_bytes": sent, "seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    first = rows[0]["loopback_bytes"]
    for row in rows:
        print(f"accumulation {row['accumulation']}: "
              f"{row['loopback_bytes'] / 1e6:.1f} MB over lo for "
              f"{row['updates']} updates "
              f"({row['loopback_bytes'] / first:.2f}x the first)")
    return rows


if __name__ == "__main__":
    main()
