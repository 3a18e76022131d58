"""The training stream's order as a function of its position
(train/order.py): a pipeline started at a position yields what the
uninterrupted one yields from there, a resume far into the stream reads at
most one block of records, and a resumed run equals an uninterrupted one."""

import os

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing
from train import PretrainConfig, run_pretraining
from train.data import order
from train.data import reading
from train.loop import checkpoints
from train.loop import trainer as trainer_lib
from train.model import bert

SEQ, PREDS = 32, 5


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Three small files, so that a block (a group of the files read
    round-robin) and the epochs are a few dozen records."""
    directory = str(tmp_path_factory.mktemp("records"))
    files, vocab = train_testing.make_records(directory, shards=3,
                                              max_documents=60,
                                              dupe_factor=1)
    counts = [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in files]
    return {"files": files, "vocab": vocab, "counts": counts}


def _elements(dataset, count):
    return [(record.numpy(), tuple(tag.numpy()))
            for record, tag in dataset.take(count)]


@pytest.mark.parametrize("pipelines,files_used", [(1, 3), (2, 3), (2, 1)],
                         ids=["one", "files_sharded", "records_sharded"])
def test_a_stream_started_at_a_position_goes_on_as_the_whole_one(
        records, pipelines, files_used):
    files = records["files"][:files_used]
    window = 7
    for pipeline in range(pipelines):
        whole = _elements(order.stream(files, 5, window, pipelines,
                                            pipeline), 400)
        tags = [tag for _, tag in whole]
        # Tags name the pipeline and grow along the stream, over several
        # blocks.
        assert {t[0] for t in tags} == {pipeline}
        assert tags == sorted(tags) and len(set(tags)) == len(tags)
        assert len({t[1] for t in tags}) >= 3
        for k in (1, 6, 7, 30, 101, 153, 154, 390):
            _, block, index = whole[k - 1][1]
            resumed = _elements(order.stream(
                files, 5, window, pipelines, pipeline,
                start=(block, index + 1)), 400 - k)
            assert resumed == whole[k:], (pipeline, k)


def test_the_order_covers_each_epoch_once_and_depends_on_the_seed(records):
    files = records["files"]
    per_epoch = sum(records["counts"])
    blocks = order.groups_per_epoch(len(files))
    first = _elements(order.stream(files, 5, 10), 2 * per_epoch)
    # One block per epoch here (3 files, cycle 3): each holds every record
    # once, in another order.
    assert blocks == 1
    epochs = [first[:per_epoch], first[per_epoch:]]
    everything = sorted(r for r in tf.data.TFRecordDataset(files)
                        .as_numpy_iterator())
    for epoch in epochs:
        assert sorted(r for r, _ in epoch) == everything
    assert [r for r, _ in epochs[0]] != [r for r, _ in epochs[1]]
    other = _elements(order.stream(files, 6, 10), per_epoch)
    assert [r for r, _ in other] != [r for r, _ in epochs[0]]
    again = _elements(order.stream(files, 5, 10), per_epoch)
    assert again == epochs[0]


def _trainer(records, strategy, **changes):
    settings = dict(max_seq_length=SEQ, max_predictions_per_seq=PREDS,
                    train_batch_size=8, warmup_steps=1, shuffle_buffer=10,
                    train_files=tuple(records["files"]),
                    vocab_file=records["vocab"], num_train_steps=100)
    settings.update(changes)
    config = PretrainConfig(**settings)
    phases = [config.phases()[0].with_files(records["files"])]
    bert_config = bert.BertConfig.for_size("tiny", 600)
    return trainer_lib.Trainer(config, strategy, bert_config, phases)


def _consume(trainer, iterator, micro_steps):
    """The input ids each replica gets for `micro_steps` micro-steps, with
    the positions recorded as the training step records them."""
    strategy = trainer.strategy

    @tf.function
    def step(features):
        def replica(features):
            trainer.data_position.record(
                features[order.POSITION_KEY],
                tf.distribute.get_replica_context())
            return features["input_ids"]
        return strategy.run(replica, args=(features,))

    seen = []
    for _ in range(micro_steps):
        ids = step(next(iterator))
        seen.append([t.numpy() for t in
                     strategy.experimental_local_results(ids)])
    return seen


def test_the_trainer_resumes_two_replicas_where_they_were(records, capsys):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    trainer = _trainer(records, strategy)
    iterator = trainer.distributed_iterator(0, 0)
    seen = _consume(trainer, iterator, 30)
    # The two replicas got different examples.
    assert not np.array_equal(seen[0][0], seen[0][1])
    # Resumed from the positions recorded after micro-step 30: both
    # replicas go on with what the running iterator gives them next.
    resumed = trainer.distributed_iterator(0, 30)
    np.testing.assert_array_equal(np.array(_consume(trainer, resumed, 8)),
                                  np.array(_consume(trainer, iterator, 8)))
    assert "Warning" not in capsys.readouterr().out


class _CountingRecords:
    """tf.data.TFRecordDataset, counting every record read."""

    def __init__(self, real):
        self.real = real
        self.count = tf.Variable(0, dtype=tf.int64)

    def __call__(self, *args, **kwargs):
        def counted(record):
            with tf.control_dependencies([self.count.assign_add(1)]):
                return tf.identity(record)
        return self.real(*args, **kwargs).map(counted)


def test_a_resume_far_into_the_stream_reads_at_most_one_block(
        records, monkeypatch, capsys):
    """At update 2000 (8000 records, over 50 epochs of these files), the
    first batch comes after reading at most the records of one block (plus
    what the stages after it draw ahead); replaying reads them all."""
    trainer = _trainer(records, tf.distribute.get_strategy(),
                       train_batch_size=4)
    files, window = records["files"], trainer.config.shuffle_buffer
    updates = 2000
    consumed = updates * 4
    expected = list(order.stream(files, trainer.config.seed, window)
                    .skip(consumed - 1).take(5).as_numpy_iterator())
    # As if the run had trained to update 2000: the position of its last
    # record, under this layout.
    iterator = trainer.distributed_iterator(0, 0)
    trainer.data_position.positions.assign(
        np.array([expected[0][1]], np.int64))
    counting = _CountingRecords(tf.data.TFRecordDataset)
    monkeypatch.setattr(tf.data, "TFRecordDataset", counting)
    iterator = trainer.distributed_iterator(0, updates)
    batch = next(iterator)
    read = int(counting.count.numpy())
    block = sum(records["counts"])
    assert read <= block + 2 * window + 64, read
    assert "Warning" not in capsys.readouterr().out
    np.testing.assert_array_equal(
        batch[order.POSITION_KEY].numpy(),
        np.array([tag for _, tag in expected[1:]]))
    wanted = reading.parse_batch(
        tf.constant([r for r, _ in expected[1:]]), SEQ, PREDS)
    np.testing.assert_array_equal(batch["input_ids"].numpy(),
                                  wanted["input_ids"].numpy())
    # Without a usable position (here: another layout recorded) the
    # stream is replayed from the start, reading every record before.
    trainer.data_position.layout.assign(tf.zeros_like(
        trainer.data_position.layout))
    counting.count.assign(0)
    replayed = next(trainer.distributed_iterator(0, updates))
    assert int(counting.count.numpy()) >= consumed
    np.testing.assert_array_equal(replayed["input_ids"].numpy(),
                                  wanted["input_ids"].numpy())
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if "Warning" in line]
    assert len(warnings) == 1 and "replaying" in warnings[0], warnings


def test_a_checkpoint_without_positions_restores_and_replays(
        records, tmp_path, capsys):
    """A checkpoint of an older version (no data position) is restored
    whole; the resume replays the data, with one warning."""
    trainer = _trainer(records, tf.distribute.get_strategy())
    trainer.step.assign(3)
    old = tf.train.Checkpoint(model=trainer.model,
                              optimizer=trainer.optimizer, step=trainer.step,
                              skipped_updates=trainer.skipped_updates)
    path = old.save(str(tmp_path / "ckpt"))
    first = _consume(trainer, trainer.distributed_iterator(0, 0), 4)
    fresh = _trainer(records, tf.distribute.get_strategy())
    saved = checkpoints.RunCheckpoints(fresh, str(tmp_path / "run"), 2)
    saved.restore(path)
    assert int(fresh.step.numpy()) == 3
    assert (fresh.data_position.positions.numpy() == -1).all()
    capsys.readouterr()
    resumed = _consume(fresh, fresh.distributed_iterator(0, 3), 1)
    np.testing.assert_array_equal(resumed[0], first[3])
    out = capsys.readouterr().out
    assert out.count("Warning") == 1 and "replaying" in out


def _values(path):
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if not name.startswith(("_CHECKPOINTABLE", "save_counter"))}


def test_a_resumed_mirrored_run_equals_the_uninterrupted_one(
        records, tmp_path, capsys):
    """Two replicas, two micro-batches an update, several epochs: resumed
    from update 6 of 12, the run ends with the uninterrupted run's
    weights, optimizer slots and data positions, without replaying."""
    settings = dict(
        max_seq_length=SEQ, max_predictions_per_seq=PREDS,
        train_batch_size=16, gradient_accumulation_steps=2,
        strategy="mirrored", warmup_steps=1, shuffle_buffer=10,
        learning_rate=1e-2, export_dir="none", num_train_steps=12,
        save_checkpoints_steps=6, log_steps=6,
        train_files=tuple(records["files"]), vocab_file=records["vocab"],
        bert_config_file=_bert_config(records, tmp_path))
    whole = str(tmp_path / "whole")
    run_pretraining(PretrainConfig(model_dir=whole, **settings))
    # The resumed run: the uninterrupted run's directory as it was after
    # update 6.
    resumed = str(tmp_path / "resumed")
    os.makedirs(resumed)
    for name in os.listdir(whole):
        path = os.path.join(whole, name)
        if os.path.isfile(path) and not name.startswith(
                ("ckpt-12.", "checkpoint", "events")):
            tf.io.gfile.copy(path, os.path.join(resumed, name))
    with open(os.path.join(resumed, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-6"\n'
                'all_model_checkpoint_paths: "ckpt-6"\n')
    capsys.readouterr()
    result = run_pretraining(PretrainConfig(model_dir=resumed, **settings))
    assert result["start_step"] == 6 and result["step"] == 12
    assert "replaying" not in capsys.readouterr().out
    a = _values(os.path.join(whole, "ckpt-12"))
    b = _values(os.path.join(resumed, "ckpt-12"))
    assert a.keys() == b.keys()
    assert any(name.startswith("data_position/") for name in a)
    # 12 updates of 16 records went past the first epoch.
    assert sum(records["counts"]) < 12 * 16
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def _bert_config(records, tmp_path):
    import json
    size = len(open(records["vocab"]).read().splitlines())
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps(dict(train_testing.SMALL_BERT_CONFIG,
                                    vocab_size=size)))
    return str(path)


def test_a_run_resumed_on_more_replicas_replays_with_a_warning(
        records, tmp_path, capsys):
    """Positions recorded by one replica do not fit two: the checkpoint
    still restores (weights, slots, update count), and the data is
    replayed from the phase's start, with one warning."""
    settings = dict(
        max_seq_length=SEQ, max_predictions_per_seq=PREDS,
        train_batch_size=8, warmup_steps=1, shuffle_buffer=10,
        export_dir="none", save_checkpoints_steps=2, log_steps=2,
        recovery_max_trials=0, train_files=tuple(records["files"]),
        vocab_file=records["vocab"],
        bert_config_file=_bert_config(records, tmp_path))
    model_dir = str(tmp_path / "run")
    run_pretraining(PretrainConfig(model_dir=model_dir, num_train_steps=2,
                                   **settings))
    capsys.readouterr()
    result = run_pretraining(PretrainConfig(
        model_dir=model_dir, num_train_steps=4, strategy="mirrored",
        **settings))
    assert result["start_step"] == 2 and result["step"] == 4
    assert result["trainer"].replicas == 2
    out = capsys.readouterr().out
    assert out.count("replaying the first 2 updates' data") == 1, out
