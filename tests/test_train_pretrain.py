"""Pretraining runs (tiny model, few steps) through run_pretraining, and the
command line's own behaviour: flags to config, help, a killed process."""

import dataclasses
import glob
import json
import os
import re
import time

import numpy as np
import pytest
import tensorflow as tf

from tests.support import train_testing as _testing
from train import flags as train_flags
from train import PretrainConfig, run_pretraining
from train.config import PretrainConfig as ConfigClass

SMALL = ["--max_seq_length=32", "--max_predictions_per_seq=5",
         "--train_batch_size=8", "--warmup_steps=1", "--shuffle_buffer=100",
         "--learning_rate=1e-2"]
SMALL_CONFIG = dict(max_seq_length=32, max_predictions_per_seq=5,
                    train_batch_size=8, warmup_steps=1, shuffle_buffer=100,
                    learning_rate=1e-2)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    files, vocab = _testing.make_records(directory)
    files2, _ = _testing.make_records(directory, seq_length=64,
                                      predictions=10, vocab_file=vocab,
                                      name="long", shards=1)
    return {"files": files, "vocab": vocab, "files2": files2}


def _data_args(records):
    return [f"--train_files={','.join(records['files'])}",
            f"--vocab_file={records['vocab']}"]


def _run(records, model_dir, **changes):
    settings = dict(SMALL_CONFIG, train_files=records["files"],
                    vocab_file=records["vocab"], model_dir=str(model_dir))
    settings.update(changes)
    return run_pretraining(PretrainConfig(**settings))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """The default corpus and defaults, with fewer steps and shorter
    sequences."""
    model_dir = str(tmp_path_factory.mktemp("default") / "run")
    result = run_pretraining(PretrainConfig(
        model_dir=model_dir, num_train_steps=4, log_steps=2,
        max_seq_length=32, max_predictions_per_seq=5, train_batch_size=8,
        warmup_steps=1, dupe_factor=1, vocab_size=1000,
        save_checkpoints_steps=2))
    return model_dir, result


