"""The encoder as a TF Hub-style SavedModel, and a Keras 3 layer loading it.

The SavedModel follows TF Hub's "Common SavedModel APIs for Text"
(Transformer encoders) and the Reusable SavedModel API:

    obj = tf.saved_model.load(path)
    outputs = obj({"input_word_ids": ids, "input_mask": mask,
                   "input_type_ids": types}, training=False)
    outputs["pooled_output"]    # [batch, hidden]
    outputs["sequence_output"]  # [batch, seq, hidden]
    outputs["encoder_outputs"]  # one [batch, seq, hidden] per layer
    outputs["default"]          # the pooled output

All inputs are int32 [batch, seq]; all outputs float32.  `training=True`
applies the config's dropout (a new mask each call).  The object also has
`variables`, `trainable_variables` (named as in Google's checkpoints, e.g.
`bert/encoder/layer_0/attention/self/query/kernel`), `regularization_losses`
(empty), `vocab_file` (an asset), `bert_config_file` (an asset),
`do_lower_case` (a bool tf.Variable) and a `serving_default` signature for
TF Serving that takes the three inputs by name and returns
pooled_output, sequence_output and default.

Keras 3's own `keras.layers.TFSMLayer(path, trainable=True)` tracks the
restored variables under their TensorFlow names (`...:0`), which Keras
optimizers reject as slot names; `EncoderLayer(path)` below tracks the same
variables under names Keras accepts, so `model.fit` fine-tunes them.
"""

import types

import keras
import numpy as np
import tensorflow as tf

INPUT_NAMES = ("input_word_ids", "input_mask", "input_type_ids")
_INT32_LIMIT = 2 ** 31 - 1


def _input_spec():
    return {name: tf.TensorSpec([None, None], tf.int32, name=name)
            for name in INPUT_NAMES}


class HubEncoder(tf.Module):
    """The exported object: `model.encoder` (a built, float32
    bert.BertPretrainer's) behind TF Hub's text-encoder API.

    `google_names` is init_checkpoints.google_variable_names(model): the
    exported variables take those names.  They are new tf.Variables
    holding the encoder's values; the encoder computes with them through
    `stateless_call`, so the SavedModel holds nothing but them.
    """

    # Saved as plain attributes (tf.Module computes these as properties,
    # which a SavedModel does not keep).
    variables = None
    trainable_variables = None

    def __init__(self, model, google_names, vocab_file, bert_config_file,
                 do_lower_case):
        super().__init__(name="bert_encoder")
        # Held untracked: the Keras layer's own variables must not be saved.
        self._model = types.SimpleNamespace(encoder=model.encoder)
        name_of = {id(v): name for name, (v, _) in google_names.items()}
        self.variables = [
            tf.Variable(np.asarray(v.numpy(), np.float32),
                        name=name_of[id(v)], trainable=True)
            for v in model.encoder.trainable_variables]
        self.trainable_variables = list(self.variables)
        self.regularization_losses = []
        if vocab_file:
            self.vocab_file = tf.saved_model.Asset(vocab_file)
        self.bert_config_file = tf.saved_model.Asset(bert_config_file)
        self.do_lower_case = tf.Variable(bool(do_lower_case),
                                         trainable=False,
                                         name="do_lower_case")
        for training in (False, True):
            self.__call__.get_concrete_function(_input_spec(),
                                                training=training)

    @tf.function
    def __call__(self, inputs, training=False):
        ids, mask, types = (tf.cast(inputs[name], tf.int32)
                            for name in INPUT_NAMES)
        # Stateless dropout, drawn afresh per call when training.
        seed = tf.random.uniform([2], maxval=_INT32_LIMIT,
                                 dtype=tf.int32) if training else None
        (sequence, pooled, layers), _ = self._model.encoder.stateless_call(
            list(self.variables), [], ids, mask, types, seed=seed,
            all_layers=True)
        pooled = tf.cast(pooled, tf.float32)
        return {"pooled_output": pooled,
                "sequence_output": tf.cast(sequence, tf.float32),
                "encoder_outputs": [tf.cast(x, tf.float32) for x in layers],
                "default": pooled}

    @tf.function(input_signature=[
        tf.TensorSpec([None, None], tf.int32, name=name)
        for name in INPUT_NAMES])
    def serve(self, input_word_ids, input_mask, input_type_ids):
        outputs = self({"input_word_ids": input_word_ids,
                        "input_mask": input_mask,
                        "input_type_ids": input_type_ids}, training=False)
        return {key: outputs[key]
                for key in ("pooled_output", "sequence_output", "default")}


def save_hub_object(root, path):
    tf.saved_model.save(root, path,
                        signatures={"serving_default": root.serve})


def _keras_name(variable):
    """A Keras variable name for a restored tf.Variable: no `:0` (Keras
    optimizers build slot scopes from it) and no `/` (Keras forbids it)."""
    return variable.name.split(":")[0].replace("/", "_")


class EncoderLayer(keras.layers.Layer):
    """Keras 3 layer calling an encoder SavedModel written by train.export.

    Called with the dict of int32 `input_word_ids`, `input_mask` and
    `input_type_ids`, it returns the SavedModel's dict of outputs; with
    `trainable=True` (the default) `model.fit` fine-tunes every encoder
    variable, with the encoder's dropout on in training.

        encoder = load_encoder_layer("runs/pretrain/export")
        pooled = encoder(inputs)["pooled_output"]
    """

    def __init__(self, path, trainable=True, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        self.filepath = path
        self._hub_object = tf.saved_model.load(path)
        # The Keras variables wrap the restored ones (no copy): what the
        # optimizer assigns is what the SavedModel's functions read.
        for variable in self._hub_object.variables:
            self._track_variable(keras.Variable(
                initializer=variable, trainable=variable.trainable,
                dtype=variable.dtype, shape=variable.shape,
                name=_keras_name(variable)))
        self.built = True

    def call(self, inputs, training=False):
        inputs = {name: inputs[name] for name in INPUT_NAMES}
        return self._hub_object(inputs, training=bool(training))

    def compute_output_spec(self, inputs, training=False):
        batch, length = inputs["input_word_ids"].shape
        hidden = int(self._hub_object.variables[0].shape[-1])
        layers = sum(1 for v in self._hub_object.variables
                     if v.name.endswith("output/LayerNorm/gamma:0")
                     and "attention" not in v.name)
        sequence = keras.KerasTensor((batch, length, hidden), "float32")
        pooled = keras.KerasTensor((batch, hidden), "float32")
        return {"pooled_output": pooled, "sequence_output": sequence,
                "encoder_outputs": [keras.KerasTensor(
                    (batch, length, hidden), "float32")
                    for _ in range(layers)],
                "default": pooled}

    def get_config(self):
        config = super().get_config()
        config["path"] = self.filepath
        return config


def load_encoder_layer(path, trainable=True, **kwargs):
    """The Keras 3 layer for the encoder SavedModel at `path`."""
    return EncoderLayer(path, trainable=trainable, **kwargs)
