"""A pretraining run planned for a chip that is not here.

`python -m train.pretrain --compile_for=tpu-v5e ...` takes the run's own
flags (model, sequence length, batch, precision, accumulation, optimizer),
builds the training step that `--jit_compile` runs on one replica (forward,
backward, gradient accumulation and the LAMB update, one XLA program),
compiles it with the target's own compiler without the device
(`train.plan.accelerators`) and reports, training nothing and writing nothing:

- whether it compiles (with the compiler's first error line if not);
- the memory it needs (arguments, temporaries, outputs not updated in place)
  against the chip's;
- the largest per-chip batch that fits, found by compiling at a few batch
  sizes (doubling or halving from the run's);
- its flops and bytes, and a roofline estimate of the step's time and
  examples per second per chip from the chip's public peak figures.

The per-chip batch is the run's micro-batch: --train_batch_size divided by
--gradient_accumulation_steps (one replica per chip).
"""

import dataclasses
import math
import sys
import time
from typing import Callable, Optional

from train.plan import accelerators

# No per-chip batch above this (and at most accelerators.MAX_FIT_COMPILES
# compiles to find the largest that fits): a program far too big for the
# chip makes the compiler work hard to fit it (minutes), and BERT
# pretraining runs tens to hundreds of examples per chip.
MAX_BATCH = 1024


@dataclasses.dataclass
class CompiledStep:
    """What the target's compiler made of the step at one per-chip batch."""

    batch: int
    compiled: bool
    error: Optional[str] = None
    argument_bytes: int = 0
    output_bytes: int = 0
    alias_bytes: int = 0
    temp_bytes: int = 0
    flops: Optional[float] = None
    bytes_accessed: Optional[float] = None
    device_memory_bytes: Optional[int] = None
    kernels: Optional[int] = None
    export_s: float = 0.0
    compile_s: float = 0.0

    @property
    def memory_bytes(self):
        """Device memory the step needs: its arguments (variables, slots,
        the batch), its temporaries and the outputs not written in place."""
        return (self.argument_bytes + self.temp_bytes + self.output_bytes
                - self.alias_bytes)

    def fits(self, capacity_bytes):
        return self.compiled and self.memory_bytes <= capacity_bytes

    @property
    def out_of_memory(self):
        """Whether the compiler refused the step for want of device memory
        (libtpu: "Ran out of memory in memory space hbm")."""
        return not self.compiled and any(
            sign in (self.error or "")
            for sign in ("Ran out of memory", "HbmOom", "RESOURCE_EXHAUSTED"))


def largest_fitting_batch(
        compile_at: Callable[[int], CompiledStep], capacity_bytes: float,
        start: int, max_compiles: int = accelerators.MAX_FIT_COMPILES,
        max_batch: int = MAX_BATCH):
    """(largest batch that fits or None, {batch: CompiledStep} tried).

    Only batches `start * 2**k` up to `max_batch` are tried, at most
    `max_compiles` of them. From a `start` that fits, the memory of `start`
    and `2 * start` predicts (as a line) where the chip fills up, and the
    search jumps to the batch of that form below the prediction; between
    the largest batch known to fit and the smallest known not to, it
    bisects the exponent. From a `start` that does not fit it halves.
    """
    tried = {}

    def fits(batch):
        if batch not in tried:
            tried[batch] = compile_at(batch)
        return tried[batch].fits(capacity_bytes)

    def budget_left():
        return len(tried) < max_compiles

    batch = start
    if not fits(batch):
        while batch > 1 and budget_left():
            batch //= 2
            if fits(batch):
                return batch, tried
        return None, tried
    good, bad = 0, None  # exponents k of start * 2**k
    ceiling = max(0, int(math.floor(math.log2(max(max_batch, start)
                                              / start))))
    if ceiling == 0:
        return start, tried
    if budget_left():
        if fits(2 * start):
            good = 1
        else:
            bad = 1
    if good == 1:
        low, high = (tried[start].memory_bytes,
                     tried[2 * start].memory_bytes)
        per_example = (high - low) / start
        if per_example > 0:
            predicted = start + (capacity_bytes - low) / per_example
            guess = min(ceiling, int(math.floor(math.log2(
                max(predicted / start, 2)))))
            if guess > good and budget_left():
                if fits(start * 2**guess):
                    good = guess
                else:
                    bad = guess
    while budget_left() and good < ceiling:
        if bad is None:
            candidate = good + 1
        elif bad - good <= 1:
            break
        else:
            candidate = (good + bad) // 2
        if fits(start * 2**candidate):
            good = candidate
        else:
            bad = candidate
    return start * 2**good, tried


