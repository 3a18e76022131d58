"""transformers' BERT layout, written from the module tree of
transformers' `models/bert/modeling_bert.py` (read, not imported: torch is
not installed here), independently of train/interop/huggingface.py.

`BertForPreTraining` is

    bert: BertModel
        embeddings: word_embeddings, position_embeddings,
                    token_type_embeddings (nn.Embedding: weight [num, dim]),
                    LayerNorm (nn.LayerNorm: weight, bias [dim])
        encoder.layer[i]: BertLayer
            attention.self.{query,key,value}   nn.Linear(hidden, hidden)
            attention.output.dense             nn.Linear(hidden, hidden)
            attention.output.LayerNorm
            intermediate.dense                 nn.Linear(hidden, intermediate)
            output.dense                       nn.Linear(intermediate, hidden)
            output.LayerNorm
        pooler.dense                           nn.Linear(hidden, hidden)
    cls: BertPreTrainingHeads
        predictions.transform.dense            nn.Linear(hidden, hidden)
        predictions.transform.LayerNorm
        predictions.decoder                    nn.Linear(hidden, vocab), its
                                               weight tied to word_embeddings
        predictions.bias                       [vocab] (decoder.bias is it)
        seq_relationship                       nn.Linear(hidden, 2)

nn.Linear(in, out) keeps weight [out, in] and bias [out].  save_pretrained
leaves out tied parameters, so the decoder's weight and bias are not in
the file.
"""


def _linear(prefix, n_in, n_out):
    return {prefix + ".weight": (n_out, n_in), prefix + ".bias": (n_out,)}


def _layer_norm(prefix, dim):
    return {prefix + ".weight": (dim,), prefix + ".bias": (dim,)}


def state_dict_shapes(config):
    """{name: shape} of what BertForPreTraining.save_pretrained writes for
    a transformers config dict."""
    hidden = config["hidden_size"]
    vocab = config["vocab_size"]
    inner = config["intermediate_size"]
    shapes = {
        "bert.embeddings.word_embeddings.weight": (vocab, hidden),
        "bert.embeddings.position_embeddings.weight":
            (config["max_position_embeddings"], hidden),
        "bert.embeddings.token_type_embeddings.weight":
            (config["type_vocab_size"], hidden),
    }
    shapes.update(_layer_norm("bert.embeddings.LayerNorm", hidden))
    for i in range(config["num_hidden_layers"]):
        layer = f"bert.encoder.layer.{i}"
        for part in ("query", "key", "value"):
            shapes.update(_linear(f"{layer}.attention.self.{part}", hidden,
                                  hidden))
        shapes.update(_linear(f"{layer}.attention.output.dense", hidden,
                              hidden))
        shapes.update(_layer_norm(f"{layer}.attention.output.LayerNorm",
                                  hidden))
        shapes.update(_linear(f"{layer}.intermediate.dense", hidden, inner))
        shapes.update(_linear(f"{layer}.output.dense", inner, hidden))
        shapes.update(_layer_norm(f"{layer}.output.LayerNorm", hidden))
    shapes.update(_linear("bert.pooler.dense", hidden, hidden))
    shapes.update(_linear("cls.predictions.transform.dense", hidden, hidden))
    shapes.update(_layer_norm("cls.predictions.transform.LayerNorm", hidden))
    shapes["cls.predictions.bias"] = (vocab,)
    shapes.update(_linear("cls.seq_relationship", hidden, 2))
    return shapes


def to_google(values):
    """transformers' {name: array} -> Google BERT's {name: array} (the
    names tests/references/numpy_bert.py computes with): Linear weights
    back to [in, out], LayerNorm weight/bias to gamma/beta."""
    google = {}
    for name, value in values.items():
        parts = name.split(".")
        if name == "cls.predictions.bias":
            google["cls/predictions/output_bias"] = value
            continue
        if parts[:2] == ["cls", "seq_relationship"]:
            # Google keeps the classifier as [2, hidden], as transformers.
            google["cls/seq_relationship/output_" + (
                "weights" if parts[2] == "weight" else "bias")] = value
            continue
        if parts[-2].endswith("_embeddings"):
            google["/".join(parts[:-1])] = value
            continue
        if "encoder" in parts:
            at = parts.index("layer")
            parts[at:at + 2] = [f"layer_{parts[at + 1]}"]
        if parts[-2] == "LayerNorm":
            parts[-1] = {"weight": "gamma", "bias": "beta"}[parts[-1]]
            google["/".join(parts)] = value
        elif parts[-1] == "weight":
            google["/".join(parts[:-1] + ["kernel"])] = value.T
        else:
            google["/".join(parts)] = value
    return google
