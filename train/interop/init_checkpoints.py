"""Initialising a built BertPretrainer from an existing checkpoint.

`init_from_checkpoint(model, path)` copies weights (never optimizer state)
into a `bert.BertPretrainer` from either

* a checkpoint of Google's original BERT code (TF1, name-based): variables
  such as `bert/encoder/layer_0/attention/self/query/kernel` or
  `cls/seq_relationship/output_weights`; or
* a checkpoint written by `train.pretrain` (object-based,
  `tf.train.Checkpoint(model=..., optimizer=..., step=...)`), given as its
  model_dir (the newest checkpoint there is used) or as a prefix such as
  `model_dir/ckpt-1000`; or
* a folder in the Hugging Face layout (config.json and model.safetensors
  of transformers' BERT, see train/interop/huggingface.py).

Checkpoint entries the model has no use for (`global_step`, optimizer slots
such as `*/adam_m`, `*/adam_v`, the optimizer of our own runs) are ignored.
Every model variable must be present with its shape: all that are missing or
differ are reported together in one ValueError before anything is assigned,
so a failed call leaves the model as it was.
"""

import os
import re

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from train.interop import huggingface

_OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_VARIABLE_ATTRIBUTE = "VARIABLE_VALUE"
# Suffixes of a checkpoint's files; a path given with one means its prefix.
_FILE_SUFFIX = re.compile(r"\.(index|meta|data-\d{5}-of-\d{5})$")
# The last name component of a Google BERT weight (optimizer slots such as
# `.../kernel/adam_m` end otherwise).
_WEIGHT_NAME = re.compile(
    r"/(kernel|bias|gamma|beta|\w+_embeddings|output_weights|output_bias)$")


def _has_index(prefix):
    return tf.io.gfile.exists(prefix + ".index")


def resolve_checkpoint(path):
    """The checkpoint prefix that `path` names.

    `path` may be a prefix (`.../bert_model.ckpt`, `.../ckpt-12`), one of a
    checkpoint's files (`.../bert_model.ckpt.index`), or a directory: the
    newest checkpoint listed in its `checkpoint` state file, else the only
    checkpoint in it (as in the directory of a released Google model).
    """
    if not path:
        raise ValueError("No checkpoint path given")
    prefix = _FILE_SUFFIX.sub("", path)
    # A checkpoint is found by its .index file first: on some file systems
    # (TensorFlow's ram://) a string prefix of a file also counts as a
    # directory, so `.../ckpt-12` would pass for one.
    if _has_index(prefix):
        return prefix
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest:
            return latest
        prefixes = sorted(name[:-len(".index")]
                          for name in tf.io.gfile.listdir(path)
                          if name.endswith(".index"))
        if len(prefixes) == 1:
            return os.path.join(path, prefixes[0])
        if prefixes:
            raise ValueError(
                f"Directory {path} holds several checkpoints "
                f"({', '.join(prefixes)}) and no 'checkpoint' file naming "
                f"the newest; pass one of them as {path}/<prefix>")
        raise ValueError(f"Directory {path} holds no checkpoint (no "
                         f"'checkpoint' file and no *.index file)")
    raise ValueError(f"{path} is neither a checkpoint (there is no "
                     f"{prefix}.index) nor a directory holding one")


