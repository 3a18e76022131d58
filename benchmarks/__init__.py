"""Benchmarks of tf_lamb.Lamb; each entry point's docstring tells more.

`python -m benchmarks.optimizer_step`: the optimizer step alone on the
variable shapes of BERT-base/large, against keras.optimizers.Lamb and two
memory-traffic floors of the machine (exact LAMB, 44 B/param; copy,
28 B/param).

`python -m benchmarks.train_step`: a whole BERT train step (forward +
backward + apply, `train.modeling`'s model) with either optimizer.

`python -m benchmarks.export_hlo`: writes the optimizer steps that
optimizer_step times as XLA programs, for a device without TensorFlow.

`python -m benchmarks.run_hlo`: times those programs with jaxlib on any XLA
device (a GPU, say) and checks them against TensorFlow's results.

`python -m benchmarks.batch_scaling`: the batch-size study: BERT pretraining
with tf_lamb.Lamb vs keras AdamW vs keras Lamb over a range of batch sizes
(a learning-rate sweep at each), with its table and figure.

`python -m benchmarks.finetune`: fine-tuning from a pretrained checkpoint
with each optimizer (see its docstring).
"""
