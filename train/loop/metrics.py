"""Means from sums: the one place where the pretraining metrics are made.

Training and evaluation both add up, per replica and batch, the sums of
`bert.pretraining_losses` (weighted masked-LM loss, masked-LM weight,
correct predictions; next-sentence loss, count, correct) across replicas
and batches, and divide once at the end, so the result does not depend on
how the examples were split between replicas, micro-batches or calls.
"""

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

# The sums, in this order wherever they travel as one vector.
SUM_NAMES = ("mlm_loss_sum", "mlm_weight", "mlm_correct", "nsp_loss_sum",
             "nsp_count", "nsp_correct")


def mean(total, count):
    """total / count; 0 for a mean over nothing (no weight), as
    tf.metrics.mean gives."""
    total, count = float(total), float(count)
    return total / count if count > 0 else 0.0


def means_from_sums(sums):
    """{mlm_loss, mlm_accuracy, nsp_loss, nsp_accuracy, loss} from a dict
    holding SUM_NAMES (Python or NumPy numbers)."""
    mlm_loss = mean(sums["mlm_loss_sum"], sums["mlm_weight"])
    nsp_loss = mean(sums["nsp_loss_sum"], sums["nsp_count"])
    return {
        "mlm_loss": mlm_loss,
        "mlm_accuracy": mean(sums["mlm_correct"], sums["mlm_weight"]),
        "nsp_loss": nsp_loss,
        "nsp_accuracy": mean(sums["nsp_correct"], sums["nsp_count"]),
        "loss": mlm_loss + nsp_loss,
    }


def training_objective(sums, replicas):
    """The differentiable loss of one replica's batch: its mean masked-LM
    loss plus its mean next-sentence loss, divided by the replicas (LAMB
    sums the replicas' gradients, so each holds 1/replicas of the mean).
    The 1e-5 keeps a batch without masked tokens finite; it is part of the
    objective, not of the reported means."""
    mlm = sums["mlm_loss_sum"] / (sums["mlm_weight"] + 1e-5)
    nsp = sums["nsp_loss_sum"] / sums["nsp_count"]
    return (mlm + nsp) / replicas


def scalar_summary(name, value):
    """tf.summary.scalar without the tensorboard package: the same record
    (a float32 tensor tagged for TensorBoard's scalars plugin)."""
    metadata = summary_pb2.SummaryMetadata()
    metadata.plugin_data.plugin_name = "scalars"
    tf.summary.write(name, tf.constant(value, tf.float32),
                     metadata=metadata.SerializeToString())