def model_flops(bert_config, batch, seq_length, predictions):
    """Flops of one training step of `batch` sequences, counted from the
    model (for targets without a cost analysis): 6 per weight per token for
    the encoder's matrices (forward and backward), the attention scores and
    their weighting, and the MLM head over the predicted positions."""
    hidden, layers = bert_config.hidden_size, bert_config.num_hidden_layers
    inner = bert_config.intermediate_size
    per_layer = 4 * hidden * hidden + 2 * hidden * inner
    tokens = batch * seq_length
    encoder = 6 * layers * per_layer * tokens
    attention = 6 * 2 * layers * batch * seq_length * seq_length * hidden
    head = 6 * batch * predictions * (hidden * hidden
                                      + hidden * bert_config.vocab_size)
    return float(encoder + attention + head)


def roofline(step, spec, bert_config, seq_length, predictions):
    """An estimate of the step's seconds on the chip: the larger of its
    flops at the chip's peak and its bytes at the chip's bandwidth."""
    flops = step.flops
    flops_source = "cost analysis"
    if not flops:
        flops = model_flops(bert_config, step.batch, seq_length, predictions)
        flops_source = "model"
    traffic = step.bytes_accessed or step.device_memory_bytes or 0.0
    compute_s = flops / spec["peak_flops"]
    memory_s = traffic / spec["hbm_bytes_per_s"]
    seconds = max(compute_s, memory_s)
    return {"flops": flops, "flops_source": flops_source,
            "bytes": traffic, "compute_s": compute_s, "memory_s": memory_s,
            "bound": "compute" if compute_s >= memory_s else "memory",
            "step_s": seconds, "examples_per_s": step.batch / seconds}


# -- the step, with TensorFlow -------------------------------------------------

def feature_specs(batch, seq_length, predictions):
    """The TensorSpecs of one batch, as train.data.reading yields it."""
    # Imported here, as TensorFlow is: a plan needs it only to trace.
    from train.data.features import batch_specs
    return batch_specs(batch, seq_length, predictions)


class StepExporter:
    """The training step of `config` on one replica, as HLO at any batch.

    The model, optimizer and slots are built once (on this CPU, in the
    run's precision); each batch size traces the step anew, with the
    optimizer's step in the form it takes on `device_kind` ("tpu" or "gpu";
    tf_lamb.compiled.FORMS), not this CPU's.
    """

    def __init__(self, config, bert_config, phase, device_kind):
        self.device_kind = device_kind
        import keras
        import tensorflow as tf
        from train.loop import trainer as trainer_lib
        self.phase = phase
        previous = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(config.mixed_precision)
        try:
            self.trainer = trainer_lib.Trainer(
                dataclasses.replace(config, jit_compile=True),
                tf.distribute.get_strategy(), bert_config, [phase])
        finally:
            keras.mixed_precision.set_global_policy(previous)
        trainer = self.trainer
        # An update's last micro-step: forward, backward, the accumulated
        # sums added (with accumulation) and the optimizer's update.
        self._step = tf.function(
            lambda features: trainer._replica_update(
                features, tf.constant(0, tf.int64)),
            jit_compile=True, autograph=False)

    @property
    def parameters(self):
        return sum(int(v.shape.num_elements())
                   for v in self.trainer.model.trainable_variables)

    def hlo(self, batch):
        """The serialized HloModuleProto of the step at per-chip `batch`."""
        import tensorflow as tf
        # Zeros of the batch's shapes: the IR of a dict of TensorSpecs
        # cannot be asked for, and only the shapes matter.
        features = {name: tf.zeros(spec.shape, spec.dtype)
                    for name, spec in feature_specs(
                        batch, self.phase.seq_length,
                        self.phase.predictions).items()}
        from tf_lamb import compiled
        # The variables live on this CPU; the program is for the target.
        with compiled.traced_for(self.device_kind):
            return accelerators.without_copies(
                self._step.experimental_get_compiler_ir(features)(
                    stage="hlo_serialized"))