def _event_tags(directory):
    tags = set()
    for path in glob.glob(os.path.join(directory, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.add(value.tag)
    return tags


def test_default_run_writes_everything(default_run):
    model_dir, result = default_run
    assert os.path.exists(os.path.join(model_dir, "data", "phase1.tfrecord"))
    vocab = open(os.path.join(model_dir, "vocab.txt")).read().splitlines()
    assert result["bert_config"].vocab_size == len(vocab)
    assert tf.train.latest_checkpoint(model_dir).endswith("ckpt-4")
    assert [h["step"] for h in result["history"]] == [2, 4]
    for record in result["history"]:
        assert np.isfinite(record["mlm_loss"]) and record["mlm_loss"] > 0
        assert 0 <= record["mlm_accuracy"] <= 1
        assert record["examples_per_second"] > 0
    tags = _event_tags(os.path.join(model_dir, "train"))
    for tag in ("mlm_loss", "nsp_loss", "mlm_accuracy", "learning_rate",
                "examples_per_second",
                "trust_ratio/bert/encoder/layer_0/attention/self/query/kernel",
                "grad_norm/cls/predictions/output_bias"):
        assert tag in tags
    assert os.path.exists(os.path.join(model_dir, "export", "saved_model.pb"))


def test_savedmodel_reload_matches_the_model(default_run):
    _, result = default_run
    encoder = result["trainer"].model.encoder
    loaded = tf.saved_model.load(result["export_dir"])
    serve = loaded.signatures["serving_default"]
    rng = np.random.default_rng(0)
    ids = rng.integers(5, result["bert_config"].vocab_size, (3, 20)).astype(
        np.int32)
    mask = np.ones_like(ids)
    mask[1, 12:] = 0
    segments = np.zeros_like(ids)
    segments[:, 10:] = 1
    outputs = serve(input_word_ids=tf.constant(ids),
                    input_mask=tf.constant(mask),
                    input_type_ids=tf.constant(segments))
    sequence, pooled = encoder(tf.constant(ids), tf.constant(mask),
                               tf.constant(segments))
    assert outputs["sequence_output"].shape == (3, 20, 128)
    np.testing.assert_allclose(outputs["sequence_output"], sequence,
                               atol=1e-5)
    np.testing.assert_allclose(outputs["pooled_output"], pooled, atol=1e-5)


def test_default_data_is_reused(default_run, capsys):
    model_dir, _ = default_run
    before = os.path.getmtime(os.path.join(model_dir, "data",
                                           "phase1.tfrecord"))
    result = run_pretraining(PretrainConfig(
        model_dir=model_dir, num_train_steps=5, log_steps=1,
        max_seq_length=32, max_predictions_per_seq=5, train_batch_size=8,
        warmup_steps=1, dupe_factor=1, vocab_size=1000, export_dir="none"))
    out = capsys.readouterr().out
    assert "Reusing the examples" in out and "Resumed from" in out
    assert result["start_step"] == 4
    assert [h["step"] for h in result["history"]] == [5]
    assert os.path.getmtime(os.path.join(model_dir, "data",
                                         "phase1.tfrecord")) == before


def test_mlm_loss_falls(records, tmp_path):
    result = _run(records, tmp_path / "run", num_train_steps=48,
                  log_steps=8, train_batch_size=16, warmup_steps=4,
                  export_dir="none")
    losses = [h["mlm_loss"] for h in result["history"]]
    assert len(losses) == 6
    assert losses[-1] < losses[0] - 0.3, losses
    assert losses[-1] < min(losses[:3]), losses


def _checkpoint_values(model_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(model_dir))
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()
            if not name.startswith("_CHECKPOINTABLE")}


def test_resume_after_kill_equals_uninterrupted(records, tmp_path):
    args = SMALL + _data_args(records) + [
        "--num_train_steps=30", "--save_checkpoints_steps=3",
        "--log_steps=1", "--export_dir=none"]
    killed_dir = str(tmp_path / "killed")
    log = str(tmp_path / "killed.log")
    process = _testing.start(["-m", "train.pretrain",
                              f"--model_dir={killed_dir}"] + args, log)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and process.poll() is None:
            latest = tf.train.latest_checkpoint(killed_dir)
            if latest and int(latest.rsplit("-", 1)[1]) >= 7:
                break
            time.sleep(0.05)
        assert process.poll() is None, open(log).read()[-3000:]
    finally:
        _testing.kill(process)
    text = open(log).read()
    printed = [int(s) for s in re.findall(r"^step\s+(\d+)/30", text, re.M)]
    assert printed and printed[-1] < 30
    saved = int(tf.train.latest_checkpoint(killed_dir).rsplit("-", 1)[1])
    # At most one checkpoint interval is lost.
    assert saved >= printed[-1] - 3
    resumed = _testing.run_flags([f"--model_dir={killed_dir}"] + args)
    assert resumed["start_step"] == saved
    whole_dir = str(tmp_path / "whole")
    _testing.run_flags([f"--model_dir={whole_dir}"] + args)
    a, b = _checkpoint_values(killed_dir), _checkpoint_values(whole_dir)
    assert a.keys() == b.keys()
    assert any("optimizer" in k for k in a)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)



def test_resume_with_more_updates_warns_of_the_schedule_change(
        records, tmp_path, capsys):
    """A run of 4 updates resumed with --num_train_steps=8 goes on with the
    schedule of 8 updates (docs/pretraining.md), and says in one line that
    its horizon changed and the rate jumps: 2.5e-3 at update 4 (1e-2 *
    (1 - 3/4)) to 5e-3 at update 5 (1e-2 * (1 - 4/8))."""
    model_dir = tmp_path / "run"
    _run(records, model_dir, num_train_steps=4, log_steps=1,
         export_dir="none")
    first = capsys.readouterr().out
    assert "Warning" not in first
    result = _run(records, model_dir, num_train_steps=8, log_steps=1,
                  export_dir="none")
    out = capsys.readouterr().out
    warnings = [line for line in out.splitlines() if "schedule" in line]
    assert warnings == [
        "Warning: resuming at update 4 with another learning-rate schedule: "
        "horizon (--num_train_steps) 4 -> 8 updates; the rate jumps from "
        "2.500e-03 (update 4) to 5.000e-03 (update 5). The schedule of the "
        "new flags is used from here on"], out
    assert result["start_step"] == 4
    rates = [h["learning_rate"] for h in result["history"]]
    assert rates[0] == pytest.approx(5e-3)
    assert rates[-1] == pytest.approx(1.25e-3)
    with open(model_dir / "schedule.json") as fh:
        assert json.load(fh)["phase1_steps"] == 8

