"""train.runtime.run_dir: the files a run keeps beside its checkpoints,
written whole and read back, on local disk and on a filesystem only
tf.io.gfile reaches (ram://, as a bucket)."""

import json
import uuid

import pytest
import tensorflow as tf

from train import PretrainConfig
from train.runtime import run_dir


@pytest.fixture(params=["local", "ram"])
def model_dir(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "run")
    return f"ram://run_dir_test/{uuid.uuid4().hex}/run"


def test_files_are_written_whole_and_read_back(model_dir):
    run_dir.write(model_dir, {run_dir.SCHEDULE: '{"a": 1}\n'})
    run_dir.write(model_dir, {run_dir.SCHEDULE: '{"b": 2}\n'})
    # Rewritten, not appended to (ram:// appends to a file opened again).
    assert run_dir.read_json(model_dir, run_dir.SCHEDULE) == {"b": 2}
    assert sorted(tf.io.gfile.listdir(model_dir)) == [run_dir.SCHEDULE]
    assert run_dir.read_json(model_dir, run_dir.CONFIG) is None


def test_config_json_records_settings_and_resolved_values(model_dir):
    config = PretrainConfig(num_train_steps=30, do_lower_case=False,
                            model_dir=model_dir)
    run_dir.write(model_dir, {run_dir.CONFIG: run_dir.config_text(config)})
    recorded = run_dir.read_json(model_dir, run_dir.CONFIG)
    assert recorded["settings"]["num_train_steps"] == 30
    assert recorded["settings"]["warmup_steps"] is None
    # The warmup the run used: 10% of a run shorter than 50 updates.
    assert recorded["resolved"]["effective_warmup_steps"] == \
        config.effective_warmup_steps == 3
    assert run_dir.recorded_setting(model_dir, "do_lower_case", True) is False


def test_a_setting_comes_from_config_json_then_the_examples_then_default(
        model_dir):
    assert run_dir.recorded_setting(model_dir, "do_lower_case", True) is True
    run_dir.write(model_dir, {run_dir.DATA_METADATA: json.dumps(
        {"key": {"do_lower_case": False}})})
    assert run_dir.recorded_setting(model_dir, "do_lower_case", True) is False
    run_dir.write(model_dir, {run_dir.CONFIG: json.dumps(
        {"settings": {"do_lower_case": True}})})
    assert run_dir.recorded_setting(model_dir, "do_lower_case", False) is True
    # A config.json that is not JSON (a truncated write of an older
    # version) is passed over, not fatal.
    run_dir.write(model_dir, {run_dir.CONFIG: '{"settings": {"do_lo'})
    assert run_dir.recorded_setting(model_dir, "do_lower_case", True) is False


def test_the_vocabulary_is_copied_unless_it_is_the_run_file(model_dir,
                                                             tmp_path):
    source = tmp_path / "vocab_source.txt"
    source.write_text("[PAD]\n[UNK]\nhello\n")
    run_dir.copy_vocab(model_dir, str(source))
    vocab = run_dir.path(model_dir, run_dir.VOCAB)
    with tf.io.gfile.GFile(vocab) as fh:
        assert fh.read() == "[PAD]\n[UNK]\nhello\n"
    run_dir.copy_vocab(model_dir, vocab)  # itself: left as it is
    with tf.io.gfile.GFile(vocab) as fh:
        assert fh.read() == "[PAD]\n[UNK]\nhello\n"
