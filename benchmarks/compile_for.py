r"""What a GPU's or a TPU's own compiler makes of a program, without the device.

The accelerators' compilers run on a CPU machine through jax: libtpu for
Cloud TPUs and jax's CUDA plugin (XLA:GPU and ptxas) for NVIDIA GPUs, each
given a description of a chip that is not there. This compiles the XLA
programs that `benchmarks.export_hlo` writes (any program in its manifest, or
any serialized HloModuleProto) for such a chip, and reports for each:

  kernels       the fusions and library calls the optimized program launches
                (its entry computation and the loops and branches it calls)
  bytes/param   TPU: "bytes accessed" of the compiler's cost analysis, per
                parameter of the model; `x * 2` is 8 B per element. It counts
                every staging copy into and out of the TPU's vector memory
                (16 B per element for each) besides the fusions' own reads
                and writes. XLA:GPU has no cost analysis.
  HBM bytes     from the optimized program, the bytes its kernels read from
                and write to device memory, and each staging copy once (the
                traffic the device's bandwidth limits; an estimate)
  to floor      bytes/param against the exact-LAMB floor, 44 B/param
  flops, temp   the cost analysis' flops (TPU); the scratch memory the
                program needs beside its arguments and outputs
  compile       seconds the compiler took

With `--optax`, optax.lamb on the same variable shapes (jax.jit, donated
state) is compiled beside them as the JAX anchor.

  python -m benchmarks.export_hlo --model=base --device_kind=tpu --out_dir=hlo/tpu
  python -m benchmarks.compile_for --target=tpu-v5e hlo/tpu --optax
  python -m benchmarks.export_hlo --model=base --device_kind=gpu --out_dir=hlo/gpu
  python -m benchmarks.compile_for --target=h100 hlo/gpu --json_out=h100.json

It needs jax and the target's compiler, neither of them a dependency of
tf_lamb (libtpu is ~480 MB, jax's CUDA plugin ~5.5 GB); when one is missing it
says which command installs it. It imports no TensorFlow.
"""

import argparse
import json
import os
import re
import sys
import time

from benchmarks import _common

EXACT_FLOOR_BYTES_PER_PARAM = 44  # float32, benchmarks.optimizer_step

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
    "tpu-v4": {"platform": "tpu", "topology": "v4:2x2x1",
               "chip": "TPU v4 (one chip)", "peak_flops": 275e12,
               "hbm_bytes_per_s": 1.2e12, "hbm_bytes": 32 * 2**30},
    "tpu-v6e": {"platform": "tpu", "topology": "v6e:1x1",
                "chip": "TPU v6e (one chip)", "peak_flops": 918e12,
                "hbm_bytes_per_s": 1.64e12, "hbm_bytes": 32 * 2**30},
}

# The figures in docs/performance.md were compiled by these versions.
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


# -- compiling ---------------------------------------------------------------

def _jax(platform):
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # no device is wanted
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # not on a TPU VM
    try:
        import jax
        from jax.experimental import topologies
    except ImportError:
        raise CompilerMissing(f"jax is not installed: {INSTALL[platform]}")
    jax.config.update("jax_enable_x64", True)  # TensorFlow's int64 counters
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


def optax_lamb_program(jax, device, model):
    """(executable, seconds) of optax.lamb's update on `model`'s BERT
    variable shapes, jitted for `device` with its state donated."""
    try:
        import optax
    except ImportError:
        raise CompilerMissing("optax is not installed: pip install optax")
    import jax.numpy as jnp
    from benchmarks import optimizer_step
    shapes = [shape for _, shape in optimizer_step.bert_shapes(
        **optimizer_step.MODELS[model])]
    optimizer = optax.lamb(1e-3)

    def step(params, state, grads):
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    sharding = jax.sharding.SingleDeviceSharding(device)

    def spec(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)

    params = [jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding)
              for s in shapes]
    state = jax.tree.map(spec, jax.eval_shape(optimizer.init, params))
    started = time.perf_counter()
    lowered = jax.jit(step, donate_argnums=(0, 1)).trace(
        params, state, params).lower(lowering_platforms=(
            "cuda" if device.platform in ("gpu", "cuda") else "tpu",))
    executable = lowered.compile()
    return executable, time.perf_counter() - started


# -- the command -------------------------------------------------------------