def test_two_phases_with_gradient_accumulation(records, tmp_path):
    result = _run(records, tmp_path / "run", num_train_steps=4,
                  phase2_steps=2, phase2_max_seq_length=64,
                  phase2_max_predictions_per_seq=10,
                  phase2_train_files=records["files2"][:1],
                  gradient_accumulation_steps=2, log_steps=1,
                  export_dir="none", phase2_warmup_steps=1)
    trainer = result["trainer"]
    assert int(trainer.step.numpy()) == 4
    assert int(trainer.optimizer.iterations.numpy()) == 4  # updates
    # The trainer adds up the micro-batches: one optimizer call an update.
    assert int(trainer.optimizer._iterations.numpy()) == 4
    rates = [h["learning_rate"] for h in result["history"]]
    # Phase 1 decays; phase 2 warms up to the peak again.
    assert rates[1] < rates[0] and rates[2] == pytest.approx(1e-2)
    assert all(np.isfinite(h["mlm_loss"]) for h in result["history"])


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision(records, tmp_path, precision):
    try:
        result = _run(records, tmp_path / "run", num_train_steps=2,
                      log_steps=1, mixed_precision=precision)
    finally:
        import keras
        keras.mixed_precision.set_global_policy("float32")
    assert all(np.isfinite(h["mlm_loss"]) for h in result["history"])
    assert result["trainer"].variables[0].dtype == "float32"


def test_jit_compile_with_static_loss_scale_and_ema(records, tmp_path):
    result = _run(records, tmp_path / "run", num_train_steps=3, log_steps=1,
                  jit_compile=True, export_dir="none", loss_scale_factor=128,
                  use_ema=True, max_trust_ratio=10)
    assert all(np.isfinite(h["mlm_loss"]) for h in result["history"])
    optimizer = result["trainer"].optimizer
    assert optimizer.jit_compile and optimizer.loss_scale_factor == 128
    assert optimizer.use_ema and optimizer.max_trust_ratio == 10


def test_help_lists_every_flag_with_help():
    result = _testing.run(["-m", "train.pretrain", "--helpfull"], timeout=60)
    text = result.stdout  # absl exits with 1 after the help
    assert "train.pretrain" in text, result.stderr[-2000:]
    for name in ("strategy", "tpu", "num_gpus", "model_size",
                 "bert_config_file", "train_files", "tfds_name",
                 "vocab_file", "max_seq_length", "max_predictions_per_seq",
                 "train_batch_size", "gradient_accumulation_steps",
                 "num_train_steps", "learning_rate", "warmup_steps",
                 "phase2_steps", "phase2_max_seq_length", "beta_1", "beta_2",
                 "epsilon", "weight_decay", "max_trust_ratio",
                 "global_clipnorm", "mixed_precision", "jit_compile",
                 "model_dir", "save_checkpoints_steps", "export_dir", "seed"):
        assert re.search(rf"--(\[no\])?{name}: \S", text), name
    for flag in _testing.parse_flags([]).get_key_flags_for_module(
            train_flags):
        assert flag.help and flag.help.strip(), flag.name


