"""The accelerators' own compilers, run here without the device.

libtpu compiles for Cloud TPUs and jax's CUDA plugin (XLA:GPU and ptxas) for
NVIDIA GPUs, each given a description of a chip that is not there
(`target_device`); `compile_proto` compiles a serialized HloModuleProto for
it, and `measure` reads what the compiler made of it: the kernels launched,
the cost analysis (TPU), an estimate of the device-memory traffic, and the
memory the program needs. `python -m benchmarks.compile_for` reports this
for exported optimizer steps; `python -m train.pretrain --compile_for=...`
for the training step (`train.plan.compile_plan`).

Neither compiler is a dependency (libtpu ~480 MB, the CUDA plugin
~5.5 GB): without one, `CompilerMissing` says which command installs it.
Nothing here imports TensorFlow, and jax only when a compiler is asked for.
"""

import os
import re
import time

EXACT_FLOOR_BYTES_PER_PARAM = 44  # float32, benchmarks.optimizer_step

# At most this many compiles to find the largest batch that fits on a chip
# (train.plan.compile_plan; the default of --compile_for_max_compiles): a
# program far too big for the chip makes the compiler work hard to fit it,
# minutes per compile.
MAX_FIT_COMPILES = 4

# GpuTargetConfigProto fields (public chip specifications), as XLA:GPU reads
# them to compile for a GPU that is not there.
_GPU_FIELDS = """gpu_device_info {{ threads_per_block_limit: 1024
  threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: {smem_core} threads_per_core_limit: 2048
  core_count: {cores} fpus_per_core: {fpus} block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535 block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth} l2_cache_size: {l2} clock_rate_ghz: {clock}
  device_memory_size: {memory} shared_memory_per_block_optin: {smem_optin}
  cuda_compute_capability {{ major: {major} minor: {minor} }}
  registers_per_core_limit: 65536 registers_per_block_limit: 65536 }}
platform_name: "CUDA" dnn_version_info {{ major: 9 minor: 1 }}
device_description_str: "{name}"
"""

# Each target: how to reach its compiler, and the chip's public peak figures
# (dense bf16 flop/s, HBM bytes/s, HBM bytes) for estimates made from the
# compiled counts.
TARGETS = {
    "h100": {
        "platform": "cuda", "chip": "NVIDIA H100 SXM 80GB",
        "gpu": dict(name="NVIDIA H100 80GB HBM3", smem_core=233472,
                    cores=132, fpus=128, bandwidth=3352320000000,
                    l2=52428800, clock=1.98, memory=84978434048,
                    smem_optin=232448, major=9, minor=0),
        "peak_flops": 989e12, "hbm_bytes_per_s": 3.35e12,
        "hbm_bytes": 80e9},
    "a100": {
        "platform": "cuda", "chip": "NVIDIA A100 SXM 80GB",
        "gpu": dict(name="NVIDIA A100-SXM4-80GB", smem_core=167936,
                    cores=108, fpus=64, bandwidth=2039000000000,
                    l2=41943040, clock=1.41, memory=85899345920,
                    smem_optin=166912, major=8, minor=0),
        "peak_flops": 312e12, "hbm_bytes_per_s": 2.04e12,
        "hbm_bytes": 80e9},
    "tpu-v5e": {"platform": "tpu", "topology": "v5e:1x1",
                "chip": "TPU v5e (one chip)", "peak_flops": 197e12,
                "hbm_bytes_per_s": 819e9, "hbm_bytes": 16 * 2**30},
    # libtpu compiles a v4 without the device one TensorCore at a time
    # (v4:2x2x1 is 8 devices of 16 GiB; it refuses a step above 15.25 G),
    # where a v4 VM runs both cores of a chip as one device (megacore): so
    # the figures are a core's, half a chip's, and a chip takes twice the
    # batch at about the same step time.
    "tpu-v4": {"platform": "tpu", "topology": "v4:2x2x1",
               "chip": "TPU v4 (one TensorCore, half a chip)",
               "unit": "core", "peak_flops": 137.5e12,
               "hbm_bytes_per_s": 0.6e12, "hbm_bytes": 16 * 2**30},
    "tpu-v6e": {"platform": "tpu", "topology": "v6e:1x1",
                "chip": "TPU v6e (one chip)", "peak_flops": 918e12,
                "hbm_bytes_per_s": 1.64e12, "hbm_bytes": 32 * 2**30},
}

# The figures in docs/optimizer_performance.md and docs/planning.md were
# compiled by these versions.
INSTALL = {
    "tpu": "pip install jax==0.10.2 jaxlib==0.10.2 libtpu==0.0.52   "
           "(libtpu, ~480 MB)",
    "cuda": 'pip install "jax[cuda12]==0.10.2"   (jax\'s CUDA plugin and '
            "ptxas, ~5.5 GB)",
}


