"""Faults inside a run, through run_pretraining: skipped updates (real
inf gradients), divergence with recovery to a real checkpoint, and
checkpoints that cannot be read or written (docs/failures.md)."""

import glob
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train import PretrainConfig, run_pretraining
from train.loop import actions
from train.loop import trainer as trainer_lib
from train.runtime import errors

SMALL = dict(max_seq_length=32, max_predictions_per_seq=5,
             train_batch_size=8, warmup_steps=1, shuffle_buffer=100,
             learning_rate=1e-2, export_dir="none")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    files, vocab = _testing.make_records(directory, max_documents=150,
                                         dupe_factor=1)
    return dict(train_files=tuple(files), vocab_file=vocab)


def _config(records, model_dir, **changes):
    return PretrainConfig(**dict(SMALL, **records, model_dir=str(model_dir),
                                 **changes))


def _event_values(directory, tag):
    values = []
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append((event.step, float(
                        tf.make_ndarray(value.tensor))))
    return sorted(values)


def test_updates_with_inf_gradients_are_counted(records, tmp_path, capsys):
    """A static loss scale of 1e39 (inf in float32) makes every update's
    gradients inf or NaN: LAMB skips every update, so the weights stay as
    initialised, and all count."""
    config = _config(records, tmp_path / "run", num_train_steps=4,
                     log_steps=2, save_checkpoints_steps=4,
                     loss_scale_factor=1e39)
    result = run_pretraining(config)
    assert result["skipped_updates"] == 4
    assert [h["skipped_updates"] for h in result["history"]] == [2, 4]
    assert _event_values(str(tmp_path / "run" / "train"),
                         "skipped_updates") == [(2, 2.0), (4, 4.0)]
    out = capsys.readouterr().out
    assert re.search(r"^step\s+4/4 .* skipped 4 ", out, re.M)
    assert "Warning: 2 of the 2 updates up to 4 were skipped" in out
    fresh = trainer_lib.Trainer(config, tf.distribute.get_strategy(),
                                result["bert_config"],
                                [config.phases()[0]])
    for trained, initial in zip(result["trainer"].variables,
                                fresh.variables):
        np.testing.assert_array_equal(trained.numpy(), initial.numpy())
    # A plain run of the same data skips none.
    plain = run_pretraining(_config(records, tmp_path / "plain",
                                    num_train_steps=2, log_steps=2))
    assert plain["skipped_updates"] == 0


def test_every_update_skipped_for_long_stops_the_run(records, tmp_path,
                                                    monkeypatch):
    """The same inf loss scale, with the stretch that stops a run cut from
    50 updates to 4: it stops at the log line of update 4, not at 10."""
    monkeypatch.setattr(actions, "SKIPPED_STOP_UPDATES", 4)
    config = _config(records, tmp_path / "run", num_train_steps=10,
                     log_steps=2, save_checkpoints_steps=10,
                     loss_scale_factor=1e39)
    with pytest.raises(errors.DivergenceError) as raised:
        run_pretraining(config)
    assert str(raised.value).startswith(
        "Every update from 1 to 4 was skipped: the gradients were not "
        "finite. Lower --learning_rate")


def test_divergence_goes_back_to_the_last_checkpoint_then_stops(
        records, tmp_path, capsys):
    model_dir = tmp_path / "run"
    config = _config(records, model_dir, learning_rate=20.0,
                     warmup_steps=20, num_train_steps=40, log_steps=1,
                     save_checkpoints_steps=2, recovery_max_trials=2)
    with pytest.raises(errors.DivergenceError) as raised:
        run_pretraining(config)
    message = str(raised.value)
    match = re.match(r"Training diverged at update (\d+): loss (\S+) "
                     r"\(limit --loss_upper_bound=1e\+06\) at learning rate "
                     r"(\S+), after 2 recovery trial\(s\)\. Lower "
                     r"--learning_rate .* rerun to resume from (\S+)$",
                     message)
    assert match, message
    update, loss, rate = int(match.group(1)), float(match.group(2)), float(
        match.group(3))
    assert loss > 1e6 and rate == pytest.approx(20.0 * update / 20)
    saved = (update - 1) // 2 * 2
    newest = str(model_dir / f"ckpt-{saved}")
    assert match.group(4) == newest
    assert tf.train.latest_checkpoint(str(model_dir)) == newest
    out = capsys.readouterr().out
    warnings = re.findall(r"^Warning: loss (\S+) at update (\d+) .* back to "
                          r"update (\d+) \((\S+)\), trial (\d) of 2$", out,
                          re.M)
    # Each retry from the same checkpoint replays the same updates exactly.
    assert warnings == [(match.group(2), str(update), str(saved), newest,
                         "1"),
                        (match.group(2), str(update), str(saved), newest,
                         "2")]
    # Every update logged before was within the bound; none was saved after.
    losses = [float(m) + float(n) for m, n in re.findall(
        r"mlm_loss (\S+)\s+nsp_loss (\S+)", out)]
    assert losses and max(losses) <= 1e6
    assert not glob.glob(str(model_dir / f"ckpt-{saved + 2}*"))


def test_unreadable_and_unwritable_checkpoints(records, tmp_path, capsys):
    model_dir = tmp_path / "run"

    def run(steps):
        return run_pretraining(_config(records, model_dir,
                                       num_train_steps=steps, log_steps=2,
                                       save_checkpoints_steps=2))

    run(4)
    # The newest checkpoint's data file cut short: back to the one before.
    data_file = model_dir / "ckpt-4.data-00000-of-00001"
    with open(data_file, "r+b") as fh:
        fh.truncate(os.path.getsize(data_file) // 2)
    capsys.readouterr()
    assert run(6)["start_step"] == 2
    out = capsys.readouterr().out
    assert re.search(rf"^Warning: checkpoint {model_dir}/ckpt-4 cannot be "
                     rf"read \(.+\); resuming from the previous one, "
                     rf"{model_dir}/ckpt-2$", out, re.M), out
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")
    # ckpt-8 cannot be written: a directory stands where its index goes
    # (the tests run as root, whom file permissions do not stop).
    blocker = model_dir / "ckpt-8.index"
    blocker.mkdir()
    with pytest.raises(errors.CheckpointError) as raised:
        run(8)
    assert re.match(rf"Cannot write checkpoint {model_dir}/ckpt-8 \(.*Is a "
                    rf"directory\); the newest checkpoint is still "
                    rf"{model_dir}/ckpt-6\.", str(raised.value)), raised.value
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")
    shutil.rmtree(blocker)
    assert run(8)["start_step"] == 6


def test_no_readable_checkpoint_is_an_error_naming_it(records, tmp_path):
    model_dir = tmp_path / "run"
    run_pretraining(_config(records, model_dir, num_train_steps=2,
                            log_steps=2))
    # A missing shard in each: ckpt-2 and the starting state, ckpt-0.
    os.remove(model_dir / "ckpt-2.data-00000-of-00001")
    os.remove(model_dir / "ckpt-0.data-00000-of-00001")
    with pytest.raises(errors.CheckpointError,
                       match=rf"No checkpoint in {model_dir} can be read: "
                             rf"{model_dir}/ckpt-2: .+; {model_dir}/ckpt-0: "
                             rf".+\. Move them aside"):
        run_pretraining(_config(records, model_dir, num_train_steps=4,
                                log_steps=2))