def compile_step(device, exporter, batch):
    """A CompiledStep of `exporter`'s step at `batch` for `device`."""
    started = time.perf_counter()
    proto = exporter.hlo(batch)
    export_s = time.perf_counter() - started
    compile_started = time.perf_counter()
    try:
        executable, seconds = accelerators.compile_proto(device, proto)
    except Exception as error:  # the compiler's own  pylint: disable=broad-except
        first_line = (str(error).strip().splitlines() or [repr(error)])[0]
        # A refusal can take as long as a compile (libtpu: half an hour
        # for BERT-large at 512 tokens), so its time is kept too.
        return CompiledStep(batch, False, error=first_line,
                            export_s=export_s,
                            compile_s=time.perf_counter() - compile_started)
    measured, _ = accelerators.measure(executable, seconds, None)
    return CompiledStep(
        batch, True, argument_bytes=measured["argument_bytes"],
        output_bytes=measured["output_bytes"],
        alias_bytes=measured["alias_bytes"],
        temp_bytes=measured["temp_bytes"], flops=measured.get("flops"),
        bytes_accessed=measured.get("bytes_accessed"),
        device_memory_bytes=measured["device_memory_bytes"],
        kernels=measured["kernels"], export_s=export_s, compile_s=seconds)


def plan(config, bert_config, target, search=True):
    """The report's content for `config` on `target` (a dict)."""
    spec = accelerators.TARGETS[target]
    device = accelerators.target_device(target)
    phase = config.phases()[-1 if config.phase2_steps else 0]
    batch = config.accumulation.micro_batch_size(phase.batch_size)
    exporter = StepExporter(config, bert_config, phase,
                            "tpu" if spec["platform"] == "tpu" else "gpu")
    steps = {}

    def compile_at(b):
        if b not in steps:
            print(f"[compile_for] {target}: compiling the step at per-chip "
                  f"batch {b} ...", file=sys.stderr, flush=True)
            steps[b] = step = compile_step(device, exporter, b)
            # Each compile can take many minutes: its outcome is shown as
            # it comes, so a search cut short still says what it found.
            outcome = (f"{_gib(step.memory_bytes)} of "
                       f"{_gib(spec['hbm_bytes'])}, "
                       f"{'fits' if step.fits(spec['hbm_bytes']) else 'does not fit'}"
                       if step.compiled else f"did not compile ({step.error})")
            print(f"[compile_for] {target}: batch {b}: {outcome} (export "
                  f"{step.export_s:.0f} s, compile "
                  f"{step.compile_s:.0f} s)", file=sys.stderr,
                  flush=True)
        return steps[b]

    asked = compile_at(batch)
    largest = None
    if search:
        largest, _ = largest_fitting_batch(
            compile_at, spec["hbm_bytes"], batch,
            max_compiles=config.compile_for_max_compiles)
    result = {
        "target": target, "chip": spec["chip"],
        "unit": spec.get("unit", "chip"),
        "chip_memory_bytes": spec["hbm_bytes"],
        "model": dataclasses.asdict(bert_config),
        "parameters": exporter.parameters,
        "seq_length": phase.seq_length, "predictions": phase.predictions,
        "precision": config.mixed_precision,
        "accumulation_steps": config.accumulation.steps,
        "batch": batch, "step": dataclasses.asdict(asked),
        "memory_bytes": asked.memory_bytes if asked.compiled else None,
        "fits": asked.fits(spec["hbm_bytes"]),
        "largest_batch": largest,
        "tried": {b: {"compiled": s.compiled,
                      "memory_bytes": s.memory_bytes if s.compiled else None,
                      "fits": s.fits(spec["hbm_bytes"]),
                      "out_of_memory": s.out_of_memory}
                  for b, s in sorted(steps.items())},
    }
    if asked.compiled:
        result["estimate"] = roofline(asked, spec, bert_config,
                                      phase.seq_length, phase.predictions)
    if largest is not None and largest != batch:
        result["estimate_at_largest"] = roofline(
            steps[largest], spec, bert_config, phase.seq_length,
            phase.predictions)
    return result


