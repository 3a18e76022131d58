"""A float64 NumPy forward pass of BERT with its pretraining heads.

Written from the architecture of Google's original BERT (Devlin et al.,
2019, and the computation in its modeling.py / run_pretraining.py), not from
train.model.bert: weights are held in a dict under Google's checkpoint names,
so the same dict can be written as a TF1 checkpoint and compared with any
model that claims to compute the same function.
"""

import math

import numpy as np

LAYER_NORM_EPSILON = 1e-12
MASKED_SCORE = -10000.0


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi)
                                    * (x + 0.044715 * x ** 3)))


_erf = np.vectorize(math.erf)


def gelu_erf(x):
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def layer_norm(x, gamma, beta):
    mean = x.mean(axis=-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + LAYER_NORM_EPSILON) * gamma + beta


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def weight_shapes(vocab_size, hidden, layers, intermediate, positions,
                  type_vocab_size=2):
    """{Google checkpoint name: shape} of a BERT pretraining model."""
    shapes = {
        "bert/embeddings/word_embeddings": (vocab_size, hidden),
        "bert/embeddings/token_type_embeddings": (type_vocab_size, hidden),
        "bert/embeddings/position_embeddings": (positions, hidden),
        "bert/embeddings/LayerNorm/gamma": (hidden,),
        "bert/embeddings/LayerNorm/beta": (hidden,),
        "bert/pooler/dense/kernel": (hidden, hidden),
        "bert/pooler/dense/bias": (hidden,),
        "cls/predictions/transform/dense/kernel": (hidden, hidden),
        "cls/predictions/transform/dense/bias": (hidden,),
        "cls/predictions/transform/LayerNorm/gamma": (hidden,),
        "cls/predictions/transform/LayerNorm/beta": (hidden,),
        "cls/predictions/output_bias": (vocab_size,),
        "cls/seq_relationship/output_weights": (2, hidden),
        "cls/seq_relationship/output_bias": (2,),
    }
    for i in range(layers):
        p = f"bert/encoder/layer_{i}/"
        for part in ("attention/self/query", "attention/self/key",
                     "attention/self/value", "attention/output/dense"):
            shapes[p + part + "/kernel"] = (hidden, hidden)
            shapes[p + part + "/bias"] = (hidden,)
        shapes[p + "intermediate/dense/kernel"] = (hidden, intermediate)
        shapes[p + "intermediate/dense/bias"] = (intermediate,)
        shapes[p + "output/dense/kernel"] = (intermediate, hidden)
        shapes[p + "output/dense/bias"] = (hidden,)
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[p + norm + "/gamma"] = (hidden,)
            shapes[p + norm + "/beta"] = (hidden,)
    return shapes


def random_weights(shapes, rng, scale=0.3):
    """Random weights, large enough that activations reach gelu's curved
    region (so tanh and erf gelu give measurably different outputs)."""
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("/gamma"):
            value = 1.0 + 0.2 * rng.standard_normal(shape)
        else:
            value = scale * rng.standard_normal(shape)
        weights[name] = value
    return weights


def pretraining_logits(weights, num_heads, input_ids, input_mask,
                       segment_ids, masked_lm_positions, gelu=gelu_tanh):
    """(mlm_logits [batch, predictions, vocab], nsp_logits [batch, 2])."""
    w = {name: np.asarray(value, np.float64) for name, value in
         weights.items()}
    input_ids = np.asarray(input_ids)
    batch, length = input_ids.shape
    hidden = w["bert/embeddings/word_embeddings"].shape[1]
    head = hidden // num_heads

    x = (w["bert/embeddings/word_embeddings"][input_ids]
         + w["bert/embeddings/token_type_embeddings"][np.asarray(segment_ids)]
         + w["bert/embeddings/position_embeddings"][:length][None])
    x = layer_norm(x, w["bert/embeddings/LayerNorm/gamma"],
                   w["bert/embeddings/LayerNorm/beta"])
    # Keys at padded positions get -10000 added to their scores.
    key_bias = (1.0 - np.asarray(input_mask, np.float64))[:, None, None, :] \
        * MASKED_SCORE

    def dense(inputs, prefix):
        return inputs @ w[prefix + "/kernel"] + w[prefix + "/bias"]

    def split(t):  # [batch, length, hidden] -> [batch, heads, length, head]
        return t.reshape(batch, length, num_heads, head).transpose(0, 2, 1, 3)

    i = 0
    while f"bert/encoder/layer_{i}/attention/self/query/kernel" in w:
        p = f"bert/encoder/layer_{i}/"
        q = split(dense(x, p + "attention/self/query"))
        k = split(dense(x, p + "attention/self/key"))
        v = split(dense(x, p + "attention/self/value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head) + key_bias
        context = (softmax(scores) @ v).transpose(0, 2, 1, 3).reshape(
            batch, length, hidden)
        attended = layer_norm(
            dense(context, p + "attention/output/dense") + x,
            w[p + "attention/output/LayerNorm/gamma"],
            w[p + "attention/output/LayerNorm/beta"])
        feed_forward = dense(gelu(dense(attended, p + "intermediate/dense")),
                             p + "output/dense")
        x = layer_norm(feed_forward + attended,
                       w[p + "output/LayerNorm/gamma"],
                       w[p + "output/LayerNorm/beta"])
        i += 1

    pooled = np.tanh(dense(x[:, 0], "bert/pooler/dense"))
    nsp_logits = (pooled @ w["cls/seq_relationship/output_weights"].T
                  + w["cls/seq_relationship/output_bias"])

    positions = np.asarray(masked_lm_positions)
    picked = x[np.arange(batch)[:, None], positions]
    transformed = layer_norm(
        gelu(dense(picked, "cls/predictions/transform/dense")),
        w["cls/predictions/transform/LayerNorm/gamma"],
        w["cls/predictions/transform/LayerNorm/beta"])
    mlm_logits = (transformed @ w["bert/embeddings/word_embeddings"].T
                  + w["cls/predictions/output_bias"])
    return mlm_logits, nsp_logits
