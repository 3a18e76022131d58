"""Every setting of a pretraining run, as one value checked when it is built.

`PretrainConfig` is what `run_pretraining` takes. The command line
(`python -m train.pretrain`, see train/flags.py) builds one from its flags;
Python code builds one directly:

    from train import PretrainConfig, run_pretraining
    metrics = run_pretraining(PretrainConfig(model_dir="runs/x",
                                             num_train_steps=20))

Field names, defaults and meanings are those of the flags of the same name
(`python -m train.pretrain --helpfull`), and error messages name the setting
as that flag. A bad value raises `InputError` when the config is built, so a
run that starts has settings that make sense together; the data and files
they point to are checked when the run starts, before anything is written.
"""

import dataclasses
import os
from typing import Optional, Tuple

from tf_lamb import check_arguments as check_lamb_arguments
from tf_lamb.distribute import STRATEGIES, is_tpu_name
from train.data import examples
from train.data import features
from train.loop.schedule import GradientAccumulation
from train.model.bert import MODEL_SIZES
from train.plan import accelerators
from train.runtime import paths
from train.runtime.errors import InputError

PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
MODES = ("train", "eval", "train_and_eval")

# Without an explicit warmup: this many updates, or, when phase 1 is shorter
# than that, this share of it (as 50 is of the default 500 updates).
DEFAULT_MODEL_SIZE = "tiny"
DEFAULT_WARMUP_STEPS = 50
DEFAULT_WARMUP_SHARE = 0.1
DEFAULT_GLOBAL_CLIPNORM = 1.0


@dataclasses.dataclass(frozen=True)
class Phase:
    """One phase of training: its updates, example shape and batch."""

    steps: int
    seq_length: int
    predictions: int
    batch_size: int
    files: Tuple[str, ...] = ()

    def with_files(self, files):
        return dataclasses.replace(self, files=tuple(files))