def test_bert_config_file_with_a_learnt_vocabulary(records, tmp_path):
    config = tmp_path / "bert_config.json"
    config.write_text(json.dumps({
        "vocab_size": 8000, "hidden_size": 64, "num_hidden_layers": 1,
        "num_attention_heads": 4, "intermediate_size": 128,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 64,
        "type_vocab_size": 2, "initializer_range": 0.02}))
    text = os.path.join(os.path.dirname(records["vocab"]), "corpus.txt")
    model_dir = tmp_path / "run"
    result = run_pretraining(PretrainConfig(
        input_file=text, bert_config_file=str(config),
        model_dir=str(model_dir), num_train_steps=2, log_steps=1,
        dupe_factor=1, export_dir="none", **SMALL_CONFIG))
    vocab = (model_dir / "vocab.txt").read_text().splitlines()
    # The learnt vocabulary (about 3,200 tokens of this text) is padded to
    # the config's size.
    assert len(vocab) == 8000 and vocab[-1].startswith("[unused")
    assert result["bert_config"].hidden_size == 64
    saved = json.loads((model_dir / "bert_config.json").read_text())
    assert saved == json.loads(config.read_text())
    kernel = [v for v in result["trainer"].variables
              if v.path == "bert/encoder/layer_0/attention/self/query/kernel"]
    assert kernel and tuple(kernel[0].shape) == (64, 64)


def test_every_setting_is_a_flag_with_the_same_default():
    values = _testing.parse_flags([])
    config = train_flags.config_from_flags(values)
    assert config == ConfigClass()
    for field in dataclasses.fields(ConfigClass):
        assert field.name in values, field.name
        default = values[field.name].default
        if isinstance(default, list):
            default = tuple(default)
        if field.default is not None and default is not None:
            assert default == field.default, field.name


def test_flags_to_config():
    config = train_flags.config_from_flags(_testing.parse_flags([
        "--train_files=a.tfrecord,b.tfrecord", "--vocab_file=v.txt",
        "--clipnorm=0.5", "--steps_per_loop=10", "--num_train_steps=20",
        "--exclude_from_weight_decay=bias", "--mode=train_and_eval",
        "--eval_files=e.tfrecord", "--init_checkpoint=/ckpt"]))
    assert config.train_files == ("a.tfrecord", "b.tfrecord")
    assert config.exclude_from_weight_decay == ("bias",)
    # --global_clipnorm's default gives way to --clipnorm.
    assert config.global_clipnorm is None and config.clipnorm == 0.5
    assert config.lamb_arguments()["clipnorm"] == 0.5
    # --warmup_steps not given: proportional for a run shorter than 50.
    assert config.warmup_steps is None and config.effective_warmup_steps == 2
    assert config.steps_per_loop == 10 and config.mode == "train_and_eval"
    assert config.init_checkpoint == "/ckpt"
    given = train_flags.config_from_flags(_testing.parse_flags(
        ["--warmup_steps=5", "--num_train_steps=20"]))
    assert given.effective_warmup_steps == 5



def _replayed(argv, tmp_path):
    """The config that --flagfile=<the flags.txt of `argv`'s run> gives,
    and that file's text."""
    config = train_flags.config_from_flags(_testing.parse_flags(argv))
    text = train_flags.flags_file(config, _testing.parse_flags(argv))
    path = tmp_path / "flags.txt"
    path.write_text(text)
    return train_flags.config_from_flags(
        _testing.parse_flags([f"--flagfile={path}"])), config, text


@pytest.mark.parametrize("argv", [
    ["--num_train_steps=30"],
    ["--num_train_steps=30", "--warmup_steps=7", "--clipnorm=0.5",
     "--nodo_lower_case", "--exclude_from_layer_adaptation=",
     "--train_files=a.tfrecord,b.tfrecord", "--vocab_file=v.txt"],
    ["--bert_config_file=c.json", "--global_clipnorm=0",
     "--phase2_steps=100", "--phase2_learning_rate=1e-3"],
])
def test_flags_file_replays_the_settings(argv, tmp_path):
    """flags.txt holds the values the run used (the resolved warmup), only
    this program's flags, and reads back as the same settings."""
    replayed, config, text = _replayed(argv, tmp_path)
    fields = {f.name for f in dataclasses.fields(ConfigClass)}
    names = [re.match(r"^--(?:no)?(\w+)", line).group(1)
             for line in text.splitlines()]
    assert set(names) <= fields | {"no" + f for f in fields}, text
    for absl_flag in ("test_tmpdir", "stderrthreshold", "verbosity",
                      "logtostderr", "flagfile"):
        assert f"--{absl_flag}" not in text
    assert replayed.effective_warmup_steps == config.effective_warmup_steps
    assert f"--warmup_steps={config.effective_warmup_steps}\n" in text
    assert replayed.lamb_arguments() == config.lamb_arguments()
    assert replayed.phases() == config.phases()
    unresolved = ("warmup_steps", "model_size", "global_clipnorm")
    for field in fields - set(unresolved):
        assert getattr(replayed, field) == getattr(config, field), field
    assert replayed.model_size_name == config.model_size_name
    assert train_flags.flags_file(replayed, _testing.parse_flags([])) == text


