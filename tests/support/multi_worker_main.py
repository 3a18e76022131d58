"""One worker of the 2-process MultiWorkerMirroredStrategy test.

Usage: TF_CONFIG=... python -m tests.support.multi_worker_main OUT.npz
(from the repository root)
Trains `distributed_training.train_custom_loop` and saves the final weights.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from tests.support import distributed_training  # noqa: E402


def main(out):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
    x, y = distributed_training.data(steps=8)
    weights, _ = distributed_training.train_custom_loop(strategy, x, y)
    np.savez(out, *weights)


if __name__ == "__main__":
    main(sys.argv[1])