class CompilerMissing(RuntimeError):
    """The target's compiler is not installed; the message says how."""


# -- reading an optimized program (text, no jax needed) ----------------------

_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLED = re.compile(
    r"(?:body|condition|to_apply|true_computation|false_computation)"
    r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%?([\w.\-]+) = (.*?) ([a-z][\w\-]*)\((.*)$")
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\](\{[^}]*\})?")
_ELEMENT_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2,
                  "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8,
                  "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# Instructions that launch no kernel and move no data of their own.
_FREE = {"parameter", "get-tuple-element", "tuple", "constant", "bitcast",
         "copy-done", "slice-done", "after-all", "partition-id",
         "replica-id", "opt-barrier", "while", "conditional", "call"}


def computations(optimized_hlo):
    """{name: [instruction lines]} of an HLO module's text, and the name of
    its entry computation."""
    bodies, entry, current = {}, None, None
    for line in optimized_hlo.splitlines():
        match = _COMPUTATION.match(line)
        if match and not line.startswith(" "):
            current = match.group(2)
            bodies[current] = []
            if match.group(1):
                entry = current
        elif line.startswith("}"):
            current = None
        elif current is not None:
            bodies[current].append(line)
    if entry is None:
        raise ValueError("no ENTRY computation in the optimized program")
    return bodies, entry


def _control_flow_callees(line):
    """The computations a while, conditional or call instruction runs (not
    fused computations or reducers, which are parts of one kernel)."""
    if not re.search(r" (while|conditional|call)\(", line):
        return []
    names = _CALLED.findall(line)
    for branches in _BRANCHES.findall(line):
        names += [b.strip().lstrip("%") for b in branches.split(",")]
    return names


def _launched(bodies, name):
    """The instruction lines of computation `name` and of the loops, branches
    and calls it runs, recursively: what one execution can launch."""
    lines = []
    for line in bodies[name]:
        lines.append(line)
        for callee in _control_flow_callees(line):
            lines += _launched(bodies, callee)
    return lines


def count_kernels(optimized_hlo):
    """The fusions and custom calls (library calls: cuBLAS, cuDNN, a TPU's
    own) that the optimized program's entry computation launches, counting
    those inside its loops and branches once. A TPU's ConcatBitcast, which
    joins slices staged in its vector memory in place, is not a kernel."""
    bodies, entry = computations(optimized_hlo)
    return sum(1 for line in _launched(bodies, entry)
               if " fusion(" in line or (" custom-call(" in line
                                         and "ConcatBitcast" not in line))


def _arrays(shape_text):
    """[(bytes, in_vector_memory)] of every array in a shape string; the
    TPU's layouts mark its vector memory (VMEM) as memory space S(1)."""
    arrays = []
    for element, dims, layout in _ARRAY.findall(shape_text):
        if element not in _ELEMENT_BYTES:
            continue
        count = 1
        for dim in filter(None, dims.split(",")):
            count *= int(dim)
        arrays.append((count * _ELEMENT_BYTES[element],
                       bool(layout) and "S(1)" in layout))
    return arrays


def device_memory_bytes(optimized_hlo):
    """An estimate of the bytes one execution moves to and from device
    memory (HBM): each kernel's operands and results that are not in the
    vector memory, and each staging copy (copy-start, slice-start) once.

    The cost analysis counts a staged operand three times (the copy's read
    and write, then the kernel's read of the copy); the device's memory sees
    it once.
    """
    bodies, entry = computations(optimized_hlo)
    shapes, total = {}, 0
    for line in _launched(bodies, entry):
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, shape, opcode, rest = match.groups()
        shapes[name] = shape
        if opcode in _FREE:
            continue
        operands = re.findall(r"%([\w.\-]+)", rest.split("), ")[0])
        if opcode in ("copy-start", "slice-start"):
            # ((source), destination, context): the bytes that cross once.
            moved = _arrays(shape)
            total += moved[1][0] if len(moved) > 1 else moved[0][0]
            continue
        if opcode == "custom-call" and "ConcatBitcast" in line:
            continue  # joins staged slices in place
        arrays = _arrays(shape)
        for operand in operands:
            arrays += _arrays(shapes.get(operand, ""))
        total += sum(size for size, in_vector_memory in arrays
                     if not in_vector_memory)
    return total


