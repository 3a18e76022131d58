"""A run's examples: text and the default corpus, WordPiece tokenization,
sentence-pair examples and the one TFRecord schema they are written in
(`features`), the checks of record files, the tf.data input with its
resumable order, and where a run's examples come from (`sources`).
"""
