"""A BERT encoder with masked-LM and next-sentence heads, in Keras 3 layers.

The model computes what Google's original `modeling.py` computes (Devlin et
al., 2019): word, position and token-type embeddings summed, LayerNorm
(epsilon 1e-12) and dropout; post-LayerNorm transformer layers whose
attention adds -10000 to the scores of padded keys; a tanh pooler over the
first token; a masked-LM head (dense + activation + LayerNorm, output tied to
the word embeddings, plus a bias) and a two-way next-sentence classifier.
`hidden_act: "gelu"` in a `bert_config.json` is Google's gelu, the tanh
approximation; the exact erf form is `"gelu_exact"`.  Every weight starts
from a normal distribution truncated at two standard deviations (0.02).

Variables are named as in the original checkpoints, so that regular
expressions written for BERT keep working, e.g.
`bert/encoder/layer_0/attention/output/LayerNorm/gamma` or
`cls/predictions/output_bias`.  (Three differ from Google's names: the
embedding tables end in `/embeddings`, and the next-sentence classifier is a
Dense layer, `cls/seq_relationship/{kernel,bias}`, whose kernel is the
transpose of Google's `output_weights`; `train.interop.init_checkpoints`
maps them.)

Dropout is stateless: the caller passes an integer seed tensor of shape [2]
(for instance derived from the step number and the replica), from which
every dropout layer folds in its own index.  The same seed gives the same
masks, so a resumed run repeats an uninterrupted one exactly, and replicas
given different seeds draw different masks.
"""

import copy
import dataclasses
import json
import math

import keras
import tensorflow as tf

from train.model import hf_config

# (layers, hidden size, attention heads); the intermediate size is 4x hidden.
# tiny..medium are the compact models of Turc et al. (2019).
MODEL_SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


@dataclasses.dataclass
class BertConfig:
    """The hyper-parameters of a BERT model, as in Google's bert_config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02

    @classmethod
    def for_size(cls, size, vocab_size, **overrides):
        if size not in MODEL_SIZES:
            raise ValueError(f"Unknown model size {size!r}; expected one of "
                             f"{list(MODEL_SIZES)}")
        layers, hidden, heads = MODEL_SIZES[size]
        return cls(vocab_size=vocab_size, hidden_size=hidden,
                   num_hidden_layers=layers, num_attention_heads=heads,
                   intermediate_size=4 * hidden, **overrides).validated()

    @classmethod
    def from_dict(cls, values, source="the BERT config"):
        """From Google's bert_config.json keys, or from transformers'
        config.json of a BERT (`model_type: bert`, see
        train/model/hf_config.py)."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} must hold a JSON object")
        if "model_type" in values:
            values = hf_config.bert_config_values(values, source)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{source} has unknown keys {unknown}; "
                             f"expected keys among {sorted(known)}")
        return cls(**values).validated(source)

    @classmethod
    def from_json_file(cls, path):
        try:
            with tf.io.gfile.GFile(path) as f:
                values = json.load(f)
        except (OSError, tf.errors.OpError) as error:
            raise ValueError(f"Cannot read BERT config file {path}: "
                             f"{error}") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"BERT config file {path} is not valid JSON: "
                             f"{error}") from None
        return cls.from_dict(values, source=f"BERT config file {path}")

    def validated(self, source="the BERT config"):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                     "num_attention_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or (
                    value < 1):
                raise ValueError(f"{source}: {name} must be a positive "
                                 f"integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"{source}: hidden_size {self.hidden_size} is not a multiple "
                f"of num_attention_heads {self.num_attention_heads}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(f"{source}: {name} must be in [0, 1), got "
                                 f"{value!r}")
        if not self.initializer_range > 0:
            raise ValueError(f"{source}: initializer_range must be > 0")
        activation(self.hidden_act)  # raises for an unknown name
        return self

    def to_dict(self):
        return dataclasses.asdict(self)

    def to_json_string(self):
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def replace(self, **changes):
        return dataclasses.replace(copy.copy(self), **changes)


def gelu_tanh(x):
    """Google BERT's gelu: 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))."""
    x = keras.ops.convert_to_tensor(x)
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)
    return 0.5 * x * (1.0 + keras.ops.tanh(inner))


