"""BERT-style pretraining with the tf_lamb LAMB optimizer.

From Python:
  from train import PretrainConfig, run_pretraining
  metrics = run_pretraining(PretrainConfig(model_dir="runs/x",
                                           num_train_steps=20))

Entry points:
  python -m train.pretrain                  pretrain a BERT encoder
  python -m train.create_pretraining_data   text files -> TFRecords
  python -m train.export                    a run -> TF Hub SavedModel or
                                            Google BERT folder
"""

from train.config import InputError, PretrainConfig
from train.pretraining import run_pretraining

__all__ = ["InputError", "PretrainConfig", "export_google_checkpoint",
           "export_saved_model", "run_pretraining"]

_EXPORTS = ("export_google_checkpoint", "export_saved_model")


def __getattr__(name):
    # Imported on first use: imported here, `python -m train.export` would
    # find train.export loaded before running it as __main__ (runpy warns).
    if name in _EXPORTS:
        from train import export
        return getattr(export, name)
    raise AttributeError(f"module 'train' has no attribute {name!r}")
