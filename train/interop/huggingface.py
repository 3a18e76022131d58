"""BERT in the Hugging Face layout, which transformers and KerasHub read.

A folder in this layout holds

* `config.json`: transformers' BertConfig (`model_type: bert`);
* `model.safetensors`: the weights under the names of transformers'
  `BertForPreTraining` state dict (`bert.encoder.layer.0.attention.self.
  query.weight`, ..., `cls.predictions.bias`, `cls.seq_relationship.weight`),
  every dense weight as PyTorch's `Linear` keeps it, [out, in].  The
  masked-LM decoder is tied to the word embeddings, so (as transformers
  itself saves it) the file holds the table once, under the embeddings'
  name;
* `vocab.txt`, `tokenizer_config.json` and `special_tokens_map.json`:
  what `BertTokenizer` (transformers) and `BertTokenizer` (KerasHub) read.

The names come from Google's (`init_checkpoints.google_variable_names`) by
one rule, `hf_name`, so the three layouts this project reads and writes
cannot drift apart.  Reading accepts what transformers' own loader accepts of a
BERT: LayerNorm parameters as `gamma`/`beta` (older checkpoints), a sharded
`model.safetensors.index.json`, float16 weights.
"""

import json
import os
import re

import numpy as np
import tensorflow as tf

from train.model.hf_config import bert_config_values, config_dict

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
SPECIAL_TOKENS = {"unk_token": "[UNK]", "sep_token": "[SEP]",
                  "pad_token": "[PAD]", "cls_token": "[CLS]",
                  "mask_token": "[MASK]"}

# Google names whose transformers names the general rule does not give.
_SPECIAL_NAMES = {
    "cls/predictions/output_bias": "cls.predictions.bias",
    "cls/seq_relationship/output_weights": "cls.seq_relationship.weight",
    "cls/seq_relationship/output_bias": "cls.seq_relationship.bias",
}
_LAST_COMPONENT = {"kernel": "weight", "gamma": "weight", "beta": "bias",
                   "bias": "bias"}
# Entries of a transformers checkpoint that are not weights of their own:
# the decoder tied to the word embeddings (and its bias, tied to
# cls.predictions.bias) and the position-id buffer older versions saved.
_TIED_OR_BUFFERS = ("cls.predictions.decoder.weight",
                    "cls.predictions.decoder.bias",
                    "bert.embeddings.position_ids")


def hf_name(google_name):
    """transformers' state-dict name of a Google BERT checkpoint name, and
    whether that dense weight is stored transposed ([out, in] against
    Google's [in, out])."""
    if google_name in _SPECIAL_NAMES:
        # Google's next-sentence output_weights already are [2, hidden].
        return _SPECIAL_NAMES[google_name], False
    parts = re.sub(r"/layer_(\d+)/", r"/layer/\1/", google_name).split("/")
    last = parts[-1]
    if last.endswith("_embeddings"):
        return ".".join(parts) + ".weight", False
    if last not in _LAST_COMPONENT:
        raise ValueError(f"No transformers name for {google_name}")
    return ".".join(parts[:-1] + [_LAST_COMPONENT[last]]), last == "kernel"


def variable_names(google_names):
    """{transformers name: (variable, transposed)} from
    init_checkpoints.google_variable_names(model): `transposed` is True where
    transformers stores the transpose of the model's variable."""
    names = {}
    for google_name, (variable, google_transposed) in google_names.items():
        name, transposed = hf_name(google_name)
        names[name] = (variable, transposed != google_transposed)
    return names


def is_folder(path):
    """Whether `path` is a folder in this layout (config.json and
    safetensors weights)."""
    exists = tf.io.gfile.exists
    return bool(path) and tf.io.gfile.isdir(path) and exists(
        os.path.join(path, CONFIG_FILE)) and (
            exists(os.path.join(path, WEIGHTS_FILE))
            or exists(os.path.join(path, WEIGHTS_INDEX_FILE)))


def check_available():
    """ValueError naming the install command when safetensors is missing."""
    _safetensors()


def _safetensors():
    try:
        import safetensors
        import safetensors.numpy  # noqa: F401 (safetensors.numpy below)
    except ImportError:
        raise ValueError("The Hugging Face layout needs the safetensors "
                         "package: pip install safetensors") from None
    return safetensors


def _canonical(name):
    """A transformers BERT name as this module writes it."""
    name = re.sub(r"\.LayerNorm\.gamma$", ".LayerNorm.weight", name)
    return re.sub(r"\.LayerNorm\.beta$", ".LayerNorm.bias", name)


