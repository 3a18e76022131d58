"""BERT-style pretraining with the tf_lamb LAMB optimizer.

From Python:
  from train import PretrainConfig, run_pretraining
  metrics = run_pretraining(PretrainConfig(model_dir="runs/x",
                                           num_train_steps=20))

Entry points:
  python -m train.pretrain                  pretrain a BERT encoder
  python -m train.create_pretraining_data   text files -> TFRecords
  python -m train.export                    a run -> TF Hub SavedModel,
                                            Google BERT or Hugging Face
                                            folder
"""

import importlib

__all__ = ["InputError", "PretrainConfig", "export_google_checkpoint",
           "export_huggingface", "export_saved_model", "run_pretraining"]

# Loaded on first use, so that `python -m train.pretrain` can set
# TensorFlow's log level (train/runtime/logs.py) before anything imports
# TensorFlow.
_HOMES = {"InputError": "train.runtime.errors",
          "PretrainConfig": "train.config",
          "export_google_checkpoint": "train.interop.exports",
          "export_huggingface": "train.interop.exports",
          "export_saved_model": "train.interop.exports",
          "run_pretraining": "train.pretrain_lib"}


def __getattr__(name):
    if name not in _HOMES:
        raise AttributeError(f"module 'train' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
