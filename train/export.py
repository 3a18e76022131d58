r"""Hand a pretrained model on: a TF Hub SavedModel, a Google BERT folder
or a Hugging Face folder.

    python -m train.export --model_dir=runs/pretrain --output_dir=OUT
    python -m train.export --model_dir=runs/pretrain --format=google \
        --output_dir=OUT
    python -m train.export --model_dir=runs/pretrain --format=huggingface \
        --output_dir=OUT

Either exports the newest checkpoint of --model_dir (or --checkpoint), with
the bert_config.json and vocab.txt the run recorded there.

--format=saved_model (the default) writes the encoder as a SavedModel with
TF Hub's text-encoder API (see train/interop/hub_module.py): load it with
`tf.saved_model.load`, `tensorflow_hub.KerasLayer(OUT, trainable=True)`
(tf-keras) or, in Keras 3,
`train.interop.hub_module.load_encoder_layer(OUT)`.

--format=google writes the layout of Google's released BERT folders:
OUT/bert_model.ckpt.{index,data-00000-of-00001} (a TF1 name-based
checkpoint holding every weight of Google's BertModel and its pretraining
heads, under Google's names and shapes, in float32, without optimizer
state), OUT/bert_config.json and OUT/vocab.txt.

--format=huggingface writes the layout transformers and KerasHub read
(train/interop/huggingface.py): OUT/config.json, OUT/model.safetensors
(float32, transformers' BertForPreTraining names, with both heads),
OUT/vocab.txt, OUT/tokenizer_config.json and OUT/special_tokens_map.json.
Load it with `keras_hub.models.BertBackbone.from_preset(OUT)` or
`transformers.BertForPreTraining.from_pretrained(OUT)`.

From Python: `train.export_saved_model(model_dir, output_dir)`,
`train.export_google_checkpoint(model_dir, output_dir)` and
`train.export_huggingface(model_dir, output_dir)`.

This module is the command line only; the exports are
train/interop/exports.py's.
"""

import sys

from train.runtime import logs

if __name__ == "__main__":
    # Before TensorFlow loads: its C++ log level is read then.
    logs.quiet_tensorflow()

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from train.interop import exports  # noqa: E402
from train.runtime.errors import InputError  # noqa: E402


def define_flags():
    flags.DEFINE_string("model_dir", None, "Directory of a train.pretrain "
                        "run (checkpoints, bert_config.json, vocab.txt).")
    flags.DEFINE_enum("format", "saved_model", list(exports.FORMATS),
                      "saved_model: the encoder with TF Hub's text-encoder "
                      "API; google: Google BERT's checkpoint folder; "
                      "huggingface: config.json, model.safetensors and "
                      "tokenizer files for transformers and KerasHub.")
    flags.DEFINE_string("output_dir", None, "Where to write the export; "
                        "must be empty or absent unless --overwrite.")
    flags.DEFINE_string("checkpoint", None, "A checkpoint prefix to export "
                        "instead of the newest in --model_dir (e.g. "
                        "runs/pretrain/ckpt-500).")
    flags.DEFINE_bool("overwrite", False, "Replace what --output_dir holds.")


def main(argv):
    flag_values = flags.FLAGS
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    for name in ("model_dir", "output_dir"):
        if not flag_values[name].value:
            sys.exit(f"Error: --{name} is required")
    try:
        out = exports.export(flag_values.model_dir,
                             flag_values.output_dir, flag_values.format,
                             flag_values.checkpoint, flag_values.overwrite)
    except InputError as error:
        sys.exit(f"Error: {error}")
    print(f"Exported {flag_values.model_dir} ({flag_values.format}) to "
          f"{out}", flush=True)


if __name__ == "__main__":
    define_flags()
    app.run(main)
