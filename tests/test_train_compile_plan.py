"""`--compile_for`: the training step compiled for a chip that is not here.

The search for the largest batch is checked against a fake compiler with a
known memory curve; the real step of a tiny BERT compiles for a TPU v5e
where libtpu is installed (the `hlo` extra).
"""

import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest

from train.model import bert
from train.plan import accelerators, compile_plan

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIB = 2**30


def fake_compiler(fixed_gib, per_example_gib, fails_above=None):
    """compile_at(batch) for a step that needs fixed + batch * per-example
    GiB, and does not compile at all above `fails_above`."""
    calls = []

    def compile_at(batch):
        calls.append(batch)
        if fails_above is not None and batch > fails_above:
            return compile_plan.CompiledStep(batch, False, error="too big")
        return compile_plan.CompiledStep(
            batch, True, argument_bytes=int(fixed_gib * GIB),
            temp_bytes=int(batch * per_example_gib * GIB))
    return compile_at, calls


@pytest.mark.parametrize("start,expected", [(8, 64), (64, 64), (256, 64),
                                            (4, 64)])
def test_largest_batch_of_a_known_memory_curve(start, expected):
    # 4 GiB of state and 0.15 GiB per example in 16 GiB: 80 fit, and of the
    # batches start * 2**k the largest is 64.
    compile_at, calls = fake_compiler(4.0, 0.15)
    largest, tried = compile_plan.largest_fitting_batch(
        compile_at, 16 * GIB, start, max_compiles=8)
    assert largest == expected
    assert all(tried[b].fits(16 * GIB) == (b <= 80) for b in tried)
    assert len(calls) == len(set(calls))  # no batch compiled twice


def test_one_compile_is_only_the_asked_batch():
    # --compile_for_max_compiles=1: the asked batch, whether it fits or not.
    compile_at, calls = fake_compiler(4.0, 0.15)
    assert compile_plan.largest_fitting_batch(
        compile_at, 16 * GIB, 32, max_compiles=1)[0] == 32
    assert calls == [32]
    compile_at, calls = fake_compiler(4.0, 0.15)
    assert compile_plan.largest_fitting_batch(
        compile_at, 16 * GIB, 128, max_compiles=1)[0] is None
    assert calls == [128]


def test_no_batch_fits_and_failed_compiles_do_not_fit():
    compile_at, _ = fake_compiler(20.0, 0.1)
    largest, tried = compile_plan.largest_fitting_batch(compile_at,
                                                        16 * GIB, 8)
    assert largest is None and set(tried) == {8, 4, 2, 1}
    compile_at, _ = fake_compiler(1.0, 0.01, fails_above=32)
    largest, _ = compile_plan.largest_fitting_batch(compile_at, 16 * GIB, 8,
                                                    max_compiles=6)
    assert largest == 32


def test_a_step_the_compiler_refuses_for_memory_is_reported_too_big():
    # libtpu's refusal of BERT-large at 512 tokens, batch 16, on a v5e.
    refused = compile_plan.CompiledStep(16, False, error=(
        "RESOURCE_EXHAUSTED: E1000: CompileTimeHbmOom: XLA:TPU compile "
        "permanent error. Ran out of memory in memory space hbm. Used "
        "15.85G of 15.75G hbm. Exceeded hbm capacity by 107.44M."))
    broken = compile_plan.CompiledStep(32, False, error="UNIMPLEMENTED: op")
    fitting = compile_plan.CompiledStep(8, True, argument_bytes=4 * GIB,
                                        temp_bytes=7 * GIB)
    assert refused.out_of_memory and not broken.out_of_memory
    assert not fitting.out_of_memory and not refused.fits(16 * GIB)
    result = {
        "chip": "TPU v5e (one chip)", "chip_memory_bytes": 16 * GIB,
        "model": {"num_hidden_layers": 24, "hidden_size": 1024},
        "parameters": 336226108, "seq_length": 512, "batch": 8,
        "accumulation_steps": 1, "precision": "mixed_bfloat16",
        "step": dataclasses.asdict(fitting), "fits": True,
        "memory_bytes": fitting.memory_bytes, "largest_batch": 8,
        "tried": {s.batch: {"compiled": s.compiled,
                            "memory_bytes": s.memory_bytes,
                            "fits": s.fits(16 * GIB),
                            "out_of_memory": s.out_of_memory}
                  for s in (fitting, refused, broken)}}
    lines = compile_plan.report(result)
    assert ("largest per-chip batch that fits: 8 (compiled at 8: 11.00 GiB, "
            "16: too big (the compiler ran out of device memory), 32: did "
            "not compile)") in lines


