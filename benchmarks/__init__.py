"""Benchmarks of tf_lamb.Lamb.

`python -m benchmarks.optimizer_step`: the optimizer step alone on the
variable shapes of BERT-base/large, against keras.optimizers.Lamb and the
memory-traffic floor of the machine.

`python -m benchmarks.train_step`: a whole BERT-like train step
(forward + backward + apply) with either optimizer.
"""