def _tuple(value):
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """The settings of one pretraining run (see the flags of the same name).

    Settings that depend on others are None by default and resolved by the
    properties below: `model_size` (tiny unless `bert_config_file`),
    `warmup_steps` (`effective_warmup_steps`), `global_clipnorm`
    (`effective_global_clipnorm`), `export_dir` (`export_path`).
    """

    # -- where things run
    strategy: str = "one_device"
    tpu: Optional[str] = None
    # A TPU given by name: its zone and project, when not this VM's.
    tpu_zone: Optional[str] = None
    gcp_project: Optional[str] = None
    num_gpus: Optional[int] = None
    worker_wait_seconds: int = 0  # multi_worker; 0: as long as it takes
    # -- model
    model_size: Optional[str] = None
    bert_config_file: Optional[str] = None
    init_checkpoint: Optional[str] = None
    # -- data
    train_files: Tuple[str, ...] = ()
    phase2_train_files: Tuple[str, ...] = ()
    input_file: Tuple[str, ...] = ()
    tfds_name: Optional[str] = None
    tfds_split: str = "train"
    tfds_data_dir: Optional[str] = None
    tfds_text_key: str = "text"
    max_documents: int = 100000
    # Of the documents a run makes its examples from, the share it never
    # trains on: their examples are evaluated at the end of the run.
    heldout_share: float = 0.05
    vocab_file: Optional[str] = None
    max_seq_length: int = features.MAX_SEQ_LENGTH
    max_predictions_per_seq: int = features.MAX_PREDICTIONS_PER_SEQ
    masked_lm_prob: float = features.MASKED_LM_PROB
    short_seq_prob: float = features.SHORT_SEQ_PROB
    dupe_factor: int = features.DUPE_FACTOR
    whole_word_mask: bool = features.WHOLE_WORD_MASK
    # Masks drawn in tf.data at each read (train.data.masking), not the
    # records' own.
    dynamic_masking: bool = False
    do_lower_case: bool = features.DO_LOWER_CASE
    vocab_size: int = features.VOCAB_SIZE
    shuffle_buffer: int = 10000
    # -- schedule
    train_batch_size: int = 32
    gradient_accumulation_steps: int = 1
    num_train_steps: int = 500
    learning_rate: float = 1e-2
    warmup_steps: Optional[int] = None
    end_learning_rate: float = 0.0
    poly_power: float = 1.0
    phase2_steps: int = 0
    phase2_max_seq_length: int = 512
    phase2_max_predictions_per_seq: int = 80
    phase2_train_batch_size: Optional[int] = None
    phase2_learning_rate: Optional[float] = None
    phase2_warmup_steps: int = 0
    # -- optimizer (tf_lamb.Lamb)
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-6
    weight_decay: float = 0.01
    exclude_from_weight_decay: Tuple[str, ...] = ("LayerNorm", "layer_norm",
                                                  "bias")
    # Empty: the trust ratio on every variable, LayerNorm and biases too
    # (keras Lamb's choice). None would take the decay list, as TF Addons
    # does; the batch-size study and the default run's held-out loss
    # measured that setting behind (docs/batch_scaling.md,
    # docs/pretraining.md).
    exclude_from_layer_adaptation: Optional[Tuple[str, ...]] = ()
    max_trust_ratio: Optional[float] = None
    bias_correction: bool = True
    global_clipnorm: Optional[float] = None
    clipnorm: Optional[float] = None
    clipvalue: Optional[float] = None
    use_ema: bool = False
    ema_momentum: float = 0.99
    ema_overwrite_frequency: Optional[int] = None
    loss_scale_factor: Optional[float] = None
    # -- performance
    mixed_precision: str = "float32"
    jit_compile: bool = False
    steps_per_loop: int = 100
    # A chip of train.plan.accelerators.TARGETS.
    compile_for: Optional[str] = None
    # Of the batch search, the asked batch included.
    compile_for_max_compiles: int = accelerators.MAX_FIT_COMPILES
    # -- evaluation
    mode: str = "train"
    eval_files: Tuple[str, ...] = ()
    eval_batch_size: int = 32
    max_eval_steps: Optional[int] = None
    eval_every_steps: Optional[int] = None
    # MLPerf's cadence: after the update whose training examples reach
    # each multiple of this (not with eval_every_steps).
    eval_every_examples: Optional[int] = None
    # Held-out records of phase 2's lengths, evaluated during phase 2.
    phase2_eval_files: Tuple[str, ...] = ()
    # End the run at the first periodic evaluation that reaches this.
    stop_at_mlm_accuracy: Optional[float] = None
    # A file for mlperf_logging.mllog's events (the `mlperf` extra).
    mlperf_log: Optional[str] = None
    # -- output
    model_dir: str = "runs/pretrain"
    save_checkpoints_steps: int = 100
    keep_checkpoint_max: int = 3
    log_steps: int = 50
    export_dir: Optional[str] = None
    seed: int = 42
    # -- failures (docs/failures.md)
    loss_upper_bound: float = 1e6
    recovery_max_trials: int = 1

    def __post_init__(self):
        for name in ("train_files", "phase2_train_files", "input_file",
                     "eval_files", "phase2_eval_files",
                     "exclude_from_weight_decay"):
            object.__setattr__(self, name, _tuple(getattr(self, name)))
        if self.exclude_from_layer_adaptation is not None:
            object.__setattr__(self, "exclude_from_layer_adaptation",
                               _tuple(self.exclude_from_layer_adaptation))
        _validate(self)

    # -- resolved settings -----------------------------------------------------

    @property
    def model_size_name(self):
        return self.model_size or DEFAULT_MODEL_SIZE

    @property
    def phase1_steps(self):
        return self.num_train_steps - self.phase2_steps

    @property
    def effective_warmup_steps(self):
        if self.warmup_steps is not None:
            return self.warmup_steps
        if self.phase1_steps >= DEFAULT_WARMUP_STEPS:
            return DEFAULT_WARMUP_STEPS
        return int(self.phase1_steps * DEFAULT_WARMUP_SHARE)

    @property
    def effective_global_clipnorm(self):
        """The joint clipping norm, or None (clipnorm or clipvalue instead,
        or 0 given: no clipping)."""
        if self.global_clipnorm is not None:
            return self.global_clipnorm or None
        if self.clipnorm or self.clipvalue:
            return None
        return DEFAULT_GLOBAL_CLIPNORM

    @property
    def accumulation(self):
        return GradientAccumulation(self.gradient_accumulation_steps)

    @property
    def export_path(self):
        """Where the SavedModel goes, or None for 'none'."""
        if self.export_dir == "none":
            return None
        return self.export_dir or os.path.join(self.model_dir, "export")

    @property
    def trains(self):
        return self.mode in ("train", "train_and_eval")

    @property
    def evaluates(self):
        return self.mode in ("eval", "train_and_eval")

    @property
    def evaluates_periodically(self):
        return self.mode == "train_and_eval" and bool(
            self.eval_every_steps or self.eval_every_examples)

    @property
    def evaluates_heldout(self):
        """train_and_eval without --eval_files: the held-out examples the
        run makes from its text are its evaluation set."""
        return self.mode == "train_and_eval" and not self.eval_files

    def phases(self):
        """The phases of training, without files yet."""
        result = [Phase(self.phase1_steps, self.max_seq_length,
                        self.max_predictions_per_seq, self.train_batch_size)]
        if self.phase2_steps:
            result.append(Phase(
                self.phase2_steps, self.phase2_max_seq_length,
                self.phase2_max_predictions_per_seq,
                self.phase2_train_batch_size or self.train_batch_size))
        return result

    def lamb_arguments(self):
        """Keyword arguments of tf_lamb.Lamb, less the learning rate."""
        clip = {}
        if self.clipnorm:
            clip["clipnorm"] = self.clipnorm
        elif self.clipvalue:
            clip["clipvalue"] = self.clipvalue
        elif self.effective_global_clipnorm:
            clip["global_clipnorm"] = self.effective_global_clipnorm
        return dict(
            beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
            weight_decay=self.weight_decay or None, use_ema=self.use_ema,
            ema_momentum=self.ema_momentum,
            ema_overwrite_frequency=self.ema_overwrite_frequency,
            loss_scale_factor=self.loss_scale_factor,
            max_trust_ratio=self.max_trust_ratio,
            bias_correction=self.bias_correction,
            jit_compile=self.jit_compile,
            exclude_from_weight_decay=list(self.exclude_from_weight_decay),
            exclude_from_layer_adaptation=(
                None if self.exclude_from_layer_adaptation is None
                else list(self.exclude_from_layer_adaptation)),
            **clip)