def without_copies(serialized):
    """`serialized` (an HloModuleProto) with every `copy` instruction
    replaced by its operand.

    TensorFlow ends each output of a compiled function with a copy
    (`XLA_Retvals.N`). (Reads the proto with TensorFlow's hlo_pb2: call it
    where TensorFlow made the program.) jaxlib 0.11's HLO-to-StableHLO import rejects
    them ("failed to legalize operation 'mhlo.copy'"); a copy is the
    identity on values, and the input/output aliases keep the updates in
    place, so the program computes the same without them.
    """
    from tensorflow.compiler.xla.service import hlo_pb2
    module = hlo_pb2.HloModuleProto.FromString(serialized)
    for computation in module.computations:
        source = {i.id: i.operand_ids[0] for i in computation.instructions
                  if i.opcode == "copy"}
        if not source:
            continue
        kept = [i for i in computation.instructions if i.id not in source]
        for instruction in kept:
            instruction.operand_ids[:] = [source.get(o, o)
                                          for o in instruction.operand_ids]
        del computation.instructions[:]
        computation.instructions.extend(kept)
        computation.root_id = source.get(computation.root_id,
                                         computation.root_id)
    return module.SerializeToString()


# -- compiling ---------------------------------------------------------------

def _jax(platform):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no device is wanted
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # not on a TPU VM
    # libtpu locks /tmp/libtpu_lockfile for the one process that may drive
    # the chips; compiling without them, several processes may load it.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    # The CUDA plugin checks the installed CUDA against a GPU's driver
    # unless only the CPU is asked for; here there is no GPU to check.
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    try:
        import jax
        from jax.experimental import topologies
    except ImportError:
        raise CompilerMissing(f"jax is not installed: {INSTALL[platform]}")
    jax.config.update("jax_enable_x64", True)  # TensorFlow's int64 counters
    if not jax.config.jax_platforms:
        # Keras imports jax before this runs, so the environment came late.
        jax.config.update("jax_platforms", "cpu")
    if platform == "tpu":
        try:
            import libtpu  # noqa: F401
        except ImportError:
            raise CompilerMissing(
                f"libtpu is not installed: {INSTALL['tpu']}") from None
    elif not any(name.startswith("jax_cuda") and name.endswith("plugin")
                 for name in _installed_modules()):
        raise CompilerMissing(
            f"jax's CUDA plugin is not installed: {INSTALL['cuda']}")
    return jax, topologies


def _installed_modules():
    import pkgutil
    return {module.name for module in pkgutil.iter_modules()}


def target_device(target):
    """A compile-only device of `target` (a key of TARGETS)."""
    spec = TARGETS[target]
    jax, topologies = _jax(spec["platform"])
    if spec["platform"] == "tpu":
        topology = topologies.get_topology_desc(
            topology_name=spec["topology"], platform="tpu")
    else:
        topology = topologies.get_topology_desc(
            "", platform="cuda", topology="1x1x1",
            target_config=_GPU_FIELDS.format(**spec["gpu"]))
    return topology.devices[0]


def compile_proto(device, proto):
    """(executable, seconds) of a serialized HloModuleProto for `device`."""
    from jax._src import compiler
    from jax._src.interpreters import mlir
    from jax._src.lib import _jax, xla_client
    from jax._src.lib.mlir import ir
    with mlir.make_ir_context():
        module = ir.Module.parse(_jax.mlir.hlo_to_stablehlo(proto))
        started = time.perf_counter()
        executable = device.client.compile(
            module, executable_devices=xla_client.DeviceList((device,)),
            compile_options=compiler.get_compile_options(num_replicas=1,
                                                         num_partitions=1))
        return executable, time.perf_counter() - started


def _cost(executable):
    try:
        cost = executable.cost_analysis()
    except Exception:  # XLA:GPU: UNIMPLEMENTED  pylint: disable=broad-except
        return {}
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return dict(cost or {})


def measure(executable, compile_s, parameters):
    """What the compiler made of one program: the report's fields."""
    if hasattr(executable, "as_text"):  # jax's own Compiled (optax)
        optimized = executable.as_text()
        memory = executable.memory_analysis()
    else:
        optimized = "\n".join(m.to_string()
                              for m in executable.hlo_modules())
        memory = executable.get_compiled_memory_stats()
    cost = _cost(executable)
    result = {
        "kernels": count_kernels(optimized),
        "compile_s": compile_s,
        "argument_bytes": memory.argument_size_in_bytes,
        "output_bytes": memory.output_size_in_bytes,
        "alias_bytes": memory.alias_size_in_bytes,
        "temp_bytes": memory.temp_size_in_bytes,
        "device_memory_bytes": device_memory_bytes(optimized),
    }
    if "bytes accessed" in cost:
        result["bytes_accessed"] = cost["bytes accessed"]
    if "flops" in cost:
        result["flops"] = cost["flops"]
    if parameters:
        result["device_memory_bytes_per_param"] = (
            result["device_memory_bytes"] / parameters)
        if "bytes_accessed" in result:
            result["bytes_per_param"] = result["bytes_accessed"] / parameters
            result["ratio_to_floor"] = (result["bytes_per_param"]
                                        / EXACT_FLOOR_BYTES_PER_PARAM)
    return result, optimized