def google_variable_names(model):
    """Maps Google's BERT checkpoint names to the model's variables.

    Returns a dict {google_name: (variable, transposed)}; `transposed` is
    True where Google stores the transpose of our variable (the
    next-sentence `output_weights`, [2, hidden], against a Dense kernel of
    shape [hidden, 2]).
    """
    names = {}

    def add(name, variable, transposed=False):
        names[name] = (variable, transposed)

    def dense(prefix, layer):
        add(prefix + "/kernel", layer.kernel)
        add(prefix + "/bias", layer.bias)

    def layer_norm(prefix, layer):
        add(prefix + "/gamma", layer.gamma)
        add(prefix + "/beta", layer.beta)

    encoder = model.encoder
    embeddings = encoder.embeddings
    add("bert/embeddings/word_embeddings",
        embeddings.word_embeddings.embeddings)
    add("bert/embeddings/token_type_embeddings",
        embeddings.token_type_embeddings.embeddings)
    add("bert/embeddings/position_embeddings", embeddings.position_embeddings)
    layer_norm("bert/embeddings/LayerNorm", embeddings.layer_norm)
    for i, layer in enumerate(encoder.transformer_layers):
        prefix = f"bert/encoder/layer_{i}"
        dense(prefix + "/attention/self/query", layer.query)
        dense(prefix + "/attention/self/key", layer.key)
        dense(prefix + "/attention/self/value", layer.value)
        dense(prefix + "/attention/output/dense", layer.attention_output)
        layer_norm(prefix + "/attention/output/LayerNorm",
                   layer.attention_layer_norm)
        dense(prefix + "/intermediate/dense", layer.intermediate)
        dense(prefix + "/output/dense", layer.output_dense)
        layer_norm(prefix + "/output/LayerNorm", layer.output_layer_norm)
    dense("bert/pooler/dense", encoder.pooler)
    dense("cls/predictions/transform/dense", model.mlm.transform)
    layer_norm("cls/predictions/transform/LayerNorm", model.mlm.layer_norm)
    add("cls/predictions/output_bias", model.mlm.output_bias)
    add("cls/seq_relationship/output_weights", model.nsp.kernel,
        transposed=True)
    add("cls/seq_relationship/output_bias", model.nsp.bias)

    # A variable added to the model without a name here would silently keep
    # its random initialisation; refuse instead.
    mapped = {id(variable) for variable, _ in names.values()}
    unmapped = [v.path for v in model.weights if id(v) not in mapped]
    if unmapped or len(mapped) != len(names):
        raise ValueError(f"No Google BERT checkpoint name for the model "
                         f"variables {unmapped}")
    return names


def _object_graph_keys(reader, model):
    """{id(variable): checkpoint key or None} for a train.pretrain checkpoint.

    Walks the checkpoint's object graph from its `model` entry alongside the
    live model's object graph, so the keys are found however the saver's
    root reached each variable.
    """
    # Imported here: only object-based checkpoints need the proto.
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor(_OBJECT_GRAPH_KEY))
    root_children = {c.local_name: c.node_id for c in graph.nodes[0].children}
    if "model" not in root_children:
        raise ValueError(
            f"The checkpoint is object-based but has no 'model' entry (it "
            f"holds {sorted(root_children)}); expected one written by "
            f"train.pretrain as tf.train.Checkpoint(model=...) or a Google "
            f"BERT (name-based) checkpoint")
    node_of = {}  # id(live object) -> checkpoint node id
    pending = [(model, root_children["model"])]
    while pending:
        obj, node_id = pending.pop()
        if id(obj) in node_of:
            continue
        node_of[id(obj)] = node_id
        node_children = {c.local_name: c.node_id
                         for c in graph.nodes[node_id].children}
        for name, child in tf.train.TrackableView.children(obj).items():
            if name in node_children:
                pending.append((child, node_children[name]))
    keys = {}
    for variable in model.weights:
        key = None
        if id(variable) in node_of:
            for attribute in graph.nodes[node_of[id(variable)]].attributes:
                if attribute.name == _VARIABLE_ATTRIBUTE:
                    key = attribute.checkpoint_key
        keys[id(variable)] = key
    return keys


def _plan(reader, model):
    """[(label, variable, key, transposed)] for every model variable."""
    if isinstance(reader, huggingface.Reader):
        names = huggingface.variable_names(google_variable_names(model))
        return "Hugging Face", [
            (name, variable, name if reader.has_tensor(name) else None,
             transposed)
            for name, (variable, transposed) in names.items()]
    if reader.has_tensor(_OBJECT_GRAPH_KEY):
        keys = _object_graph_keys(reader, model)
        return "train.pretrain", [(v.path, v, keys[id(v)], False)
                                  for v in model.weights]
    return "Google BERT", [
        (name, variable, name if reader.has_tensor(name) else None,
         transposed)
        for name, (variable, transposed)
        in google_variable_names(model).items()]


def _shape(shape):
    return "[" + ", ".join(str(d) for d in shape) + "]"


