"""benchmarks.finetune --quick: pretrains, exports, fine-tunes the
pretrained and a random encoder, reports both held-out accuracies."""

import json

import numpy as np

from tests.support import train_testing


def test_quick_run_reports_both_encoders(tmp_path):
    out = tmp_path / "finetune"
    result = train_testing.run(["-m", "benchmarks.finetune", "--quick",
                                f"--output_dir={out}"], timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    task = results["task"]
    assert len(task["classes"]) == 4
    assert task["train_examples"] > 2 * task["held_out_examples"] > 0
    for name in ("pretrained", "random"):
        accuracy = results[name]["held_out_accuracy"]
        # A whole number of held-out examples right.
        correct = accuracy * task["held_out_examples"]
        assert abs(correct - round(correct)) < 1e-3
        assert np.isfinite(results[name]["final_train_loss"])
        assert f"{name:10s} encoder: held-out accuracy {accuracy:.3f}" in (
            result.stdout)
    # The pretrained encoder is the export of the run made here.
    assert (out / "pretrain" / "export" / "saved_model.pb").exists()
    assert (out / "random_encoder" / "saved_model.pb").exists()


def test_a_folder_without_saved_model_is_refused(tmp_path):
    result = train_testing.run(["-m", "benchmarks.finetune", "--quick",
                                f"--saved_model={tmp_path}",
                                f"--output_dir={tmp_path / 'out'}"],
                               timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"Error: --saved_model {tmp_path} holds no SavedModel")
