"""The trained encoder as a TensorFlow SavedModel."""

import tensorflow as tf


def export_encoder(encoder, path):
    """Writes a SavedModel of `encoder` (a modeling.BertEncoder) to `path`.

    Its serving_default signature takes int32 input_ids, input_mask and
    segment_ids of shape [batch, length] and returns float32
    sequence_output [batch, length, hidden] and pooled_output
    [batch, hidden].
    """
    module = tf.Module(name="bert_encoder")
    module.encoder = encoder

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.int32, name="input_ids"),
        tf.TensorSpec([None, None], tf.int32, name="input_mask"),
        tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
    def serve(input_ids, input_mask, segment_ids):
        sequence, pooled = encoder(input_ids, input_mask, segment_ids)
        return {"sequence_output": tf.cast(sequence, tf.float32),
                "pooled_output": tf.cast(pooled, tf.float32)}

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})
