"""Paths as users give them: relative, absolute, or with a scheme that only
`tf.io.gfile` reaches (`gs://`, `s3://` through tensorflow-io, `ram://`).

Python's `os.path` knows none of the schemes: `os.path.abspath("gs://b/x")`
is `<cwd>/gs:/b/x`, and `os.path.isabs` is False for every bucket path.
These helpers apply it to local paths only, and write files in a way that
is right on an object store and on TensorFlow's `ram://` alike.
"""

import os
import posixpath
import uuid

import tensorflow as tf


def has_scheme(path):
    """Whether `path` names a file system by a scheme (`gs://...`)."""
    return "://" in str(path)


def absolute(path):
    """`path` made absolute when it is local; a path with a scheme is
    already whole and is returned as given (normalised)."""
    path = str(path)
    if has_scheme(path):
        scheme, _, rest = path.partition("://")
        return f"{scheme}://{posixpath.normpath(rest) if rest else ''}"
    return os.path.abspath(path)


def same(a, b):
    """Whether two paths name the same file or directory (as written: a
    local symlink is not followed)."""
    return absolute(a) == absolute(b)


def inside(path, directory):
    """Whether `path` is `directory` or lies under it."""
    path, directory = absolute(path), absolute(directory)
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def write_atomically(path, contents):
    """Writes `contents` (str or bytes) to `path`, replacing any file there,
    so that a reader sees the old file or the new one, never a part.

    The contents go to a new name beside `path` in one write, then are
    renamed over it. On Cloud Storage a rename is a copy and a delete, and
    an object appears whole; TensorFlow's `ram://` appends when a file
    that exists is opened for writing, so writing to a fresh name is what
    makes a rewrite right there too.
    """
    path = str(path)
    staging = f"{path}.tmp-{uuid.uuid4().hex}"
    mode = "wb" if isinstance(contents, bytes) else "w"
    with tf.io.gfile.GFile(staging, mode) as fh:
        fh.write(contents)
    try:
        tf.io.gfile.rename(staging, path, overwrite=True)
    except tf.errors.OpError:
        tf.io.gfile.remove(staging)
        raise
    return path


def read_text(path):
    with tf.io.gfile.GFile(str(path)) as fh:
        return fh.read()
