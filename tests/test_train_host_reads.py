"""How often the host waits for the device: once per call of the compiled
loop, and once per log line.

Every device-to-host copy of an eager tensor goes through
`_EagerTensorBase._numpy` (`.numpy()`, `float()`, `int()`, a variable's
`.numpy()`); the tests count its calls.
"""

import pytest
import tensorflow as tf
from tensorflow.python.framework import ops

from tests.support import train_testing
from tf_lamb import distribute
from train import PretrainConfig
from train.loop import trainer as trainer_lib
from train.model import bert


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return train_testing.make_records(
        str(tmp_path_factory.mktemp("records")), max_documents=60,
        dupe_factor=1)


def _trainer(records, strategy, **changes):
    files, vocab = records
    settings = dict(max_seq_length=32, max_predictions_per_seq=5,
                    train_batch_size=8, warmup_steps=1, shuffle_buffer=100,
                    train_files=tuple(files), vocab_file=vocab,
                    num_train_steps=100, model_dir="unused")
    settings.update(changes)
    config = PretrainConfig(**settings)
    phases = [config.phases()[0].with_files(files)]
    trainer = trainer_lib.Trainer(config, strategy,
                                  bert.BertConfig.for_size("tiny", 600),
                                  phases)
    return trainer, trainer.distributed_iterator(0, 0)


@pytest.fixture
def host_reads(monkeypatch):
    """A list that grows by one per device-to-host copy."""
    reads = []
    original = ops._EagerTensorBase._numpy

    def counted(tensor):
        reads.append(tuple(tensor.shape))
        return original(tensor)

    monkeypatch.setattr(ops._EagerTensorBase, "_numpy", counted)
    return reads


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_call_of_many_updates_reads_the_device_once(records, host_reads,
                                                      replicas):
    strategy = (tf.distribute.get_strategy() if replicas == 1
                else distribute.make_strategy("mirrored"))
    trainer, iterator = _trainer(records, strategy)
    assert trainer.replicas == replicas
    trainer.train_loop(iterator, 2)  # traced and compiled here
    host_reads.clear()
    outcome = trainer.train_loop(iterator, 7)
    assert outcome.updates == 7 and not outcome.stop_requested
    assert len(host_reads) == 1, host_reads
    assert int(trainer.step.numpy()) == 9


def test_a_log_line_reads_every_statistic_at_once(records, host_reads):
    trainer, iterator = _trainer(records, tf.distribute.get_strategy())
    trainer.train_loop(iterator, 3)
    expected_norms = [float(tf.norm(v)) for v in trainer.variables]
    trainer.read_stats()  # traced here
    trainer.train_loop(iterator, 3)
    host_reads.clear()
    stats = trainer.read_stats()
    assert len(host_reads) == 1, len(host_reads)
    n = len(trainer.variables)
    assert len(stats["weight_norms"]) == len(stats["grad_norms"]) == n
    assert len(stats["trust_ratios"]) == n
    # The weights moved in the last 3 updates: the norms read are the new
    # ones, and the gradients' norms are positive.
    assert stats["weight_norms"] != pytest.approx(expected_norms, rel=1e-9)
    assert stats["weight_norms"] == pytest.approx(
        [float(tf.norm(v)) for v in trainer.variables], rel=1e-5)
    assert all(g > 0 for g in stats["grad_norms"])
    assert 0 < stats["mlm_loss"] < 10 and 0 <= stats["mlm_accuracy"] <= 1


def test_a_diverged_update_is_reported_at_the_end_of_its_call(records):
    """The loop no longer stops at the update that diverged: the call runs
    to its end, then names that update's loss."""
    trainer, iterator = _trainer(records, tf.distribute.get_strategy(),
                                 loss_upper_bound=1e9)
    trainer.train_loop(iterator, 1)
    # Every loss is above this bound: the first update of the call
    # diverges, and its loss is the one reported.
    trainer.loss_upper_bound = 1e-3
    trainer._train_loop = tf.function(trainer._train_updates)
    outcome = trainer.train_loop(iterator, 4)
    assert outcome.updates == 4 and outcome.diverged
    assert 1 < outcome.loss < 20