def _one_of(name, value, choices):
    if value not in choices:
        raise InputError(f"--{name} must be one of {list(choices)}, got "
                         f"{value!r}")


def _validate(c):
    """InputError for unknown, contradictory or impossible settings."""
    for check in (_check_choices, _check_counts, _check_schedule,
                  _check_optimizer, _check_examples,
                  _check_outputs_and_mode):
        check(c)


def _check_choices(c):
    """Names from fixed lists, and settings that contradict each other."""
    _one_of("strategy", c.strategy, STRATEGIES)
    _one_of("mixed_precision", c.mixed_precision, PRECISIONS)
    _one_of("mode", c.mode, MODES)
    if c.model_size is not None:
        _one_of("model_size", c.model_size, MODEL_SIZES)
    if c.compile_for is not None:
        _one_of("compile_for", c.compile_for, sorted(accelerators.TARGETS))
    sources = [n for n in ("train_files", "input_file", "tfds_name")
               if getattr(c, n)]
    if len(sources) > 1:
        raise InputError(f"Give at most one of --train_files, --input_file "
                         f"and --tfds_name (got {', '.join(sources)})")
    if c.dynamic_masking and c.train_files and not c.vocab_file:
        raise InputError("--dynamic_masking with --train_files needs "
                         "--vocab_file, the vocabulary the records were "
                         "made with (to know [MASK] and whole words)")
    if c.bert_config_file and c.model_size is not None:
        raise InputError("--model_size and --bert_config_file contradict "
                         "each other; give one")
    if c.tpu and c.strategy != "tpu":
        raise InputError(f"--tpu needs --strategy=tpu (got --strategy="
                         f"{c.strategy})")
    _check_tpu_location(c)
    if c.worker_wait_seconds and c.strategy != "multi_worker":
        raise InputError(f"--worker_wait_seconds needs "
                         f"--strategy=multi_worker (got --strategy="
                         f"{c.strategy})")
    if c.num_gpus is not None and c.strategy in ("multi_worker", "tpu"):
        raise InputError(f"--num_gpus is for one_device/mirrored, not "
                         f"--strategy={c.strategy}")
    if c.mixed_precision == "mixed_float16" and c.strategy == "tpu":
        raise InputError("TPUs do not run float16; use "
                         "--mixed_precision=mixed_bfloat16")


