"""The command line prints its own lines: TensorFlow's INFO output (C++ and
Python) is hidden unless asked for, warnings and errors are kept."""

import logging
import re
import subprocess
import sys

from tests.support import train_testing as _testing
from train.runtime import logs

# absl's C++ INFO prefix (the seconds count from the epoch before its
# InitializeLog), absl's Python one, and TensorFlow's own logger's.
INFO_LINE = re.compile(r"^(I\d{4} \d\d:\d\d:\d+\.\d+ |INFO:tensorflow:)")


def test_a_short_run_prints_no_tensorflow_info(tmp_path):
    text = _testing.write_small_corpus(str(tmp_path / "text.txt"), 100)
    env = _testing.python_env()
    env.pop("TF_CPP_MIN_LOG_LEVEL")
    result = subprocess.run(
        [sys.executable, "-m", "train.pretrain",
         f"--model_dir={tmp_path / 'run'}", f"--input_file={text}",
         "--num_train_steps=2", "--save_checkpoints_steps=2",
         "--max_seq_length=32", "--max_predictions_per_seq=5",
         "--train_batch_size=8", "--warmup_steps=1", "--vocab_size=400",
         "--dupe_factor=1"],
        cwd=_testing.REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    # The run saved a checkpoint and exported a SavedModel, which is when
    # TensorFlow logs its INFO lines; none shows, nor absl's note that
    # comes before the first of them.
    assert "step      2/2" in output and "Exported the encoder" in output
    assert not [line for line in output.splitlines()
                if INFO_LINE.match(line)], output
    assert "before absl::InitializeLog" not in output


def test_verbosity_on_the_command_line():
    assert logs.asked_verbosity(["prog"]) is None
    assert logs.asked_verbosity(["prog", "--verbosity=0"]) == 0
    assert logs.asked_verbosity(["prog", "-v", "1"]) == 1
    assert logs.asked_verbosity(["prog", "--v=-1", "--x=2"]) == -1
    assert logs.asked_verbosity(["prog", "--verbosity", "2"]) == 2
    assert logs.asked_verbosity(["prog", "--", "-v", "1"]) is None
    assert logs.asked_verbosity(["prog", "-v"]) is None
    assert logs.tensorflow_info_wanted(["prog", "-v", "0"], {})
    assert not logs.tensorflow_info_wanted(["prog", "-v", "-1"], {})
    assert logs.tensorflow_info_wanted(["prog"], {"TF_CPP_MIN_LOG_LEVEL": "0"})
    assert not logs.tensorflow_info_wanted(
        ["prog"], {"TF_CPP_MIN_LOG_LEVEL": "1"})


def test_asked_for_info_changes_nothing():
    environ = {}
    assert not logs.quiet_tensorflow(["prog", "--verbosity=0"], environ)
    assert environ == {}


def test_a_level_the_user_set_is_kept():
    tf_logger = logging.getLogger("tensorflow")
    absl_logger = logging.getLogger("absl")
    level, filters = tf_logger.level, list(absl_logger.filters)
    try:
        environ = {"TF_CPP_MIN_LOG_LEVEL": "3"}
        assert logs.quiet_tensorflow(["prog"], environ)
        assert environ == {"TF_CPP_MIN_LOG_LEVEL": "3"}
        environ = {}
        logs.quiet_tensorflow(["prog"], environ)
        assert environ == {"TF_CPP_MIN_LOG_LEVEL": "1"}
        assert tf_logger.level == logging.WARNING
    finally:
        tf_logger.setLevel(level)
        absl_logger.filters[:] = filters


def test_only_info_lines_are_dropped():
    text = (
        "WARNING: All log messages before absl::InitializeLog() is called "
        "are written to STDERR\n"
        "I0000 00:00:1795992810.071945   17243 port.cc:153] oneDNN custom "
        "operations are on.\n"
        "I1129 22:54:17.893722 140014935571328 functional_saver.py:440] "
        "Sharding callback duration: 71 microseconds\n"
        "W0000 00:00:1795992834.178900   17243 dataset.cc:997] a warning\n"
        "E0000 00:00:1795992816.443321   17243 cuda_platform.cc:52] failed "
        "call to cuInit: INTERNAL: CUDA error\n"
        "Our own line\n")
    kept = ("W0000 00:00:1795992834.178900   17243 dataset.cc:997] a warning\n"
            "E0000 00:00:1795992816.443321   17243 cuda_platform.cc:52] "
            "failed call to cuInit: INTERNAL: CUDA error\n"
            "Our own line\n")
    assert logs.drop_info_lines(text) == kept
    # When TensorFlow said it found no CUDA driver, its failed cuInit is
    # expected and goes too; other errors stay.
    no_driver = ("I0000 00:00:1.5   1 cudart_stub.cc:31] Could not find cuda "
                 "drivers on your machine, GPU will not be used.\n")
    assert logs.drop_info_lines(no_driver + text) == (
        "W0000 00:00:1795992834.178900   17243 dataset.cc:997] a warning\n"
        "Our own line\n")


def test_the_summary_of_one_interval_gives_one_value(capsys):
    """"MLM loss 7.331 (step 20) -> 7.331 (step 20)" with one log
    interval: one value then, first -> last with more."""
    from train import pretrain_lib
    record = {"step": 20, "mlm_loss": 7.3312, "mlm_accuracy": 0.0412}
    pretrain_lib._print_summary([record])
    assert capsys.readouterr().out == (
        "MLM loss 7.331, MLM accuracy 0.041 (step 20)\n")
    later = {"step": 40, "mlm_loss": 6.5, "mlm_accuracy": 0.1}
    pretrain_lib._print_summary([record, later])
    assert capsys.readouterr().out == (
        "MLM loss 7.331 (step 20) -> 6.500 (step 40); MLM accuracy "
        "0.041 -> 0.100\n")