def programs_of(path):
    """[(name, proto path, manifest or {})] of an export_hlo directory or of
    one .hlo.pb file."""
    if os.path.isdir(path):
        manifest_path = os.path.join(path, "manifest.json")
        with open(manifest_path) as f:
            manifest = json.load(f)
        return [(name, os.path.join(path, entry["hlo"]), manifest)
                for name, entry in manifest["candidates"].items()]
    return [(os.path.basename(path).split(".")[0], path, {})]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compile_for",
        description=__doc__.split("\n\n")[0])
    parser.add_argument("programs", nargs="*",
                        help="export_hlo --out_dir directories or .hlo.pb "
                        "files")
    parser.add_argument("--target", required=True, choices=sorted(TARGETS),
                        help="the chip to compile for")
    parser.add_argument("--optax", action="store_true",
                        help="also compile optax.lamb on the programs' "
                        "BERT shapes (the JAX anchor)")
    parser.add_argument("--optax_model", default=None,
                        choices=("tiny", "base", "large"),
                        help="the shapes for --optax without programs")
    parser.add_argument("--parameters", type=int, default=None,
                        help="the model's parameter count, for the per-"
                        "parameter figures of .hlo.pb files named alone "
                        "(an export directory's manifest has it)")
    parser.add_argument("--dump_dir", default=None,
                        help="write each optimized program here (text)")
    parser.add_argument("--json_out", default=None,
                        help="write the results here as JSON")
    args = parser.parse_args(argv)
    if not args.programs and not (args.optax and args.optax_model):
        parser.error("name at least one program (or --optax with "
                     "--optax_model)")
    for path in args.programs:
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "manifest.json")):
                parser.error(f"{path}: no manifest.json; write it with "
                             "python -m benchmarks.export_hlo --out_dir=...")
        elif not os.path.isfile(path):
            parser.error(f"{path}: no such file or directory")
    return args


def run(args):
    spec = TARGETS[args.target]
    device = target_device(args.target)
    result = {"benchmark": "compile_for", "target": args.target,
              "chip": spec["chip"], "programs": {},
              "exact_floor_bytes_per_param": EXACT_FLOOR_BYTES_PER_PARAM,
              "machine": _common.machine_info()}
    import jax
    result["jax"] = jax.__version__
    models = set()
    for path in args.programs:
        for name, proto_path, manifest in programs_of(path):
            with open(proto_path, "rb") as f:
                proto = f.read()
            print(f"[compile_for] {args.target}: compiling {name} "
                  f"({proto_path}) ...", file=sys.stderr, flush=True)
            executable, seconds = compile_proto(device, proto)
            parameters = manifest.get("parameters", args.parameters)
            measured, optimized = measure(executable, seconds, parameters)
            measured["source"] = proto_path
            for key in ("model", "dtype", "device_kind", "config",
                        "parameters", "variables", "tf_lamb_source"):
                if key in manifest:
                    measured[key] = manifest[key]
            if "model" in manifest:
                models.add(manifest["model"])
            label = name if len(args.programs) == 1 else (
                f"{os.path.basename(os.path.normpath(path))}/{name}")
            result["programs"][label] = measured
            _dump(args, label, optimized)
    if args.optax:
        from benchmarks import optimizer_step
        for model in sorted(models or {args.optax_model}):
            executable, seconds = optax_lamb_program(jax, device, model)
            parameters = optimizer_step.parameter_count(
                optimizer_step.bert_shapes(**optimizer_step.MODELS[model]))
            measured, optimized = measure(executable, seconds, parameters)
            measured.update(model=model, parameters=parameters)
            label = f"optax_lamb ({model})"
            result["programs"][label] = measured
            _dump(args, label, optimized)
    return result


def _dump(args, label, optimized):
    if not args.dump_dir:
        return
    os.makedirs(args.dump_dir, exist_ok=True)
    name = re.sub(r"[^\w.\-]+", "_", label) + f".{args.target}.hlo.txt"
    with open(os.path.join(args.dump_dir, name), "w") as f:
        f.write(optimized)


def report(result, out=None):
    out = out or sys.stdout
    print(f"\nCompiled for {result['chip']} ({result['target']}, jax "
          f"{result['jax']}), without the device. bytes/param: the "
          "compiler's cost analysis; HBM B/param: an estimate from the "
          f"optimized program; floor: exact LAMB, "
          f"{result['exact_floor_bytes_per_param']} B/param.", file=out)

    def number(value, form):
        return "-" if value is None else form.format(value)

    rows = []
    for label, p in result["programs"].items():
        rows.append([
            label, str(p["kernels"]),
            number(p.get("bytes_per_param"), "{:.1f}"),
            number(p.get("ratio_to_floor"), "{:.2f}x"),
            number(p.get("device_memory_bytes_per_param"), "{:.1f}"),
            number(p.get("flops"), "{:.3g}"),
            _common.fmt_bytes(p["temp_bytes"]),
            f"{p['compile_s']:.1f} s"])
    _common.print_table(["program", "kernels", "bytes/param", "to floor",
                         "HBM B/param", "flops", "temp", "compile"], rows,
                        out=out)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = run(args)
    except CompilerMissing as error:
        print(f"compile_for: {error}", file=sys.stderr)
        sys.exit(3)
    report(result)
    _common.write_json(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
