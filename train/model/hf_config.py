"""transformers' config.json of a BERT in the terms of Google's
bert_config.json (`train.model.bert.BertConfig`), both ways: which keys the
two share, the names of the activations, and what of a transformers BERT
this model cannot compute.

The model reads such a config.json as a BERT config (--bert_config_file,
`BertConfig.from_dict`); train/interop/huggingface.py writes one with a
Hugging Face folder and checks the one it reads weights from.
"""

import numpy as np

# transformers' BERT normalises with this epsilon unless config.json says
# otherwise; ours is Google's, fixed.
LAYER_NORM_EPS = 1e-12

# hidden_act: ours (Google's names) -> transformers' ACT2FN names.  Google's
# "gelu" is the tanh approximation, which transformers calls "gelu_new";
# transformers' "gelu" is the exact erf form.
ACTIVATION_NAMES = {
    "gelu": "gelu_new",
    "gelu_new": "gelu_new",
    "gelu_exact": "gelu",
    "relu": "relu",
    "tanh": "tanh",
    "swish": "silu",
    "linear": "linear",
}
# transformers' names -> ours, for reading a config.json.
ACTIVATIONS_FROM_HF = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu_fast": "gelu",
    "gelu": "gelu_exact",
    "relu": "relu",
    "tanh": "tanh",
    "silu": "swish",
    "swish": "swish",
    "linear": "linear",
}
# The sizes transformers' BertConfig and Google's bert_config.json share.
SHARED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers",
               "num_attention_heads", "intermediate_size",
               "hidden_dropout_prob", "attention_probs_dropout_prob",
               "max_position_embeddings", "type_vocab_size",
               "initializer_range")


def config_dict(bert_config, pad_token_id=0):
    """transformers' config.json for a BertConfig."""
    values = {key: getattr(bert_config, key) for key in SHARED_KEYS}
    values.update(
        architectures=["BertForPreTraining"],
        model_type="bert",
        hidden_act=ACTIVATION_NAMES[bert_config.hidden_act],
        layer_norm_eps=LAYER_NORM_EPS,
        pad_token_id=pad_token_id,
        position_embedding_type="absolute",
        classifier_dropout=None,
        use_cache=True,
        torch_dtype="float32",
    )
    return dict(sorted(values.items()))


def bert_config_values(values, source):
    """The keys of a Google bert_config.json from a transformers config.json
    (a dict); ValueError naming what this BERT cannot compute."""
    if values.get("model_type") != "bert":
        raise ValueError(f"{source}: model_type is "
                         f"{values.get('model_type')!r}, not 'bert'")
    missing = [key for key in SHARED_KEYS + ("hidden_act",)
               if key not in values]
    if missing:
        raise ValueError(f"{source} lacks {missing}")
    act = values["hidden_act"]
    if act not in ACTIVATIONS_FROM_HF:
        raise ValueError(f"{source}: hidden_act {act!r} is not one of "
                         f"{sorted(ACTIVATIONS_FROM_HF)}")
    eps = values.get("layer_norm_eps", LAYER_NORM_EPS)
    if not np.isclose(eps, LAYER_NORM_EPS, rtol=1e-3, atol=0):
        raise ValueError(f"{source}: layer_norm_eps {eps} is not BERT's "
                         f"{LAYER_NORM_EPS}, which this model uses")
    position = values.get("position_embedding_type", "absolute")
    if position != "absolute":
        raise ValueError(f"{source}: position_embedding_type {position!r}; "
                         f"only 'absolute' is supported")
    if values.get("is_decoder"):
        raise ValueError(f"{source}: is_decoder is true; only the BERT "
                         f"encoder is supported")
    converted = {key: values[key] for key in SHARED_KEYS}
    converted["hidden_act"] = ACTIVATIONS_FROM_HF[act]
    return converted