def _gib(value):
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def _tried(outcome):
    if outcome["compiled"]:
        return _gib(outcome["memory_bytes"]) + (
            "" if outcome["fits"] else " (too big)")
    return ("too big (the compiler ran out of device memory)"
            if outcome.get("out_of_memory") else "did not compile")


def report(result):
    """The plan as the few lines `--compile_for` prints."""
    step = result["step"]
    model = result["model"]
    unit = result.get("unit", "chip")
    lines = [
        f"Compiled for {result['chip']} without the device: BERT "
        f"{model['num_hidden_layers']} layers x {model['hidden_size']} "
        f"({result['parameters']:,} parameters), sequence length "
        f"{result['seq_length']}, per-{unit} batch {result['batch']}"
        + (f" (x {result['accumulation_steps']} accumulated)"
           if result["accumulation_steps"] > 1 else "")
        + f", {result['precision']}"]
    if not step["compiled"]:
        lines.append(f"compiled: no: {step['error']}")
    else:
        lines.append(f"compiled: yes ({step['kernels']} kernels, "
                     f"{step['compile_s']:.0f} s)")
        lines.append(
            f"memory: arguments {_gib(step['argument_bytes'])} + "
            f"temporaries {_gib(step['temp_bytes'])} + outputs not in place "
            f"{_gib(step['output_bytes'] - step['alias_bytes'])} = "
            f"{_gib(result['memory_bytes'])} of the {unit}'s "
            f"{_gib(result['chip_memory_bytes'])}: "
            + ("fits" if result["fits"] else "does not fit"))
    tried = ", ".join(f"{b}: {_tried(t)}"
                      for b, t in result["tried"].items())
    largest = result["largest_batch"]
    lines.append(f"largest per-{unit} batch that fits: "
                 f"{largest if largest is not None else 'none tried'} "
                 f"(compiled at {tried})")
    for key, label in (("estimate", f"batch {result['batch']}"),
                       ("estimate_at_largest", f"batch {largest}")):
        estimate = result.get(key)
        if not estimate:
            continue
        lines.append(
            f"estimate ({label}; roofline from the chip's peak, not a "
            f"measurement): {estimate['flops']:.3g} flops "
            f"({estimate['flops_source']}) and {estimate['bytes']:.3g} bytes "
            f"per step -> {estimate['step_s'] * 1e3:.1f} ms "
            f"({estimate['bound']}-bound), "
            f"{estimate['examples_per_s']:,.0f} examples/s per {unit}")
    return lines


def run(config, bert_config):
    """Plans `config` for `config.compile_for`, prints the report and
    returns the plan."""
    result = plan(config, bert_config, config.compile_for)
    for line in report(result):
        print(line, flush=True)
    return result


def default_bert_config(config):
    """The model a plan compiles when no vocabulary is at hand yet: the
    run's size with --vocab_size tokens (the vocabulary it would learn)."""
    from train.model import bert
    return bert.BertConfig.for_size(config.model_size_name,
                                        config.vocab_size)

