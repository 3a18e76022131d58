"""benchmarks.compile_for: the accelerators' compilers, without the device.

The reading of an optimized program (kernels, device-memory bytes) is
checked on hand-written programs whose answers are known; the compilers on
the optimizer steps that export_hlo writes, for a TPU v5e where libtpu is
installed (the `hlo` extra) and for an H100 where jax's CUDA plugin is.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from train.plan import accelerators

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600

# Two kernels in the entry computation, one in a loop it runs, one library
# call; the fused computations' own instructions, the reducer and a TPU's
# ConcatBitcast (a join of staged slices in place) are no kernels.
PROGRAM = """HloModule step, entry_computation_layout={(f32[1024]{0})->f32[1024]{0}}

%fused_scale (p: f32[1024]) -> f32[1024] {
  %p = f32[1024]{0} parameter(0)
  %c = f32[] constant(2)
  %b = f32[1024]{0} broadcast(%c), dimensions={}
  ROOT %m = f32[1024]{0} multiply(%p, %b)
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%fused_sum (p.1: f32[1024]) -> f32[] {
  %p.1 = f32[1024]{0} parameter(0)
  %z = f32[] constant(0)
  ROOT %r = f32[] reduce(%p.1, %z), dimensions={0}, to_apply=%add
}

%body (t: (s32[], f32[1024])) -> (s32[], f32[1024]) {
  %t = (s32[], f32[1024]{0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %v = f32[1024]{0} get-tuple-element(%t), index=1
  %loop_fusion = f32[1024]{0} fusion(%v), kind=kLoop, calls=%fused_scale
  ROOT %n = (s32[], f32[1024]{0}) tuple(%i, %loop_fusion)
}

%cond (t.1: (s32[], f32[1024])) -> pred[] {
  %t.1 = (s32[], f32[1024]{0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%t.1), index=0
  %k = s32[] constant(1)
  ROOT %lt = pred[] compare(%i.1, %k), direction=LT
}

ENTRY %main (a: f32[1024]) -> f32[1024] {
  %a = f32[1024]{0:T(1024)} parameter(0)
  %copy-start = (f32[1024]{0:T(1024)}, f32[1024]{0:T(1024)S(1)}, u32[]{:S(2)}) copy-start(%a)
  %copy-done = f32[1024]{0:T(1024)S(1)} copy-done(%copy-start)
  %input_reduce_fusion = f32[] fusion(%copy-done), kind=kInput, calls=%fused_sum
  %scaled = f32[1024]{0:T(1024)} fusion(%a), kind=kLoop, calls=%fused_scale
  %joined = f32[1024]{0:T(1024)S(1)} custom-call(%copy-done), custom_call_target="ConcatBitcast"
  %gemm = f32[1024]{0:T(1024)} custom-call(%scaled), custom_call_target="__cublas$gemm"
  %zero = s32[] constant(0)
  %init = (s32[], f32[1024]{0:T(1024)}) tuple(%zero, %gemm)
  %loop = (s32[], f32[1024]{0:T(1024)}) while(%init), condition=%cond, body=%body
  ROOT %out = f32[1024]{0:T(1024)} get-tuple-element(%loop), index=1
}
"""


def test_count_kernels_of_a_known_program():
    assert accelerators.count_kernels(PROGRAM) == 4


def test_device_memory_bytes_of_a_known_program():
    # copy-start stages a (4 KiB crossing once); the sum reads the staged
    # copy in vector memory (nothing more from HBM) and writes its 4 B
    # result; scaled reads a and writes its result (8 KiB); the library call
    # reads and writes 4 KiB each; the loop's kernel reads and writes its
    # 4 KiB (8 KiB), and its condition compares two s32 into a pred (9 B);
    # the ConcatBitcast moves nothing.
    assert accelerators.device_memory_bytes(PROGRAM) == (
        4096 * (1 + 2 + 2 + 2) + 4 + 9)


def test_no_entry_is_an_error():
    with pytest.raises(ValueError, match="ENTRY"):
        accelerators.count_kernels("HloModule empty\n")


def test_a_missing_compiler_names_its_install_command(monkeypatch):
    pytest.importorskip("jax", reason="needs the hlo extra")
    monkeypatch.setattr(accelerators, "_installed_modules", lambda: set())
    with pytest.raises(accelerators.CompilerMissing, match=r"jax\[cuda12\]"):
        accelerators.target_device("h100")


def _run(python, *args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", JAX_PLATFORMS="cpu",
               TPU_SKIP_MDS_QUERY="1")
    return subprocess.run([python, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT)


def test_bad_input_is_refused(tmp_path):
    completed = _run(sys.executable, "benchmarks.compile_for",
                     "--target=tpu-v5e", str(tmp_path / "absent"))
    assert completed.returncode == 2
    assert "no such file or directory" in completed.stderr
    completed = _run(sys.executable, "benchmarks.compile_for",
                     "--target=tpu-v9", str(tmp_path))
    assert completed.returncode == 2 and "--target" in completed.stderr
    completed = _run(sys.executable, "benchmarks.compile_for",
                     "--target=tpu-v5e", str(tmp_path))
    assert completed.returncode == 2 and "manifest.json" in completed.stderr


def _has_module(name):
    return importlib.util.find_spec(name) is not None


def _has_cuda_plugin():
    return _has_module("jax") and any(
        name.startswith("jax_cuda") and name.endswith("plugin")
        for name in accelerators._installed_modules())


def _export(tmp_path_factory, device_kind):
    """The tiny model's optimizer steps, exported for `device_kind`."""
    out_dir = tmp_path_factory.mktemp(f"hlo_tiny_{device_kind}")
    completed = _run(sys.executable, "benchmarks.export_hlo", "--model=tiny",
                     f"--device_kind={device_kind}", f"--out_dir={out_dir}")
    assert completed.returncode == 0, completed.stderr[-4000:]
    return out_dir


def _compile(target, *programs, extra=()):
    completed = _run(sys.executable, "benchmarks.compile_for",
                     f"--target={target}", *map(str, programs), *extra)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return completed


@pytest.mark.skipif(not _has_module("libtpu"),
                    reason="libtpu is not installed (the hlo extra)")
def test_scaling_costs_eight_bytes_per_element_on_tpu(tmp_path):
    # Written by jax: x * 2 over 2**20 float32 reads and writes 4 B each.
    program = tmp_path / "scale.hlo.pb"
    subprocess.run(
        [sys.executable, "-c",
         "import sys, jax, jax.numpy as jnp\n"
         "x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32)\n"
         "ir = jax.jit(lambda x: x * 2).lower(x).compiler_ir('hlo')\n"
         "open(sys.argv[1], 'wb').write("
         "ir.as_serialized_hlo_module_proto())\n", str(program)],
        check=True, timeout=TIMEOUT, env=dict(os.environ,
                                              JAX_PLATFORMS="cpu"))
    out = tmp_path / "result.json"
    _compile("tpu-v5e", program, extra=("--parameters=1048576",
                                        f"--json_out={out}", "--unstaged"))
    written = json.loads(out.read_text())
    (result,) = written["programs"].values()
    assert result["kernels"] == 1
    assert result["bytes_per_param"] == pytest.approx(8.0)
    assert result["device_memory_bytes_per_param"] == pytest.approx(8.0)
    # Nothing of it is staged: compiled without staging, the same count.
    assert written["vmem_staging"] is True
    assert result["unstaged"]["bytes_per_param"] == pytest.approx(8.0)
    assert result["unstaged"]["kernels"] == 1


def test_unstaged_is_for_tpus(tmp_path):
    completed = _run(sys.executable, "benchmarks.compile_for",
                     "--target=h100", "--unstaged", str(tmp_path / "x.pb"))
    assert completed.returncode == 2 and "--unstaged" in completed.stderr


@pytest.mark.skipif(not _has_module("libtpu"),
                    reason="libtpu is not installed (the hlo extra)")
def test_optimizer_steps_compile_for_tpu_v5e(tmp_path_factory, tmp_path):
    exported = _export(tmp_path_factory, "tpu")
    out = tmp_path / "tpu.json"
    completed = _compile("tpu-v5e", exported,
                         extra=(f"--json_out={out}", "--unstaged"))
    result = json.loads(out.read_text())
    assert result["chip"].startswith("TPU v5e")
    assert set(result["programs"]) == {"tf_lamb", "keras_lamb_xla"}
    for name, program in result["programs"].items():
        assert program["kernels"] > 0, name
        assert program["flops"] > 0, name
        # Every variable, slot and gradient is read at least once.
        assert program["bytes_per_param"] >= 16, name
        # Without staging into vector memory, each kernel's reads and
        # writes of device memory alone: w, m, v read and written and g
        # read at least once (28 B), and no more than what staging adds.
        unstaged = program["unstaged"]
        assert 28 <= unstaged["bytes_per_param"] <= program[
            "bytes_per_param"], name
        assert program["ratio_to_floor"] == pytest.approx(
            program["bytes_per_param"] / 44)
        assert program["temp_bytes"] >= 0 and program["compile_s"] > 0
    assert "bytes/param" in completed.stdout and "tf_lamb" in completed.stdout


@pytest.mark.skipif(not _has_cuda_plugin(),
                    reason="jax's CUDA plugin is not installed "
                    "(pip install 'jax[cuda12]')")
def test_optimizer_steps_compile_for_h100(tmp_path_factory, tmp_path):
    exported = _export(tmp_path_factory, "gpu")
    out = tmp_path / "h100.json"
    _compile("h100", exported, extra=(f"--json_out={out}",))
    result = json.loads(out.read_text())
    for name, program in result["programs"].items():
        assert program["kernels"] > 0, name
        assert "bytes_per_param" not in program  # XLA:GPU has no cost model
