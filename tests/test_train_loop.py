"""run_pretraining from Python: the config, its checks, and many updates per
host call (steps_per_loop) giving the same weights as one."""

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing
from train import InputError, PretrainConfig, run_pretraining
from train.loop import schedule as schedule_lib
from train.loop.controller import next_stop


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    files, vocab = train_testing.make_records(directory, max_documents=150,
                                              dupe_factor=1)
    return {"train_files": tuple(files), "vocab_file": vocab}


def _config(records, model_dir, **changes):
    settings = dict(max_seq_length=32, max_predictions_per_seq=5,
                    train_batch_size=8, warmup_steps=2, shuffle_buffer=100,
                    learning_rate=1e-2, export_dir="none",
                    model_dir=str(model_dir), **records)
    settings.update(changes)
    return PretrainConfig(**settings)


def _checkpoint_values(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE")}


def test_run_pretraining_returns_metrics(records, tmp_path):
    metrics = run_pretraining(_config(records, tmp_path / "run",
                                      num_train_steps=6, log_steps=3))
    for key in ("step", "mlm_loss", "mlm_accuracy", "nsp_loss",
                "nsp_accuracy", "examples_per_second"):
        assert key in metrics, key
    assert metrics["step"] == 6
    assert [h["step"] for h in metrics["history"]] == [3, 6]
    assert metrics["mlm_loss"] == metrics["history"][-1]["mlm_loss"] > 0
    assert 0 <= metrics["nsp_accuracy"] <= 1
    assert metrics["examples_per_second"] > 0
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("ckpt-6")


@pytest.mark.parametrize("changes", [
    {},
    {"gradient_accumulation_steps": 2},
    {"strategy": "mirrored"},
], ids=["plain", "accumulation", "mirrored"])
def test_steps_per_loop_gives_the_same_weights(records, tmp_path, changes):
    """40 updates, one per call against up to 16 per call: the same data,
    the same dropout, so the same weights and optimizer slots."""
    values = {}
    for per_call in (1, 16):
        model_dir = tmp_path / f"per_call_{per_call}"
        metrics = run_pretraining(_config(
            records, model_dir, num_train_steps=40, log_steps=20,
            save_checkpoints_steps=40, steps_per_loop=per_call, **changes))
        assert metrics["step"] == 40
        values[per_call] = _checkpoint_values(str(model_dir))
    one, many = values[1], values[16]
    assert one.keys() == many.keys()
    assert any("optimizer" in name for name in one)
    for name in one:
        scale = max(float(np.max(np.abs(one[name]))), 1e-30)
        error = float(np.max(np.abs(one[name] - many[name]))) / scale
        assert error <= 1e-6, (name, error)


def test_next_stop_keeps_log_and_checkpoint_updates():
    config = PretrainConfig(steps_per_loop=7, log_steps=5,
                            save_checkpoints_steps=12, num_train_steps=30)
    stops, step = [], 0
    while step < 30:
        step = next_stop(step, 30, config)
        stops.append(step)
    assert stops == [5, 10, 12, 15, 20, 24, 25, 30]
    assert next_stop(0, 3, config) == 3  # the phase ends first


def test_steps_per_loop_keeps_the_log_interval(records, tmp_path):
    metrics = run_pretraining(_config(
        records, tmp_path / "run", num_train_steps=12, log_steps=5,
        save_checkpoints_steps=6, steps_per_loop=100))
    assert [h["step"] for h in metrics["history"]] == [5, 10, 12]
    saved = tf.train.get_checkpoint_state(str(tmp_path / "run"))
    assert [int(p.rsplit("-", 1)[1]) for p in
            saved.all_model_checkpoint_paths] == [0, 6, 12]


def test_default_warmup_is_proportional_to_a_short_run():
    assert PretrainConfig().effective_warmup_steps == 50
    assert PretrainConfig(num_train_steps=100).effective_warmup_steps == 50
    assert PretrainConfig(num_train_steps=30).effective_warmup_steps == 3
    assert PretrainConfig(num_train_steps=1).effective_warmup_steps == 0
    assert PretrainConfig(num_train_steps=40, phase2_steps=10,
                          ).effective_warmup_steps == 3
    with pytest.raises(InputError, match=r"--warmup_steps must be in \[0, 1\]"
                       r".*lower --warmup_steps, raise --num_train_steps"):
        PretrainConfig(num_train_steps=1, warmup_steps=50)


@pytest.mark.parametrize("changes, match", [
    ({"beta_1": 1.5}, r"LAMB setting: .*beta_1"),
    ({"epsilon": -1.0}, r"LAMB setting: .*epsilon"),
    ({"max_trust_ratio": 0.0}, r"LAMB setting: .*max_trust_ratio"),
    ({"exclude_from_layer_adaptation": ["("]}, "invalid regular expression"),
    ({"loss_scale_factor": -2.0}, r"LAMB setting: .*loss_scale_factor"),
    ({"clipvalue": 1.0, "clipnorm": 2.0}, "one gradient clipping"),
    ({"strategy": "gpu_pod"}, r"--strategy must be one of \['one_device'"),
    ({"model_size": "huge"}, r"--model_size must be one of \['tiny'"),
    ({"steps_per_loop": 0}, "--steps_per_loop must be >= 1"),
    ({"mode": "eval"}, "--mode=eval needs --eval_files"),
])
def test_config_rejects_bad_settings(changes, match):
    with pytest.raises(InputError, match=match):
        PretrainConfig(**changes)


def test_clipping_defaults():
    assert PretrainConfig().lamb_arguments()["global_clipnorm"] == 1.0
    arguments = PretrainConfig(clipnorm=0.5).lamb_arguments()
    assert arguments["clipnorm"] == 0.5 and "global_clipnorm" not in arguments
    assert "global_clipnorm" not in PretrainConfig(
        global_clipnorm=0.0).lamb_arguments()


def test_the_trust_ratio_covers_every_variable_by_default():
    """The binary's default keeps LayerNorm and biases in the trust ratio
    (the measured winner, docs/batch_scaling.md); given the decay list
    only, Lamb itself still takes it for both, as TF Addons does."""
    import keras
    from tf_lamb import Lamb
    config = PretrainConfig()
    arguments = config.lamb_arguments()
    assert arguments["exclude_from_weight_decay"] == [
        "LayerNorm", "layer_norm", "bias"]
    assert arguments["exclude_from_layer_adaptation"] == []
    optimizer = Lamb(**arguments)
    gamma = keras.Variable([1.0, 2.0], name="gamma")
    gamma_path_optimizer = Lamb(
        exclude_from_weight_decay=["gamma"])  # TF Addons' meaning
    assert optimizer._use_layer_adaptation(gamma)
    assert not gamma_path_optimizer._use_layer_adaptation(gamma)
    legacy = PretrainConfig(exclude_from_layer_adaptation=None)
    assert legacy.lamb_arguments()["exclude_from_layer_adaptation"] is None


def test_accumulation_conversions_agree_with_the_optimizer():
    accumulation = schedule_lib.GradientAccumulation(4)
    assert accumulation.micro_batch_size(32) == 8
    schedule = schedule_lib.PretrainingSchedule(1.0, 10, warmup_steps=4,
                                                accumulation_steps=4)
    for update in range(10):
        for call in range(4):
            calls = accumulation.first_micro_batch(update) + call
            assert float(schedule(calls)) == pytest.approx(
                float(schedule.rate_at_update(update)))
        assert accumulation.updates(
            accumulation.first_micro_batch(update) + 3) == update
