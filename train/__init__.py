"""BERT-style pretraining with the tf_lamb LAMB optimizer.

Entry points:
  python -m train.pretrain                  pretrain a BERT encoder
  python -m train.create_pretraining_data   text files -> TFRecords
"""
