"""Bad input to train.pretrain fails fast, names the problem and leaves
--model_dir alone."""

import json
import os

import pytest

from tests.support import train_testing as _testing
from train import InputError

SMALL = ["--max_seq_length=32", "--max_predictions_per_seq=5",
         "--train_batch_size=8", "--warmup_steps=1", "--num_train_steps=2"]


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("records"))
    files, vocab = _testing.make_records(directory, max_documents=80,
                                         dupe_factor=1, shards=1)
    return {"files": files, "vocab": vocab, "dir": directory}


def _fails(args, match, tmp_path):
    model_dir = str(tmp_path / "never_created")
    with pytest.raises(InputError, match=match):
        _testing.run_flags([f"--model_dir={model_dir}"] + args)
    assert not os.path.exists(model_dir)


def _data(records, files=None):
    return [f"--train_files={files or records['files'][0]}",
            f"--vocab_file={records['vocab']}"]


@pytest.mark.parametrize("args, match", [
    (["--model_size=mini", "--bert_config_file=x.json"],
     "--model_size and --bert_config_file"),
    (["--tpu=grpc://127.0.0.1:1"], "--tpu needs --strategy=tpu"),
    (["--train_files=a", "--input_file=b"], "at most one of"),
    (["--phase2_steps=2"], r"--phase2_steps must be in \[0, "),
    (["--warmup_steps=5"], "--warmup_steps must be in"),
    (["--max_predictions_per_seq=40"], "--max_predictions_per_seq"),
    (["--clipnorm=1", "--global_clipnorm=1"], "one gradient clipping"),
    (["--gradient_accumulation_steps=3"],
     "--train_batch_size=8 is not divisible by the 1 replica"),
    (["--strategy=multi_worker"], "TF_CONFIG"),
    (["--worker_wait_seconds=5"],
     "--worker_wait_seconds needs --strategy=multi_worker"),
    (["--strategy=multi_worker", "--worker_wait_seconds=-1"],
     "--worker_wait_seconds must be >= 0, got -1"),
    (["--exclude_from_weight_decay=("], "invalid regular expression"),
    (["--loss_scale_factor=8", "--mixed_precision=mixed_float16"],
     "contradict"),
    (["--ema_overwrite_frequency=2"], "needs --use_ema"),
    (["--compile_for=tpu-v5e", "--compile_for_max_compiles=0"],
     "--compile_for_max_compiles must be >= 1, got 0"),
    (["--learning_rate=-1e-3"], r"^--learning_rate must be > 0, got -0.001$"),
    (["--num_train_steps=4", "--phase2_steps=2", "--phase2_learning_rate=0"],
     r"^--phase2_learning_rate must be > 0, got 0.0$"),
])
def test_contradictory_or_impossible_flags(args, match, tmp_path):
    _fails(SMALL + args, match, tmp_path)


def test_sequences_longer_than_the_positions_write_nothing(tmp_path):
    """Without --vocab_file or --bert_config_file (the vocabulary is still to
    be learnt), in either phase: the model's max_position_embeddings (512)
    is checked before anything is written."""
    for args, flag in (
            (["--max_seq_length=1024", "--max_predictions_per_seq=5"],
             "--max_seq_length=1024"),
            (["--phase2_steps=1", "--phase2_max_seq_length=600"],
             "--phase2_max_seq_length=600")):
        merged = {a.split("=")[0]: a for a in SMALL}
        merged.update({a.split("=")[0]: a for a in args})
        _fails(list(merged.values()),
               f"^{flag}: sequences of .* exceed the model's "
               f"max_position_embeddings=512 \\(of --model_size=tiny\\)$",
               tmp_path)


def test_unreachable_tpu(tmp_path):
    _fails(SMALL + ["--strategy=tpu", "--tpu=grpc://127.0.0.1:1"],
           "No TPU reachable at grpc://127.0.0.1:1", tmp_path)


def test_missing_tfrecords(records, tmp_path):
    _fails(SMALL + _data(records, str(tmp_path / "nothing-*.tfrecord")),
           "No TFRecord file matches", tmp_path)


def test_empty_tfrecord(records, tmp_path):
    empty = tmp_path / "empty.tfrecord"
    empty.write_bytes(b"")
    _fails(SMALL + _data(records, str(empty)), "is empty", tmp_path)


