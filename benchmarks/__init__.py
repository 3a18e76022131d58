"""Benchmarks of tf_lamb.Lamb; each entry point's docstring tells more.

`python -m benchmarks.optimizer_step`: the optimizer step alone on the
variable shapes of BERT-base/large, against keras.optimizers.Lamb and two
memory-traffic floors of the machine (exact LAMB, 44 B/param; copy,
28 B/param).

`python -m benchmarks.train_step`: a whole BERT train step (forward +
backward + apply, `train.model.bert`'s model) with either optimizer.

`python -m benchmarks.export_hlo`: writes the optimizer steps that
optimizer_step times as XLA programs, for a device without TensorFlow.

`python -m benchmarks.run_hlo`: times those programs with jaxlib on any XLA
device (a GPU, say) and checks them against TensorFlow's results.

`python -m benchmarks.compile_for`: what an H100's or a TPU's own compiler
makes of those programs, compiled here without the device (kernels, bytes,
memory).

`python -m benchmarks.profile_hlo`: the device's kernel time of those
programs, from a profiler trace (on a GPU a host-timed call mostly measures
the host).

`python -m benchmarks.batch_scaling`: the batch-size study: updates to a
held-out loss target for tf_lamb.Lamb, keras AdamW and keras Lamb at each
batch size, the learning rate tuned per batch, several seeds.
`python -m benchmarks.batch_scaling_report`: its table, figure and summary
from the results.

`python -m benchmarks.finetune`: a downstream classifier fine-tuned from a
pretrained SavedModel and from a random encoder of the same config, beside
a bag of words (its tasks in finetune_tasks, the bag of words in
finetune_bag_of_words).

`python -m benchmarks.startup`, `python -m benchmarks.resume`: a run's
start-up checks on many shards, and a resumed run's time to its first
batch.
"""
