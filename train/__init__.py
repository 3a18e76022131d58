"""BERT-style pretraining with the tf_lamb LAMB optimizer.

From Python:
  from train import PretrainConfig, run_pretraining
  metrics = run_pretraining(PretrainConfig(model_dir="runs/x",
                                           num_train_steps=20))

Entry points:
  python -m train.pretrain                  pretrain a BERT encoder
  python -m train.create_pretraining_data   text files -> TFRecords
"""

from train.config import InputError, PretrainConfig
from train.pretraining import run_pretraining

__all__ = ["InputError", "PretrainConfig", "run_pretraining"]
