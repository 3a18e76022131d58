"""Google BERT's checkpoint format, written independently of
train.interop.init_checkpoints: the names Google uses for our model's
variables, and a TF1 name-based checkpoint as Google's code saves one."""

import numpy as np
import tensorflow as tf


def google_name(path):
    """Google's checkpoint name for a model variable path (independent of
    train.interop.init_checkpoints), and whether Google stores it
    transposed."""
    if path == "cls/seq_relationship/kernel":
        return "cls/seq_relationship/output_weights", True
    if path == "cls/seq_relationship/bias":
        return "cls/seq_relationship/output_bias", False
    if path.endswith("_embeddings/embeddings"):
        return path[:-len("/embeddings")], False
    return path, False


def write_google_checkpoint(prefix, values):
    """A TF1 name-based checkpoint, as Google's BERT code writes one."""
    with tf.Graph().as_default():
        for name, value in values.items():
            value = np.asarray(value)
            tf.compat.v1.get_variable(
                name, shape=value.shape, dtype=tf.as_dtype(value.dtype),
                initializer=tf.compat.v1.constant_initializer(value))
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            return tf.compat.v1.train.Saver().save(session, prefix)


def write_model_as_google_checkpoint(model, prefix, extras=True):
    """Saves `model`'s weights under Google's names (plus global_step and
    Adam slots, as a released checkpoint has, with `extras`)."""
    values = {}
    for variable in model.weights:
        name, transposed = google_name(variable.path)
        value = variable.numpy().astype(np.float32)
        values[name] = value.T if transposed else value
    if extras:
        values["global_step"] = np.int64(1000)
        for name in list(values):
            if name != "global_step":
                values[name + "/adam_m"] = np.zeros_like(values[name])
    return write_google_checkpoint(prefix, values)