class Reader:
    """The weights of a Hugging Face folder, with the methods of
    `tf.train.load_checkpoint`'s reader that init_checkpoints.py uses."""

    def __init__(self, folder):
        safetensors = _safetensors()
        index = os.path.join(folder, WEIGHTS_INDEX_FILE)
        if tf.io.gfile.exists(index):
            with tf.io.gfile.GFile(index) as fh:
                files = sorted(set(json.load(fh)["weight_map"].values()))
        else:
            files = [WEIGHTS_FILE]
        self._arrays = {}  # canonical name -> (file, stored name, array)
        for file_name in files:
            path = os.path.join(folder, file_name)
            try:
                with tf.io.gfile.GFile(path, "rb") as fh:
                    # Whole files through gfile, so gs:// folders read too.
                    arrays = safetensors.numpy.load(fh.read())
            except (tf.errors.OpError, safetensors.SafetensorError,
                    TypeError) as error:
                raise ValueError(f"Cannot read {path}: {error}") from None
            for stored, array in arrays.items():
                self._arrays[_canonical(stored)] = (path, stored, array)
        # The decoder bias is cls.predictions.bias under another name.
        decoder_bias = "cls.predictions.decoder.bias"
        if "cls.predictions.bias" not in self._arrays and (
                decoder_bias in self._arrays):
            self._arrays["cls.predictions.bias"] = self._arrays[decoder_bias]
        for name in _TIED_OR_BUFFERS:
            self._arrays.pop(name, None)

    def has_tensor(self, name):
        return name in self._arrays

    def get_variable_to_shape_map(self):
        return {name: list(array.shape)
                for name, (_, _, array) in self._arrays.items()}

    def get_tensor(self, name):
        path, stored, array = self._arrays[name]
        if array.dtype.kind != "f":
            raise ValueError(f"{stored} in {path} is {array.dtype}, not a "
                             f"floating-point weight")
        return np.asarray(array, dtype=np.float32)


def read_config(folder):
    """config.json of a Hugging Face folder as a dict."""
    path = os.path.join(folder, CONFIG_FILE)
    try:
        with tf.io.gfile.GFile(path) as fh:
            return json.load(fh)
    except (tf.errors.OpError, json.JSONDecodeError) as error:
        raise ValueError(f"Cannot read {path}: {error}") from None


def check_config(folder, bert_config):
    """ValueError when the folder's config.json describes another model
    than `bert_config` (the weights' shapes are checked apart)."""
    source = os.path.join(folder, CONFIG_FILE)
    theirs = bert_config_values(read_config(folder), source)
    differ = [key for key in ("hidden_act", "num_attention_heads")
              if theirs[key] != getattr(bert_config, key)]
    if differ:
        raise ValueError(
            f"{source} describes another model: " + ", ".join(
                f"{key} {theirs[key]!r} (the run's {getattr(bert_config, key)!r})"
                for key in differ))


def _write_json(path, value):
    with tf.io.gfile.GFile(path, "w") as fh:
        fh.write(json.dumps(value, indent=2) + "\n")


def write(folder, values, bert_config, vocab_file, do_lower_case):
    """Writes a Hugging Face folder: `values` is {transformers name:
    array}, written as float32; `vocab_file` is the run's vocabulary."""
    safetensors = _safetensors()
    with tf.io.gfile.GFile(vocab_file) as fh:
        tokens = [line.rstrip("\n") for line in fh]
    pad_token_id = tokens.index("[PAD]") if "[PAD]" in tokens else 0
    tensors = {name: np.ascontiguousarray(value, dtype=np.float32)
               for name, value in values.items()}
    # "pt": the format transformers' loader asks a safetensors file for.
    with tf.io.gfile.GFile(os.path.join(folder, WEIGHTS_FILE), "wb") as fh:
        fh.write(safetensors.numpy.save(tensors, metadata={"format": "pt"}))
    _write_json(os.path.join(folder, CONFIG_FILE),
                config_dict(bert_config, pad_token_id))
    with tf.io.gfile.GFile(os.path.join(folder, "vocab.txt"), "w") as fh:
        fh.write("".join(token + "\n" for token in tokens))
    _write_json(os.path.join(folder, TOKENIZER_CONFIG_FILE), dict(
        SPECIAL_TOKENS, tokenizer_class="BertTokenizer",
        do_lower_case=bool(do_lower_case), do_basic_tokenize=True,
        tokenize_chinese_chars=True, strip_accents=None,
        model_max_length=bert_config.max_position_embeddings,
        clean_up_tokenization_spaces=True))
    _write_json(os.path.join(folder, SPECIAL_TOKENS_FILE), SPECIAL_TOKENS)