def _fitting_plan(model, path):
    """(kind, prefix, reader, plan) for loading `path` into `model`;
    ValueError listing every variable that does not fit."""
    if not model.built or not model.weights:
        raise ValueError("Build the model (BertPretrainer.build_for) before "
                         "loading a checkpoint into it")
    if huggingface.is_folder(path):
        prefix = path
        huggingface.check_config(path, model.config)
        reader = huggingface.Reader(path)
    else:
        prefix = resolve_checkpoint(path)
        try:
            # The reader of the prefix itself: tf.train.load_checkpoint
            # first asks whether the path is a directory, which a prefix is
            # on ram:// (see resolve_checkpoint).
            reader = tf.compat.v1.train.NewCheckpointReader(prefix)
        except (tf.errors.OpError, ValueError) as error:
            raise ValueError(f"Cannot read checkpoint {prefix}: "
                             f"{error}") from None
    shapes = reader.get_variable_to_shape_map()
    kind, plan = _plan(reader, model)

    problems = []
    for label, variable, key, transposed in plan:
        expected = tuple(variable.shape)
        if transposed:
            expected = expected[::-1]
        if key is None:
            problems.append(f"  {label}: model {_shape(expected)}, "
                            f"checkpoint missing")
        elif tuple(shapes[key]) != expected:
            problems.append(f"  {label}: model {_shape(expected)}, "
                            f"checkpoint {_shape(shapes[key])}")
    if problems:
        raise ValueError(
            f"{kind} checkpoint {prefix} does not fit the model; "
            f"{len(problems)} of {len(plan)} variables are missing or have "
            f"another shape (model shape, checkpoint shape):\n"
            + "\n".join(problems))
    return kind, prefix, reader, plan


def check_checkpoint_fits(model, path):
    """Raises what `init_from_checkpoint(model, path)` would raise before
    assigning anything, and changes nothing (for checks made before a run
    writes its first file)."""
    _fitting_plan(model, path)


def init_from_checkpoint(model, path):
    """Copies a checkpoint's weights into a built `bert.BertPretrainer`.

    `path` is a Google BERT checkpoint prefix (e.g. `.../bert_model.ckpt`),
    a train.pretrain model_dir or checkpoint prefix, a directory holding
    one checkpoint (see `resolve_checkpoint`), or a Hugging Face folder.  Only the model's weights
    change; optimizer state in the checkpoint is ignored.  The model may
    have been built under a tf.distribute strategy: every replica's copy
    gets the values.

    Returns (number of variables, number of parameters) loaded.  Raises
    ValueError, before assigning anything, listing every model variable that
    the checkpoint lacks or holds with another shape.
    """
    kind, prefix, reader, plan = _fitting_plan(model, path)
    shapes = reader.get_variable_to_shape_map()

    # Read everything first, so that a read error leaves the model as it was.
    values = []
    for _, variable, key, transposed in plan:
        try:
            value = reader.get_tensor(key)
        except (tf.errors.OpError, ValueError) as error:
            raise ValueError(f"Cannot read {key} from checkpoint {prefix}: "
                             f"{error}") from None
        values.append(value.T if transposed else value)
    for (_, variable, _, _), value in zip(plan, values):
        variable.assign(tf.cast(value, variable.dtype))

    used = {key for _, _, key, _ in plan}
    ignored = sorted(k for k in shapes if k not in used)
    # Unused entries named like weights (not like optimizer slots) usually
    # mean a bert_config with fewer layers than the checkpoint's model.
    unused_weights = [k for k in ignored if kind == "Hugging Face" or (
        _WEIGHT_NAME.search(k) and kind == "Google BERT")]
    if unused_weights:
        logging.warning("%d weights in %s are not used by the model (is "
                        "the BERT config the checkpoint's?): %s",
                        len(unused_weights), prefix,
                        ", ".join(unused_weights[:10]))
    parameters = sum(int(value.size) for value in values)
    # Callers say what they loaded in their own words (run_pretraining's
    # "Initialised ..." line); this is for --verbosity=1.
    logging.debug("Initialised %d variables (%d parameters) from %s "
                  "checkpoint %s; ignored %d checkpoint entries", len(plan),
                  parameters, kind, prefix, len(ignored))
    return len(plan), parameters
