"""Directories in memory for what a process writes but nobody keeps.

A non-chief MultiWorkerMirrored worker makes the run's examples and saves
each checkpoint like the chief (saving takes every worker), but only the
chief's copies are kept, in --model_dir. Its own go into TensorFlow's
in-memory file system (`ram://`): nothing lands in the chief's directory,
and nothing on this host's disk, which may be a small boot disk when the
run's files live in gs://. It keeps one checkpoint, the newest (what a
divergence goes back to), so memory holds at most two while one is saved.
"""

import os
import uuid

import tensorflow as tf


def memory_dir(prefix):
    """A new `ram://` directory name of this process alone (the file
    system is per process; the pid and a random part keep two runs in one
    process apart). Nothing is created until something is written."""
    return f"ram://{prefix}-{os.getpid()}-{uuid.uuid4().hex}/"


def remove(directory):
    """Deletes `directory` and what is in it, if anything was written."""
    try:
        tf.io.gfile.rmtree(directory)
    except tf.errors.NotFoundError:
        pass