def test_corrupt_tfrecord(records, tmp_path):
    data = bytearray(open(records["files"][0], "rb").read())
    middle = len(data) // 2
    data[middle:middle + 16] = bytes(16)
    corrupt = tmp_path / "corrupt.tfrecord"
    corrupt.write_bytes(bytes(data))
    _fails(SMALL + _data(records, str(corrupt)), "corrupt", tmp_path)
    garbage = tmp_path / "garbage.tfrecord"
    garbage.write_bytes(b"this is not a TFRecord file at all\n" * 10)
    _fails(SMALL + _data(records, str(garbage)), "corrupt", tmp_path)


def test_records_of_another_length(records, tmp_path):
    _fails(["--max_seq_length=64", "--max_predictions_per_seq=5",
            "--train_batch_size=8", "--warmup_steps=1"] + _data(records),
           "max_seq_length=64", tmp_path)


def _config_file(tmp_path, vocab_size):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({
        "vocab_size": vocab_size, "hidden_size": 32, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 64}))
    return str(path)


def test_vocab_file_of_another_size(records, tmp_path):
    config = _config_file(tmp_path, 100)
    _fails(SMALL + _data(records) + [f"--bert_config_file={config}"],
           "has .* tokens but the model's vocab_size is 100", tmp_path)


def test_records_with_ids_beyond_the_vocabulary(records, tmp_path):
    config = _config_file(tmp_path, 50)
    _fails(SMALL + [f"--train_files={records['files'][0]}",
                    f"--bert_config_file={config}"],
           "vocabulary has 50 tokens", tmp_path)


def test_bad_bert_config(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"vocab_size": 100, "hidden_size": 30, '
                    '"num_attention_heads": 4}')
    _fails(SMALL + [f"--bert_config_file={path}"], "not a multiple", tmp_path)
    path.write_text('{"vocab_size": 100, "hiden_size": 32}')
    _fails(SMALL + [f"--bert_config_file={path}"], "unknown keys", tmp_path)


def test_model_dir_of_another_model_is_left_alone(records, tmp_path):
    model_dir = str(tmp_path / "run")
    _testing.run_flags(SMALL + _data(records) + [
        f"--model_dir={model_dir}", "--export_dir=none"])
    before = {name: os.path.getmtime(os.path.join(model_dir, name))
              for name in os.listdir(model_dir)}
    with pytest.raises(InputError, match="another model"):
        _testing.run_flags(SMALL + _data(records) + [
            f"--model_dir={model_dir}", "--model_size=mini"])
    after = {name: os.path.getmtime(os.path.join(model_dir, name))
             for name in os.listdir(model_dir)}
    assert before == after


def test_cli_reports_errors_and_unknown_flags(records, tmp_path):
    model_dir = str(tmp_path / "cli")
    result = _testing.run(["-m", "train.pretrain", f"--model_dir={model_dir}",
                           "--train_files=/no/such/dir/*.tfrecord",
                           f"--vocab_file={records['vocab']}"])
    assert result.returncode == 1
    assert "Error: No TFRecord file matches '/no/such/dir/*.tfrecord'" in (
        result.stderr)
    result = _testing.run(["-m", "train.pretrain", f"--model_dir={model_dir}",
                           "--no_such_flag=3"])
    assert result.returncode != 0
    assert "no_such_flag" in result.stderr
    result = _testing.run(["-m", "train.pretrain", f"--model_dir={model_dir}",
                           "stray_argument"])
    assert result.returncode != 0 and "stray_argument" in result.stderr
    assert not os.path.exists(model_dir)


def test_flagfile_is_read(tmp_path):
    flagfile = tmp_path / "flags.txt"
    model_dir = tmp_path / "never"
    flagfile.write_text(f"--model_dir={model_dir}\n--model_size=mini\n"
                        "--bert_config_file=/x.json\n")
    result = _testing.run(["-m", "train.pretrain", f"--flagfile={flagfile}"])
    assert result.returncode == 1
    assert "--model_size and --bert_config_file" in result.stderr
    assert not model_dir.exists()


