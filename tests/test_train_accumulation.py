"""Gradient accumulation and replicas in the trainer: each replica adds up
its own micro-batches, the gradients are summed over the replicas once per
update, and a float16 overflow on any replica skips the update everywhere.

Two replicas are two logical CPUs (tests/conftest.py). Dropout is off, so
that runs that see the same examples in another grouping compute the same
update.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.util import nest

from tests.support import train_testing
from tf_lamb import distribute
from train import PretrainConfig
from train.data import reading
from train.loop import trainer as trainer_lib
from train.model import bert

BATCH = 8
SEQ_LENGTH, PREDICTIONS = 32, 5


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    """Every example of a small record file, parsed, in file order."""
    files, _ = train_testing.make_records(
        str(tmp_path_factory.mktemp("records")), max_documents=60,
        dupe_factor=1, shards=1)
    serialized = list(tf.data.TFRecordDataset(files).take(BATCH * 4))
    return reading.parse_batch(tf.stack(serialized), SEQ_LENGTH, PREDICTIONS)


def _trainer(strategy, accumulation, precision="float32"):
    config = PretrainConfig(
        max_seq_length=SEQ_LENGTH, max_predictions_per_seq=PREDICTIONS,
        train_batch_size=BATCH, gradient_accumulation_steps=accumulation,
        warmup_steps=0, num_train_steps=100, model_dir="unused",
        mixed_precision=precision)
    bert_config = dataclasses.replace(
        bert.BertConfig.for_size("tiny", 600), hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)
    keras.mixed_precision.set_global_policy(precision)
    try:
        return trainer_lib.Trainer(config, strategy, bert_config,
                                   config.phases()[:1])
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _iterator(strategy, examples, micro_batch):
    """The examples in order, `micro_batch` of them (over all replicas) at
    a time; replica r of a micro-batch gets its r-th slice."""
    dataset = tf.data.Dataset.from_tensor_slices(examples).batch(
        micro_batch, drop_remainder=True)
    return iter(strategy.experimental_distribute_dataset(dataset))


def _mirrored():
    return distribute.make_strategy("mirrored")


def test_two_replicas_accumulating_equal_one_device(examples):
    """One device, 4 micro-batches of 2 per update, against 2 replicas, 2
    micro-batches of 2 each: the same groups of 2 examples, whose mean
    losses are averaged, so the same 3 updates."""
    one = _trainer(tf.distribute.get_strategy(), 4)
    two = _trainer(_mirrored(), 2)
    for trainer, micro_batch in ((one, 2), (two, 4)):
        outcome = trainer.train_loop(
            _iterator(trainer.strategy, examples, micro_batch), 3)
        assert outcome.updates == 3 and not outcome.diverged
    # The same initial weights (the same seed), then the same updates.
    for a, b in zip(one.variables, two.variables):
        values = two.strategy.experimental_local_results(b)
        for value in values:
            np.testing.assert_allclose(value.numpy(), a.numpy(), rtol=2e-5,
                                       atol=1e-6, err_msg=a.name)
    assert int(one.optimizer.iterations.numpy()) == 3
    assert int(two.optimizer.iterations.numpy()) == 3


def _while_loops_around():
    """How many while loops (their bodies' graphs) enclose the op being
    traced."""
    depth, graph = 0, tf.compat.v1.get_default_graph()
    while graph is not None:
        depth += "while_body" in getattr(graph, "name", "")
        graph = getattr(graph, "outer_graph", None)
    return depth


@pytest.mark.parametrize("accumulation", [1, 4])
def test_the_gradients_are_all_reduced_once_per_update(
        examples, monkeypatch, accumulation):
    """Traced: one all-reduce of the whole gradient per replica, in the
    loop over updates (one while loop), none in the loop over an update's
    micro-batches (a second one), which runs `accumulation - 2` times."""
    trainer = _trainer(_mirrored(), accumulation)
    calls = []
    original = tf.distribute.ReplicaContext.all_reduce

    def counted(context, reduce_op, value, options=None):
        if len(nest.flatten(value)) == len(trainer.variables):
            replica = tf.get_static_value(context.replica_id_in_sync_group)
            calls.append((int(replica), _while_loops_around()))
        return original(context, reduce_op, value, options)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counted)
    trainer.train_loop(_iterator(trainer.strategy, examples,
                                 BATCH // accumulation), 2)
    assert sorted(calls) == [(0, 1), (1, 1)], calls


class _InfOnReplica:
    """The trainer's forward-backward, with an inf in one replica's
    gradient (and squared norm) while `armed` is set."""

    def __init__(self, trainer, replica):
        self.compiled, self.replica = trainer._compiled, replica
        self.armed = tf.Variable(False, trainable=False)

    def __call__(self, features, seed):
        grads, stats, squares = self.compiled(features, seed)
        here = tf.distribute.get_replica_context().replica_id_in_sync_group
        poison = tf.logical_and(self.armed, tf.equal(here, self.replica))
        factor = tf.where(poison, float("inf"), 1.0)
        grads = [grads[0] * tf.cast(factor, grads[0].dtype)] + grads[1:]
        squares = [squares[0] * factor] + squares[1:]
        return grads, stats, squares


@pytest.mark.parametrize("accumulation", [1, 2])
def test_float16_overflow_on_one_replica_skips_the_update_everywhere(
        examples, accumulation):
    trainer = _trainer(_mirrored(), accumulation, "mixed_float16")
    with trainer.strategy.scope():
        inf_on_replica_1 = _InfOnReplica(trainer, 1)
    trainer._compiled = inf_on_replica_1
    iterator = _iterator(trainer.strategy, examples, BATCH // accumulation)
    trainer.train_loop(iterator, 1)
    # (The first update may overflow by itself, at the initial scale.)
    skipped = int(trainer.skipped_updates.numpy())
    scale = float(trainer.optimizer.dynamic_scale.numpy())
    before = [v.numpy() for v in trainer.variables]

    inf_on_replica_1.armed.assign(True)
    trainer.train_loop(iterator, 1)
    # Skipped on both replicas, each keeping the weights; the scale halves.
    assert int(trainer.skipped_updates.numpy()) == skipped + 1
    for variable, old in zip(trainer.variables, before):
        for value in trainer.strategy.experimental_local_results(variable):
            np.testing.assert_array_equal(value.numpy(), old)
    assert float(trainer.optimizer.dynamic_scale.numpy()) == scale / 2

    inf_on_replica_1.armed.assign(False)
    trainer.train_loop(iterator, 1)
    assert int(trainer.skipped_updates.numpy()) == skipped + 1
    assert any(np.any(v.numpy() != old)
               for v, old in zip(trainer.variables, before))
    # The trainer's updates and the optimizer's stay in step: 3 updates,
    # those skipped not applied.
    assert int(trainer.step.numpy()) == 3
    assert int(trainer.inner_optimizer.iterations.numpy()) == 3 - (
        skipped + 1)