def gelu_exact(x):
    """The exact gelu, x * Phi(x) with the normal CDF written with erf."""
    x = keras.ops.convert_to_tensor(x)
    return 0.5 * x * (1.0 + keras.ops.erf(x * (1.0 / math.sqrt(2.0))))


# The names a bert_config.json may give as hidden_act.  "gelu" is what
# Google's modeling.py computes (the tanh approximation), so a model loaded
# from a Google checkpoint reproduces its outputs; "gelu_new" is the same
# function under HuggingFace's name.
ACTIVATIONS = {
    "gelu": gelu_tanh,
    "gelu_new": gelu_tanh,
    "gelu_exact": gelu_exact,
    "relu": keras.activations.relu,
    "tanh": keras.activations.tanh,
    "swish": keras.activations.silu,
    "linear": keras.activations.linear,
}


def activation(name):
    """The function for a hidden_act name (see ACTIVATIONS)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"Unknown hidden_act {name!r}; expected one of "
                         f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def initializer(config):
    return keras.initializers.TruncatedNormal(stddev=config.initializer_range)


def dropout(x, rate, seed, index):
    """Stateless dropout; `seed` None or `rate` 0 means no dropout."""
    if seed is None or not rate:
        return x
    layer_seed = tf.random.experimental.stateless_fold_in(seed, index)
    return tf.nn.experimental.stateless_dropout(x, rate=rate, seed=layer_seed)


def _dense(config, units, name, act=None):
    return keras.layers.Dense(units, activation=act,
                              kernel_initializer=initializer(config),
                              name=name)


def _layer_norm(name="LayerNorm"):
    return keras.layers.LayerNormalization(axis=-1, epsilon=1e-12, name=name)


class Embeddings(keras.layers.Layer):
    """Word + position + token type embeddings, LayerNorm, dropout."""

    def __init__(self, config, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.word_embeddings = keras.layers.Embedding(
            config.vocab_size, config.hidden_size,
            embeddings_initializer=initializer(config),
            name="word_embeddings")
        self.token_type_embeddings = keras.layers.Embedding(
            config.type_vocab_size, config.hidden_size,
            embeddings_initializer=initializer(config),
            name="token_type_embeddings")
        self.layer_norm = _layer_norm()

    def build(self, input_shape):
        self.word_embeddings.build(input_shape)
        self.token_type_embeddings.build(input_shape)
        self.position_embeddings = self.add_weight(
            name="position_embeddings",
            shape=(self.config.max_position_embeddings,
                   self.config.hidden_size),
            initializer=initializer(self.config))
        self.layer_norm.build(tuple(input_shape) + (self.config.hidden_size,))

    def call(self, input_ids, segment_ids, seed=None):
        length = tf.shape(input_ids)[1]
        x = self.word_embeddings(input_ids)
        x = x + self.token_type_embeddings(segment_ids)
        positions = tf.cast(self.position_embeddings[:length], x.dtype)
        x = x + positions[tf.newaxis]
        x = self.layer_norm(x)
        return dropout(x, self.config.hidden_dropout_prob, seed, 0)


class TransformerLayer(keras.layers.Layer):
    """Multi-head self-attention and a feed-forward block, post-LayerNorm."""

    def __init__(self, config, index, **kwargs):
        super().__init__(**kwargs)
        self.config = config
        self.index = index
        h = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = h // self.num_heads
        self.query = _dense(config, h, "query")
        self.key = _dense(config, h, "key")
        self.value = _dense(config, h, "value")
        self.attention_output = _dense(config, h, "dense")
        self.attention_layer_norm = _layer_norm()
        self.intermediate = _dense(config, config.intermediate_size, "dense",
                                   activation(config.hidden_act))
        self.output_dense = _dense(config, h, "dense")
        self.output_layer_norm = _layer_norm()

    def build(self, input_shape):
        # Name scopes give BERT's paths: attention/self/query,
        # attention/output/{dense,LayerNorm}, intermediate/dense and
        # output/{dense,LayerNorm}.
        h = self.config.hidden_size
        shape = tuple(input_shape)
        with keras.name_scope("attention"):
            with keras.name_scope("self"):
                for layer in (self.query, self.key, self.value):
                    layer.build(shape)
            with keras.name_scope("output"):
                self.attention_output.build(shape)
                self.attention_layer_norm.build(shape)
        with keras.name_scope("intermediate"):
            self.intermediate.build(shape)
        with keras.name_scope("output"):
            self.output_dense.build(shape[:-1] + (
                self.config.intermediate_size,))
            self.output_layer_norm.build(shape[:-1] + (h,))

    def _heads(self, x, batch, length):
        x = tf.reshape(x, [batch, length, self.num_heads, self.head_size])
        return tf.transpose(x, [0, 2, 1, 3])

    def call(self, x, attention_bias, seed=None):
        batch, length = tf.shape(x)[0], tf.shape(x)[1]
        q = self._heads(self.query(x), batch, length)
        k = self._heads(self.key(x), batch, length)
        v = self._heads(self.value(x), batch, length)
        scores = tf.matmul(q, k, transpose_b=True)
        # Softmax in float32 (Keras casts `attention_bias` to the compute
        # dtype on the way in).
        scores = tf.cast(scores, tf.float32) * (1.0 / math.sqrt(
            self.head_size)) + tf.cast(attention_bias, tf.float32)
        probs = tf.nn.softmax(scores, axis=-1)
        probs = dropout(probs, self.config.attention_probs_dropout_prob,
                        seed, 3 * self.index + 1)
        context = tf.matmul(tf.cast(probs, v.dtype), v)
        context = tf.reshape(tf.transpose(context, [0, 2, 1, 3]),
                             [batch, length, self.config.hidden_size])
        attended = self.attention_output(context)
        attended = dropout(attended, self.config.hidden_dropout_prob, seed,
                           3 * self.index + 2)
        x = self.attention_layer_norm(attended + x)
        y = self.output_dense(self.intermediate(x))
        y = dropout(y, self.config.hidden_dropout_prob, seed,
                    3 * self.index + 3)
        return self.output_layer_norm(y + x)


class BertEncoder(keras.layers.Layer):
    """input_ids, input_mask, segment_ids -> sequence and pooled outputs."""

    def __init__(self, config, **kwargs):
        kwargs.setdefault("name", "bert")
        super().__init__(**kwargs)
        self.config = config
        self.embeddings = Embeddings(config, name="embeddings")
        # One attribute per layer: TensorFlow's checkpoints do not follow
        # Keras 3's tracked lists, so layers held in a list attribute would
        # be missing from every tf.train.Checkpoint of the model.
        for i in range(config.num_hidden_layers):
            setattr(self, f"layer_{i}",
                    TransformerLayer(config, i, name=f"layer_{i}"))
        self.pooler = _dense(config, config.hidden_size, "dense", "tanh")

    @property
    def transformer_layers(self):
        return [getattr(self, f"layer_{i}")
                for i in range(self.config.num_hidden_layers)]

    def build(self, input_shape):
        shape = tuple(input_shape)
        self.embeddings.build(shape)
        with keras.name_scope("encoder"):
            for layer in self.transformer_layers:
                layer.build(shape + (self.config.hidden_size,))
        with keras.name_scope("pooler"):
            self.pooler.build((shape[0], self.config.hidden_size))

    def call(self, input_ids, input_mask, segment_ids, seed=None,
             all_layers=False):
        """(sequence output, pooled output), plus the list of every
        transformer layer's output (the last is the sequence output) with
        `all_layers`."""
        x = self.embeddings(input_ids, segment_ids, seed=seed)
        mask = tf.cast(input_mask, tf.float32)[:, tf.newaxis, tf.newaxis, :]
        attention_bias = (1.0 - mask) * -10000.0
        layer_outputs = []
        for layer in self.transformer_layers:
            x = layer(x, attention_bias, seed=seed)
            layer_outputs.append(x)
        pooled = self.pooler(x[:, 0])
        if all_layers:
            return x, pooled, layer_outputs
        return x, pooled


class MaskedLMHead(keras.layers.Layer):
    """Hidden states at the masked positions -> logits over the vocabulary.

    The output projection is the transposed word-embedding table.
    """

    def __init__(self, config, word_embeddings, **kwargs):
        kwargs.setdefault("name", "predictions")
        super().__init__(**kwargs)
        self.config = config
        self.word_embeddings = word_embeddings
        self.transform = _dense(config, config.hidden_size, "dense",
                                activation(config.hidden_act))
        self.layer_norm = _layer_norm()

    def build(self, input_shape):
        h = self.config.hidden_size
        with keras.name_scope("transform"):
            self.transform.build((None, h))
            self.layer_norm.build((None, h))
        self.output_bias = self.add_weight(
            name="output_bias", shape=(self.config.vocab_size,),
            initializer="zeros")

    def call(self, sequence_output, positions):
        x = tf.gather(sequence_output, tf.cast(positions, tf.int32),
                      batch_dims=1)
        x = self.layer_norm(self.transform(x))
        table = tf.cast(self.word_embeddings.embeddings, x.dtype)
        logits = tf.matmul(x, table, transpose_b=True)
        return tf.cast(logits, tf.float32) + self.output_bias


class BertPretrainer(keras.Model):
    """BERT encoder plus masked-LM and next-sentence-prediction heads.

    Call with a dict holding `input_ids`, `input_mask`, `segment_ids` and
    `masked_lm_positions`; returns float32 `(mlm_logits, nsp_logits)` of
    shapes [batch, predictions, vocab] and [batch, 2].
    """

    def __init__(self, config, **kwargs):
        kwargs.setdefault("name", "pretrainer")
        super().__init__(**kwargs)
        self.config = config
        self.encoder = BertEncoder(config, name="bert")
        self.mlm = MaskedLMHead(config,
                                self.encoder.embeddings.word_embeddings,
                                name="predictions")
        self.nsp = _dense(config, 2, "seq_relationship")

    def build_for(self, seq_length, predictions):
        """Creates every variable (paths bert/..., cls/...)."""
        self.encoder.build((None, seq_length))
        self.encoder.built = True
        with keras.name_scope("cls"):
            self.mlm.build(None)
            self.nsp.build((None, self.config.hidden_size))
        self.built = True

    def call(self, features, training=False, seed=None):
        seed = seed if training else None
        sequence_output, pooled = self.encoder(
            features["input_ids"], features["input_mask"],
            features["segment_ids"], seed=seed)
        mlm_logits = self.mlm(sequence_output,
                              features["masked_lm_positions"])
        nsp_logits = tf.cast(self.nsp(pooled), tf.float32)
        return mlm_logits, nsp_logits


def pretraining_losses(features, mlm_logits, nsp_logits, nsp_weights=None):
    """Per-batch sums for the losses and accuracies (metrics.SUM_NAMES).

    Returns a dict of float32 scalars: mlm_loss_sum (over masked tokens,
    weighted by masked_lm_weights), mlm_weight, mlm_correct, nsp_loss_sum,
    nsp_count, nsp_correct.  `nsp_weights` ([batch], default all 1) weighs
    each example's next-sentence terms (evaluation gives padding examples
    0).  The means are taken by `train.loop.metrics`.
    """
    ids = tf.cast(features["masked_lm_ids"], tf.int32)
    weights = tf.cast(features["masked_lm_weights"], tf.float32)
    per_token = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=ids, logits=mlm_logits)
    predicted = tf.argmax(mlm_logits, axis=-1, output_type=tf.int32)
    labels = tf.reshape(tf.cast(features["next_sentence_labels"], tf.int32),
                        [-1])
    nsp_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=labels, logits=nsp_logits)
    nsp_predicted = tf.argmax(nsp_logits, axis=-1, output_type=tf.int32)
    nsp_correct = tf.cast(tf.equal(nsp_predicted, labels), tf.float32)
    if nsp_weights is None:
        nsp_sums = (tf.reduce_sum(nsp_loss),
                    tf.cast(tf.size(labels), tf.float32),
                    tf.reduce_sum(nsp_correct))
    else:
        nsp_weights = tf.reshape(tf.cast(nsp_weights, tf.float32), [-1])
        nsp_sums = (tf.reduce_sum(nsp_loss * nsp_weights),
                    tf.reduce_sum(nsp_weights),
                    tf.reduce_sum(nsp_correct * nsp_weights))
    return {
        "mlm_loss_sum": tf.reduce_sum(per_token * weights),
        "mlm_weight": tf.reduce_sum(weights),
        "mlm_correct": tf.reduce_sum(
            tf.cast(tf.equal(predicted, ids), tf.float32) * weights),
        "nsp_loss_sum": nsp_sums[0],
        "nsp_count": nsp_sums[1],
        "nsp_correct": nsp_sums[2],
    }