def test_tfds_without_the_package(tmp_path):
    try:
        import tensorflow_datasets  # noqa: F401
        pytest.skip("tensorflow-datasets is installed here")
    except ImportError:
        pass
    _fails(SMALL + ["--tfds_name=wikipedia/20230601.en"],
           "needs the tensorflow-datasets package", tmp_path)


def test_model_dir_of_another_size_with_learnt_vocab(records, tmp_path):
    text = os.path.join(records["dir"], "corpus.txt")
    model_dir = str(tmp_path / "run")
    args = SMALL + [f"--input_file={text}", f"--model_dir={model_dir}",
                    "--dupe_factor=1", "--vocab_size=300",
                    "--export_dir=none"]
    _testing.run_flags(args)
    listing = sorted(os.walk(model_dir))
    stamps = {os.path.join(d, n): os.path.getmtime(os.path.join(d, n))
              for d, _, names in listing for n in names}
    with pytest.raises(InputError, match="another model"):
        _testing.run_flags(args + ["--model_size=mini"])
    assert sorted(os.walk(model_dir)) == listing
    assert stamps == {p: os.path.getmtime(p) for p in stamps}


def test_text_too_short_for_a_sentence_pair(tmp_path):
    text = tmp_path / "one.txt"
    text.write_text("Only one sentence is here.\n")
    _fails(SMALL + [f"--input_file={text}"], "holds one sentence", tmp_path)
    _fails(SMALL + [f"--input_file={tmp_path}/missing*.txt"],
           "No input file matches", tmp_path)


def _stamps(directory):
    """Every file under `directory` with its modification time."""
    return {os.path.join(d, n): os.path.getmtime(os.path.join(d, n))
            for d, _, names in os.walk(directory) for n in names}


@pytest.fixture(scope="module")
def short_model_run(records, tmp_path_factory):
    """A --model_dir holding a checkpoint of a BERT with 64 positions
    (from --bert_config_file) trained on 32-token records."""
    root = tmp_path_factory.mktemp("short_model")
    config = root / "bert_config.json"
    with open(records["vocab"]) as fh:
        vocab_size = len(fh.read().splitlines())
    config.write_text(json.dumps(dict(_testing.SMALL_BERT_CONFIG,
                                      vocab_size=vocab_size)))
    model_dir = str(root / "run")
    args = SMALL + _data(records) + [f"--bert_config_file={config}",
                                     f"--model_dir={model_dir}",
                                     "--export_dir=none"]
    _testing.run_flags(args)
    return {"model_dir": model_dir, "args": args, "config": str(config)}


@pytest.mark.parametrize("length", [128, 1024])
def test_eval_longer_than_the_positions_writes_nothing(
        records, short_model_run, length):
    """--mode=eval of a --model_dir's checkpoint takes the model from its
    bert_config.json: a length beyond its 64 positions (or beyond the 512
    of the default model) is refused naming the 64, before anything is
    written."""
    model_dir = short_model_run["model_dir"]
    before = _stamps(model_dir)
    with pytest.raises(InputError, match=(
            rf"^--max_seq_length={length}: sequences of {length} tokens "
            rf"exceed the model's max_position_embeddings=64 ")):
        _testing.run_flags([
            "--mode=eval", f"--eval_files={records['files'][0]}",
            f"--model_dir={model_dir}", f"--max_seq_length={length}",
            "--max_predictions_per_seq=5"])
    assert _stamps(model_dir) == before


def test_resume_longer_than_the_positions_is_one_line(records,
                                                      short_model_run):
    """The command line, resuming a --model_dir with a checkpoint at a
    length beyond the model's positions: one `Error:` line, status 1,
    nothing written (it used to be an 80-line traceback, files written)."""
    model_dir = short_model_run["model_dir"]
    before = _stamps(model_dir)
    for length in (128, 1024):
        result = _testing.run(["-m", "train.pretrain"]
                              + short_model_run["args"]
                              + [f"--max_seq_length={length}"], timeout=300)
        assert result.returncode == 1, result.stderr[-3000:]
        assert result.stderr.strip().splitlines() == [
            f"Error: --max_seq_length={length}: sequences of {length} "
            f"tokens exceed the model's max_position_embeddings=64 (of "
            f"{short_model_run['config']})"], (
            result.stderr[-3000:])
        assert _stamps(model_dir) == before