def test_flags_txt_replays_the_run(records, tmp_path):
    """A 20-update run without --warmup_steps warms up for 2 updates (10%);
    its flags.txt used to say --warmup_steps=50, which the replay refused.
    Now `--flagfile=RUN/flags.txt --model_dir=OTHER` runs the same
    updates."""
    run_dir, other_dir = tmp_path / "run", tmp_path / "other"
    first = _testing.run(
        ["-m", "train.pretrain", f"--model_dir={run_dir}"] + [
            a for a in SMALL if not a.startswith("--warmup_steps")]
        + _data_args(records) + [
            "--num_train_steps=20", "--log_steps=5", "--export_dir=none",
            "--save_checkpoints_steps=20"], timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    text = (run_dir / "flags.txt").read_text()
    assert "--warmup_steps=2\n" in text
    assert "test_tmpdir" not in text and "stderrthreshold" not in text
    # config.json: the settings as the run resolved them, for programs that
    # read a setting of the run back (train.export) without parsing flags.
    recorded = json.loads((run_dir / "config.json").read_text())
    assert recorded["resolved"]["effective_warmup_steps"] == 2
    assert recorded["settings"]["warmup_steps"] is None
    assert recorded["settings"]["num_train_steps"] == 20
    assert recorded["settings"]["model_dir"] == str(run_dir)
    again = _testing.run(["-m", "train.pretrain",
                          f"--flagfile={run_dir / 'flags.txt'}",
                          f"--model_dir={other_dir}"], timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (other_dir / "flags.txt").read_text() == text.replace(
        f"--model_dir={run_dir}", f"--model_dir={other_dir}")
    step_lines = re.compile(r"^step .*?(?=  examples/s)", re.M)
    assert step_lines.findall(again.stdout) == step_lines.findall(
        first.stdout)
    assert len(step_lines.findall(first.stdout)) == 4

def test_one_update_cli_run_without_a_warmup_flag(tmp_path):
    """`--num_train_steps=1` alone used to stop at the default warmup."""
    result = _testing.run(
        ["-m", "train.pretrain", f"--model_dir={tmp_path / 'run'}",
         "--num_train_steps=1", "--max_seq_length=32",
         "--max_predictions_per_seq=5", "--dupe_factor=1",
         "--vocab_size=500", "--export_dir=none"], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"^step\s+1/1", result.stdout, re.M)
    assert (tmp_path / "run" / "flags.txt").exists()


def test_short_help_lists_the_flags_too():
    """The flags live in train/flags.py; `--help` (the main module's flags)
    must still list them."""
    result = _testing.run(["-m", "train.pretrain", "--help"], timeout=60)
    for name in ("train_files", "steps_per_loop", "mode", "init_checkpoint",
                 "max_seq_length", "learning_rate"):
        assert re.search(rf"^  --(\[no\])?{name}: \S", result.stdout,
                         re.M), name


def test_short_help_of_create_pretraining_data_lists_the_example_flags():
    """Its example flags are defined in train.data.features."""
    result = _testing.run(["-m", "train.create_pretraining_data", "--help"],
                          timeout=60)
    for name in ("input_file", "max_seq_length", "dupe_factor",
                 "do_lower_case", "random_seed"):
        assert re.search(rf"^  --(\[no\])?{name}: \S", result.stdout,
                         re.M), name