def _check_tpu_location(c):
    """--tpu_zone and --gcp_project locate a TPU given by name (the Cloud
    TPU API looks it up); `local` and grpc:// addresses need neither."""
    located = [n for n in ("tpu_zone", "gcp_project") if getattr(c, n)]
    if not located:
        return
    flags = " and ".join(f"--{n}" for n in located)
    plural = len(located) > 1
    if c.strategy != "tpu":
        raise InputError(f"{flags} {'need' if plural else 'needs'} "
                         f"--strategy=tpu and --tpu=<TPU name> (got "
                         f"--strategy={c.strategy})")
    if c.tpu and not is_tpu_name(c.tpu):
        raise InputError(f"{flags} {'locate' if plural else 'locates'} a TPU "
                         f"given by name; --tpu={c.tpu} needs neither")


def _check_counts(c):
    """Counts and bounds of single settings."""
    for name in ("train_batch_size", "gradient_accumulation_steps",
                 "num_train_steps", "save_checkpoints_steps", "log_steps",
                 "keep_checkpoint_max", "shuffle_buffer", "steps_per_loop",
                 "eval_batch_size", "max_documents",
                 "compile_for_max_compiles"):
        if getattr(c, name) < 1:
            raise InputError(f"--{name} must be >= 1, got {getattr(c, name)}")
    if not c.loss_upper_bound > 0:
        raise InputError(f"--loss_upper_bound must be > 0, got "
                         f"{c.loss_upper_bound}")
    if not 0 <= c.heldout_share < 0.5:
        raise InputError(f"--heldout_share must be in [0, 0.5), got "
                         f"{c.heldout_share}")
    if c.worker_wait_seconds < 0:
        raise InputError(f"--worker_wait_seconds must be >= 0, got "
                         f"{c.worker_wait_seconds}")
    if c.recovery_max_trials < 0:
        raise InputError(f"--recovery_max_trials must be >= 0, got "
                         f"{c.recovery_max_trials}")
    for name in ("max_eval_steps", "eval_every_steps", "eval_every_examples",
                 "phase2_train_batch_size"):
        value = getattr(c, name)
        if value is not None and value < 1:
            raise InputError(f"--{name} must be >= 1, got {value}")


def _check_schedule(c):
    """The phases, their warmups, files and learning rates."""
    if c.phase2_steps < 0 or c.phase2_steps >= c.num_train_steps:
        raise InputError(
            f"--phase2_steps must be in [0, num_train_steps="
            f"{c.num_train_steps}), got {c.phase2_steps}")
    phase1 = c.phase1_steps
    if c.warmup_steps is not None and not 0 <= c.warmup_steps <= phase1:
        raise InputError(
            f"--warmup_steps must be in [0, {phase1}] (the updates of phase "
            f"1: --num_train_steps={c.num_train_steps} minus --phase2_steps="
            f"{c.phase2_steps}), got {c.warmup_steps}: lower --warmup_steps, "
            f"raise --num_train_steps, or leave --warmup_steps out for a "
            f"warmup proportional to the run")
    if not 0 <= c.phase2_warmup_steps <= max(c.phase2_steps, 0):
        raise InputError(f"--phase2_warmup_steps must be in [0, "
                         f"phase2_steps={c.phase2_steps}], got "
                         f"{c.phase2_warmup_steps}")
    if c.phase2_steps == 0:
        for name in ("phase2_train_files", "phase2_train_batch_size",
                     "phase2_learning_rate"):
            if getattr(c, name):
                raise InputError(f"--{name} needs --phase2_steps > 0")
    if c.train_files and c.phase2_steps and not c.phase2_train_files:
        raise InputError("--train_files with --phase2_steps needs "
                         "--phase2_train_files (examples of "
                         "--phase2_max_seq_length tokens)")
    if c.phase2_train_files and not c.train_files:
        raise InputError("--phase2_train_files needs --train_files")
    for name in ("learning_rate", "phase2_learning_rate"):
        rate = getattr(c, name)
        if rate is not None and not rate > 0:
            raise InputError(f"--{name} must be > 0, got {rate}")
    if c.end_learning_rate < 0 or c.end_learning_rate > c.learning_rate:
        raise InputError(f"--end_learning_rate must be in [0, "
                         f"learning_rate], got {c.end_learning_rate}")
    if c.poly_power <= 0:
        raise InputError(f"--poly_power must be > 0, got {c.poly_power}")