def test_a_v4_plan_is_a_cores():
    # libtpu compiles a v4 one TensorCore (16 GiB) at a time; the report
    # says so rather than calling the core a chip.
    spec = accelerators.TARGETS["tpu-v4"]
    assert spec["hbm_bytes"] == 16 * GIB and spec["unit"] == "core"
    fitting = compile_plan.CompiledStep(64, True, argument_bytes=2 * GIB,
                                        temp_bytes=9 * GIB)
    result = {
        "chip": spec["chip"], "unit": spec["unit"],
        "chip_memory_bytes": spec["hbm_bytes"],
        "model": {"num_hidden_layers": 12, "hidden_size": 768},
        "parameters": 110104890, "seq_length": 512, "batch": 64,
        "accumulation_steps": 1, "precision": "mixed_bfloat16",
        "step": dataclasses.asdict(fitting), "fits": True,
        "memory_bytes": fitting.memory_bytes, "largest_batch": 64,
        "tried": {64: {"compiled": True,
                       "memory_bytes": fitting.memory_bytes, "fits": True,
                       "out_of_memory": False}}}
    text = "\n".join(compile_plan.report(result))
    assert "per-core batch 64" in text
    assert "11.00 GiB of the core's 16.00 GiB: fits" in text
    assert "largest per-core batch that fits: 64" in text
    assert "chip" not in text.replace(spec["chip"], "")


def test_the_search_jumps_to_the_predicted_batch_within_its_budget():
    # 1e-6 GiB per example: 2**23 examples fit in 16 GiB, 2**24 do not.
    compile_at, calls = fake_compiler(0.0, 1e-6)
    largest, _ = compile_plan.largest_fitting_batch(
        compile_at, 16 * GIB, 1, max_compiles=5, max_batch=2**30)
    assert largest == 2**23
    assert len(calls) <= 5
    # Nothing above max_batch is compiled.
    compile_at, calls = fake_compiler(0.0, 1e-6)
    largest, _ = compile_plan.largest_fitting_batch(compile_at, 16 * GIB, 1,
                                                    max_batch=1024)
    assert largest == 1024 and max(calls) == 1024
    # With no budget left after the first two, the best found is kept.
    compile_at, calls = fake_compiler(0.0, 1e-6)
    largest, _ = compile_plan.largest_fitting_batch(compile_at, 16 * GIB, 1,
                                                    max_compiles=2)
    assert calls == [1, 2] and largest == 2


def test_roofline_takes_the_slower_bound():
    spec = {"peak_flops": 100e12, "hbm_bytes_per_s": 1e12}
    bert_config = bert.BertConfig.for_size("base", 30522)
    step = compile_plan.CompiledStep(32, True, flops=50e12,
                                     bytes_accessed=0.2e12)
    estimate = compile_plan.roofline(step, spec, bert_config, 128, 20)
    assert estimate["bound"] == "compute"
    assert estimate["step_s"] == pytest.approx(0.5)
    assert estimate["examples_per_s"] == pytest.approx(64)
    step = compile_plan.CompiledStep(32, True, flops=None,
                                     device_memory_bytes=2e12)
    estimate = compile_plan.roofline(step, spec, bert_config, 128, 20)
    assert estimate["flops_source"] == "model"
    assert estimate["bound"] == "memory" and estimate["step_s"] == 2.0


def test_model_flops_are_six_per_weight_per_token_and_more():
    bert_config = bert.BertConfig.for_size("base", 30522)
    flops = compile_plan.model_flops(bert_config, 256, 128, 20)
    encoder_weights = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    assert flops > 6 * encoder_weights * 256 * 128
    assert flops < 1.5 * 6 * encoder_weights * 256 * 128


def _run_pretrain(*flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               TPU_SKIP_MDS_QUERY="1")
    return subprocess.run([sys.executable, "-m", "train.pretrain", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


def test_an_unknown_chip_is_a_one_line_error(tmp_path):
    completed = _run_pretrain("--compile_for=tpu-v9",
                              f"--model_dir={tmp_path / 'run'}")
    assert completed.returncode != 0
    assert "compile_for" in completed.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu is not installed (the hlo extra)")
def test_tiny_step_compiles_for_tpu_v5e_and_nothing_is_written(tmp_path):
    model_dir = tmp_path / "run"
    completed = _run_pretrain("--compile_for=tpu-v5e", "--model_size=tiny",
                              "--vocab_size=1000", "--train_batch_size=8",
                              "--mixed_precision=mixed_bfloat16",
                              # One compile: each takes a minute here (two
                              # to four under the suite's load). The search
                              # over batch sizes is tested above against a
                              # fake compiler.
                              "--compile_for_max_compiles=1",
                              f"--model_dir={model_dir}")
    assert completed.returncode == 0, completed.stderr[-4000:]
    out = completed.stdout
    assert "compiled: yes" in out, out
    assert "of the chip's 16.00 GiB: fits" in out
    # Out of compiles, the search reports the batch it compiled.
    assert "largest per-chip batch that fits: 8 (compiled at 8:" in out
    assert "examples/s per chip" in out and "not a measurement" in out
    assert not model_dir.exists()