def _check_optimizer(c):
    """Clipping, loss scaling and EMA, then Lamb's own rules on the
    arguments it will be given."""
    clips = [n for n in ("clipnorm", "clipvalue", "global_clipnorm")
             if getattr(c, n)]
    if len(clips) > 1:
        raise InputError(f"Give one gradient clipping flag, not "
                         f"{', '.join('--' + n for n in clips)}")
    if c.loss_scale_factor is not None and (
            c.mixed_precision == "mixed_float16"):
        raise InputError("--loss_scale_factor and "
                         "--mixed_precision=mixed_float16 (dynamic loss "
                         "scaling) contradict each other; give one")
    if c.ema_overwrite_frequency is not None and not c.use_ema:
        raise InputError("--ema_overwrite_frequency needs --use_ema")
    # Lamb's own rules, applied to the arguments it will be given.
    arguments = c.lamb_arguments()
    try:
        check_lamb_arguments(
            learning_rate=c.learning_rate,
            **{name: arguments.get(name) for name in (
                "beta_1", "beta_2", "epsilon", "weight_decay", "clipnorm",
                "clipvalue", "global_clipnorm", "ema_momentum",
                "ema_overwrite_frequency", "loss_scale_factor",
                "gradient_accumulation_steps", "max_trust_ratio",
                "exclude_from_weight_decay",
                "exclude_from_layer_adaptation")})
    except ValueError as error:
        # Lamb names its argument, which is the flag of the same name.
        raise InputError(f"LAMB setting: {error}") from None


def _check_examples(c):
    """The example-making settings, for each phase."""
    try:
        examples.check_flags(c.max_seq_length, c.max_predictions_per_seq,
                             c.masked_lm_prob, c.short_seq_prob,
                             c.dupe_factor, c.vocab_size)
    except ValueError as error:
        raise InputError(str(error)) from None
    if c.phase2_steps:
        try:
            examples.check_flags(c.phase2_max_seq_length,
                                 c.phase2_max_predictions_per_seq,
                                 c.masked_lm_prob, c.short_seq_prob,
                                 c.dupe_factor, c.vocab_size)
        except ValueError as error:
            raise InputError(f"phase 2: {error} (--phase2_max_seq_length="
                             f"{c.phase2_max_seq_length}, "
                             f"--phase2_max_predictions_per_seq="
                             f"{c.phase2_max_predictions_per_seq})") from None


def _check_outputs_and_mode(c):
    """The export path, and what each --mode reads."""
    if c.export_path and paths.same(c.export_path, c.model_dir):
        raise InputError("--export_dir must differ from --model_dir")
    if c.mode == "eval" and not c.eval_files:
        raise InputError("--mode=eval needs --eval_files")
    if c.evaluates_heldout and (c.train_files or not c.heldout_share):
        raise InputError(
            "--mode=train_and_eval needs --eval_files, or examples made "
            "from text (not --train_files) with --heldout_share > 0, whose "
            "held-out examples it then evaluates")
    if c.mode == "eval":
        for name in ("train_files", "phase2_train_files", "input_file",
                     "tfds_name"):
            if getattr(c, name):
                raise InputError(f"--{name} is training data; --mode=eval "
                                 f"reads only --eval_files")
    _check_periodic_evaluation(c)


def _check_periodic_evaluation(c):
    """When evaluations run during training, and what they lead to."""
    for name in ("eval_every_steps", "eval_every_examples",
                 "stop_at_mlm_accuracy", "mlperf_log"):
        if getattr(c, name) is not None and c.mode != "train_and_eval":
            raise InputError(f"--{name} needs --mode=train_and_eval")
    if c.eval_every_steps and c.eval_every_examples:
        raise InputError("Give one of --eval_every_steps and "
                         "--eval_every_examples")
    if c.phase2_eval_files and not (c.phase2_steps and c.eval_files):
        raise InputError("--phase2_eval_files needs --phase2_steps > 0 and "
                         "--eval_files")
    if c.stop_at_mlm_accuracy is not None and not (
            0 < c.stop_at_mlm_accuracy <= 1):
        raise InputError(f"--stop_at_mlm_accuracy must be in (0, 1], got "
                         f"{c.stop_at_mlm_accuracy}")
    for name in ("stop_at_mlm_accuracy", "mlperf_log"):
        if getattr(c, name) is not None and not c.evaluates_periodically:
            raise InputError(f"--{name} needs evaluations during training: "
                             f"--eval_every_steps or --eval_every_examples")
