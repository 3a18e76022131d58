"""The command-line flags of `python -m train.pretrain`, and the
`PretrainConfig` they make.

This is the only module that reads absl's FLAGS (besides each binary's
`main`); everything below it takes a `PretrainConfig`.
"""

import dataclasses

from absl import flags

from tf_lamb.distribute import STRATEGIES
from train import config as config_lib
from train.data import features
from train.model.bert import MODEL_SIZES
from train.plan import accelerators

# Settings whose default depends on others: the config resolves them when
# the flag was not given (see PretrainConfig).
_UNSET_WHEN_ABSENT = ("model_size", "warmup_steps", "global_clipnorm")
_RESOLVED_DEFAULTS = {
    "model_size": config_lib.DEFAULT_MODEL_SIZE,
    "warmup_steps": config_lib.DEFAULT_WARMUP_STEPS,
    "global_clipnorm": config_lib.DEFAULT_GLOBAL_CLIPNORM,
}
_CONFIG_DEFAULTS = {
    field.name: field.default
    for field in dataclasses.fields(config_lib.PretrainConfig)}


def _default(name):
    """The default of flag `name`: PretrainConfig's, written once there.
    Settings the config resolves from others show their usual value; a
    tuple becomes the list (or None, if empty) that absl's list flags take.
    """
    if name in _RESOLVED_DEFAULTS:
        return _RESOLVED_DEFAULTS[name]
    value = _CONFIG_DEFAULTS[name]
    if isinstance(value, tuple):
        return list(value) or None
    return value


def define_flags():
    """Defines the flags of `python -m train.pretrain`, a group of
    PretrainConfig's settings at a time."""
    _define_placement_flags()
    _define_model_flags()
    _define_data_flags()
    _define_schedule_flags()
    _define_optimizer_flags()
    _define_performance_flags()
    _define_evaluation_flags()
    _define_output_flags()
    _define_failure_flags()


def _define_placement_flags():
    """Where the run trains: strategy, TPU, GPUs, workers."""
    flags.DEFINE_enum("strategy", _default("strategy"), STRATEGIES,
                      "tf.distribute strategy. multi_worker reads the "
                      "cluster from the TF_CONFIG environment variable.")
    flags.DEFINE_string("tpu", _default("tpu"),
                        "With --strategy=tpu, which TPU: 'local' (on a "
                        "Cloud TPU VM, the VM's own TPU), the TPU's name "
                        "(a pod slice: run on its worker 0 only; see "
                        "docs/pretraining.md) or grpc://host:port. Empty: "
                        "the TPU_NAME environment variable; with neither "
                        "the run stops with an error.")
    flags.DEFINE_string("tpu_zone", _default("tpu_zone"),
                        "Zone of the TPU --tpu names (default: this VM's, "
                        "from its metadata server).")
    flags.DEFINE_string("gcp_project", _default("gcp_project"),
                        "Google Cloud project of the TPU --tpu names "
                        "(default: this VM's, from its metadata server).")
    flags.DEFINE_integer("num_gpus", _default("num_gpus"),
                         "GPUs to use with one_device/mirrored (0: the "
                         "CPU); default: all visible GPUs, else the CPU.")
    flags.DEFINE_integer("worker_wait_seconds",
                         _default("worker_wait_seconds"),
                         "With --strategy=multi_worker: how long a worker "
                         "waits for the other workers of TF_CONFIG's "
                         "cluster to start before it gives up with an "
                         "error (exit status 1); 0: as long as it takes. "
                         "While it waits it says for which, and SIGTERM or "
                         "Ctrl-C end it.")


def _define_model_flags():
    """The model and the weights it starts from."""
    flags.DEFINE_enum("model_size", _default("model_size"), list(MODEL_SIZES),
                      "Preset BERT size (layers/hidden/heads): tiny 2/128/2, "
                      "mini 4/256/4, small 4/512/8, medium 8/512/8, base "
                      "12/768/12, large 24/1024/16. The vocabulary size "
                      "comes from the vocabulary. Not with "
                      "--bert_config_file.")
    flags.DEFINE_string("bert_config_file", _default("bert_config_file"),
                        "BERT config JSON in Google's format (vocab_size, "
                        "hidden_size, num_hidden_layers, ...); replaces "
                        "--model_size.")
    flags.DEFINE_string("init_checkpoint", _default("init_checkpoint"),
                        "Start from the weights (not the optimizer state) "
                        "of this checkpoint: one written by Google's BERT "
                        "(bert_model.ckpt) or by this program (a model_dir "
                        "or a checkpoint prefix). Only at the start of a "
                        "run: a checkpoint in --model_dir wins.")


def _define_data_flags():
    """The examples: files, text or a TFDS dataset, and the vocabulary."""
    flags.DEFINE_list("train_files", _default("train_files"),
                      "Comma-separated globs of TFRecord files of "
                      "pretraining examples (Google BERT format, e.g. from "
                      "train.create_pretraining_data) with "
                      "--max_seq_length tokens. Needs --vocab_file or "
                      "--bert_config_file.")
    flags.DEFINE_list("phase2_train_files", _default("phase2_train_files"),
                      "Like --train_files, for phase 2 (examples of "
                      "--phase2_max_seq_length tokens).")
    flags.DEFINE_list("input_file", _default("input_file"),
                      "Comma-separated globs of text files (one sentence "
                      "per line, blank line between documents) turned into "
                      "examples before training, instead of the default "
                      "corpus.")
    flags.DEFINE_string("tfds_name", _default("tfds_name"),
                        "A tensorflow-datasets text dataset already present "
                        "in --tfds_data_dir (e.g. wikipedia/20230601.en), "
                        "turned into examples before training. Needs the "
                        "tensorflow-datasets package.")
    flags.DEFINE_string("tfds_split",
                        _default("tfds_split"),
                        "Split of --tfds_name.")
    flags.DEFINE_string("tfds_data_dir", _default("tfds_data_dir"),
                        "tensorflow-datasets data directory (default: "
                        "TFDS's own, ~/tensorflow_datasets).")
    flags.DEFINE_string("tfds_text_key", _default("tfds_text_key"),
                        "Feature of --tfds_name that holds the text.")
    flags.DEFINE_integer("max_documents", _default("max_documents"),
                         "Most documents read from --tfds_name.")
    flags.DEFINE_float("heldout_share", _default("heldout_share"),
                       "Share of the documents (the default corpus, "
                       "--input_file, --tfds_name) never trained on: "
                       "their examples are evaluated at the end of the "
                       "run beside a context-free baseline (0: none).")
    flags.DEFINE_string("vocab_file", _default("vocab_file"),
                        "WordPiece vocabulary (one token per line). "
                        "Default: learnt from the text, or required with "
                        "--train_files unless --bert_config_file gives the "
                        "size.")
    features.define_example_flags()
    flags.DEFINE_bool("dynamic_masking", _default("dynamic_masking"),
                      "Draw the masked-LM masks afresh each time an example "
                      "is read (RoBERTa's dynamic masking), by "
                      "--masked_lm_prob and --whole_word_mask, from --seed "
                      "and the example's place in the stream; the masks in "
                      "the records are undone first. Evaluation keeps the "
                      "held-out records' own masks.")
    flags.DEFINE_integer("shuffle_buffer", _default("shuffle_buffer"),
                         "Examples in the tf.data shuffle buffer.")


def _define_schedule_flags():
    """Updates, batches and learning rates, of both phases."""
    flags.DEFINE_integer("train_batch_size", _default("train_batch_size"),
                         "Global batch size of one optimizer update (all "
                         "replicas and accumulation steps together).")
    flags.DEFINE_integer("gradient_accumulation_steps",
                         _default("gradient_accumulation_steps"),
                         "Micro-batches per optimizer update: each replica "
                         "runs train_batch_size / (replicas * this) "
                         "examples at a time.")
    flags.DEFINE_integer("num_train_steps", _default("num_train_steps"),
                         "Optimizer updates in total (phase 2 included).")
    flags.DEFINE_float("learning_rate",
                       _default("learning_rate"),
                       "Peak learning rate.")
    flags.DEFINE_integer("warmup_steps", _default("warmup_steps"),
                         "Updates of linear warmup, after which the rate "
                         "decays polynomially to --end_learning_rate. When "
                         "not given and phase 1 has fewer than 50 updates: "
                         "10% of them.")
    flags.DEFINE_float("end_learning_rate", _default("end_learning_rate"),
                       "Learning rate at the end of each phase.")
    flags.DEFINE_float("poly_power", _default("poly_power"),
                       "Power of the polynomial decay (1: linear).")
    flags.DEFINE_integer("phase2_steps", _default("phase2_steps"),
                         "The last this many of --num_train_steps run on "
                         "--phase2_max_seq_length tokens with their own "
                         "warmup and decay (the LAMB paper's 128 -> 512 "
                         "schedule); 0: one phase.")
    flags.DEFINE_integer("phase2_max_seq_length",
                         _default("phase2_max_seq_length"),
                         "Tokens per example in phase 2.")
    flags.DEFINE_integer("phase2_max_predictions_per_seq",
                         _default("phase2_max_predictions_per_seq"),
                         "Masked-LM predictions per example in phase 2.")
    flags.DEFINE_integer("phase2_train_batch_size",
                         _default("phase2_train_batch_size"),
                         "Global batch size in phase 2 (default: "
                         "--train_batch_size).")
    flags.DEFINE_float("phase2_learning_rate",
                       _default("phase2_learning_rate"),
                       "Peak learning rate of phase 2 (default: "
                       "--learning_rate).")
    flags.DEFINE_integer("phase2_warmup_steps",
                         _default("phase2_warmup_steps"),
                         "Warmup updates at the start of phase 2.")


def _define_optimizer_flags():
    """The optimizer, tf_lamb.Lamb."""
    flags.DEFINE_float("beta_1",
                       _default("beta_1"),
                       "LAMB: decay of the first moment.")
    flags.DEFINE_float("beta_2",
                       _default("beta_2"),
                       "LAMB: decay of the second moment.")
    flags.DEFINE_float("epsilon", _default("epsilon"),
                       "LAMB: added to sqrt(v_hat) (BERT uses 1e-6).")
    flags.DEFINE_float("weight_decay", _default("weight_decay"),
                       "LAMB: weight decay rate inside the update (0: "
                       "none).")
    flags.DEFINE_list("exclude_from_weight_decay",
                      _default("exclude_from_weight_decay"),
                      "LAMB: regular expressions; variables whose path "
                      "matches one get no weight decay.")
    flags.DEFINE_list("exclude_from_layer_adaptation",
                      _default("exclude_from_layer_adaptation"),
                      "LAMB: regular expressions; variables whose path "
                      "matches one get no trust ratio (default: none, "
                      "the trust ratio on every variable).")
    flags.DEFINE_float("max_trust_ratio", _default("max_trust_ratio"),
                       "LAMB: upper bound of the trust ratio (default: "
                       "none).")
    flags.DEFINE_bool("bias_correction", _default("bias_correction"),
                      "LAMB: Adam-style bias correction of the moments.")
    flags.DEFINE_float("global_clipnorm", _default("global_clipnorm"),
                       "Clip the gradients of all variables jointly to this "
                       "norm (BERT: 1.0); 0 turns clipping off.")
    flags.DEFINE_float("clipnorm", _default("clipnorm"),
                       "Clip each variable's gradient to this norm instead "
                       "of --global_clipnorm.")
    flags.DEFINE_float("clipvalue", _default("clipvalue"),
                       "Clip each gradient element to [-clipvalue, "
                       "clipvalue] instead of --global_clipnorm.")
    flags.DEFINE_bool("use_ema", _default("use_ema"),
                      "LAMB: keep an exponential moving average of the "
                      "weights.")
    flags.DEFINE_float("ema_momentum",
                       _default("ema_momentum"),
                       "LAMB: EMA momentum.")
    flags.DEFINE_integer("ema_overwrite_frequency",
                         _default("ema_overwrite_frequency"),
                         "LAMB: overwrite the weights with their average "
                         "every this many updates (needs --use_ema).")
    flags.DEFINE_float("loss_scale_factor", _default("loss_scale_factor"),
                       "LAMB: a static loss scale; the loss is multiplied "
                       "by it and the gradients divided by it (for "
                       "mixed_float16, dynamic scaling is used instead).")


def _define_performance_flags():
    """Precision, compilation, and planning for a chip."""
    flags.DEFINE_enum("mixed_precision",
                      _default("mixed_precision"),
                      config_lib.PRECISIONS,
                      "Keras dtype policy. mixed_float16 scales the loss "
                      "(keras LossScaleOptimizer); TPUs want "
                      "mixed_bfloat16.")
    flags.DEFINE_bool("jit_compile", _default("jit_compile"),
                      "Compile the model's forward and backward pass and "
                      "the LAMB update with XLA. Meant for GPUs and TPUs "
                      "(TPUs compile with XLA in any case). Leave it off on "
                      "a CPU: on a 2-core x86 it was slower than plain "
                      "graph mode (the default run: 186-193 against "
                      "166-171 ms per update; BERT-base at batch 4: as "
                      "fast to 25% slower).")
    flags.DEFINE_enum("compile_for", _default("compile_for"),
                      sorted(accelerators.TARGETS),
                      "Train nothing: compile this run's training step for "
                      "the named chip with its own compiler, without the "
                      "device (libtpu, or jax's CUDA plugin), and report "
                      "whether it compiles, the memory it needs against the "
                      "chip's, the largest per-chip batch that fits and a "
                      "roofline estimate of its speed "
                      "(train.plan.compile_plan). Writes nothing.")
    flags.DEFINE_integer("compile_for_max_compiles",
                         _default("compile_for_max_compiles"),
                         "With --compile_for: compile the step at most this "
                         "many batch sizes, the asked one included, in the "
                         "search for the largest that fits (1: only the "
                         "asked one). Each compile of a BERT-large step took "
                         "8 to 30 minutes on a 2-core machine, a refusal for "
                         "memory as long as a compile.")
    flags.DEFINE_integer("steps_per_loop", _default("steps_per_loop"),
                         "Optimizer updates per call of the compiled "
                         "training loop; a call ends early at an update "
                         "where a log, checkpoint or eval is due, so their "
                         "intervals stay as given, and the updates are the "
                         "same for any value. A call costs the host about "
                         "1.3 ms on a CPU (0.6% of an update of the default "
                         "run), but a round trip on a TPU can cost as much "
                         "as an update. SIGTERM/SIGINT end a call after the "
                         "update in progress (docs/failures.md).")


def _define_evaluation_flags():
    """What is evaluated, and when."""
    flags.DEFINE_enum("mode", _default("mode"), config_lib.MODES,
                      "train; eval (evaluate the newest checkpoint in "
                      "--model_dir, else --init_checkpoint, on "
                      "--eval_files); or train_and_eval (evaluate every "
                      "--eval_every_steps updates or --eval_every_examples "
                      "examples and at the end, keeping the best checkpoint "
                      "in <model_dir>/best; without --eval_files, the "
                      "held-out examples the run makes from its text).")
    flags.DEFINE_list("eval_files", _default("eval_files"),
                      "Comma-separated globs of TFRecord files of held-out "
                      "examples (Google BERT format) with --max_seq_length "
                      "tokens, for --mode=eval/train_and_eval.")
    flags.DEFINE_integer("eval_batch_size", _default("eval_batch_size"),
                         "Global batch size of evaluation.")
    flags.DEFINE_integer("max_eval_steps", _default("max_eval_steps"),
                         "Evaluate at most this many batches (default: "
                         "every eval example once, the last partial batch "
                         "included).")
    flags.DEFINE_integer("eval_every_steps", _default("eval_every_steps"),
                         "With --mode=train_and_eval: evaluate every this "
                         "many updates (and at the end).")
    flags.DEFINE_integer("eval_every_examples",
                         _default("eval_every_examples"),
                         "With --mode=train_and_eval: evaluate after the "
                         "update whose training examples reach each "
                         "multiple of this (MLPerf's cadence; each phase's "
                         "updates at its own batch size), and at the end. "
                         "Not with --eval_every_steps.")
    flags.DEFINE_list("phase2_eval_files", _default("phase2_eval_files"),
                      "Like --eval_files, with --phase2_max_seq_length "
                      "tokens: the evaluations of phase 2 read these "
                      "(without it, phase 2 evaluates --eval_files).")
    flags.DEFINE_float("stop_at_mlm_accuracy",
                       _default("stop_at_mlm_accuracy"),
                       "End the run at the first evaluation during "
                       "training whose held-out MLM accuracy reaches this "
                       "(MLPerf BERT: 0.720), with a checkpoint of that "
                       "update (exit status 0). A resumed run whose "
                       "model_dir reached it trains no further.")
    flags.DEFINE_string("mlperf_log", _default("mlperf_log"),
                        "Write MLPerf Training's log of the run "
                        "(mlperf_logging.mllog events: BERT's "
                        "hyperparameters, init, run, blocks, eval_accuracy "
                        "with the examples trained on as epoch_num) to "
                        "this file, for the compliance checker. Needs the "
                        "mlperf extra (pip install -e '.[mlperf]').")


def _define_output_flags():
    """Checkpoints, logs, the export and the seed."""
    flags.DEFINE_string("model_dir", _default("model_dir"),
                        "Checkpoints, TensorBoard events, config, vocabulary "
                        "and generated data. A run resumes from the last "
                        "checkpoint found here.")
    flags.DEFINE_integer("save_checkpoints_steps",
                         _default("save_checkpoints_steps"),
                         "Save a checkpoint every this many updates (and at "
                         "the end).")
    flags.DEFINE_integer("keep_checkpoint_max",
                         _default("keep_checkpoint_max"),
                         "Newest checkpoints kept.")
    flags.DEFINE_integer("log_steps", _default("log_steps"),
                         "Print progress and write summaries every this "
                         "many updates.")
    flags.DEFINE_string("export_dir", _default("export_dir"),
                        "Where the encoder's SavedModel is written at the "
                        "end (default: <model_dir>/export; 'none': no "
                        "export).")
    flags.DEFINE_integer("seed", _default("seed"),
                         "Seed of initialisation, dropout, data order and "
                         "generated examples.")


def _define_failure_flags():
    """Divergence and recovery (docs/failures.md)."""
    flags.DEFINE_float("loss_upper_bound",
                       _default("loss_upper_bound"),
                       "An update whose loss (MLM + NSP) is above this, or "
                       "not finite, counts as divergence: the run goes back "
                       "to its last good checkpoint (see "
                       "--recovery_max_trials).")
    flags.DEFINE_integer("recovery_max_trials",
                         _default("recovery_max_trials"),
                         "Times a diverged run goes back to its last good "
                         "checkpoint and retries before it stops with an "
                         "error (exit status 3). Training here is "
                         "deterministic, so a retry helps against a "
                         "transient fault, not against a learning rate "
                         "that is too high; 0: stop at the first "
                         "divergence.")


def config_from_flags(values):
    """A PretrainConfig from parsed flags (`values`: absl's FLAGS).

    Raises config.InputError for bad or contradictory values.
    """
    settings = {}
    for field in dataclasses.fields(config_lib.PretrainConfig):
        value = values[field.name].value
        if field.name in _UNSET_WHEN_ABSENT and not values[field.name].present:
            value = None
        elif value is None and isinstance(field.default, tuple):
            # An empty list flag reads as None (`_default`); the setting's
            # own default is the empty tuple, which may mean something
            # else than None (--exclude_from_layer_adaptation).
            value = field.default
        if isinstance(value, list):
            value = tuple(value)
        settings[field.name] = value
    return config_lib.PretrainConfig(**settings)


def flags_file(config, values):
    """The text of a run's flags.txt: one line per setting of `config`
    with the value the run used, so that `--flagfile=flags.txt` replays it.

    Settings resolved from others are written as resolved (a warmup of 10%
    of a short run is its number of updates, not the 50 a flag's help
    shows), and only this program's flags appear: absl's own
    (--verbosity, --test_tmpdir, ...) describe no run. `values` (absl's
    FLAGS) gives each flag's serializer.
    """
    lines = []
    for field in dataclasses.fields(config_lib.PretrainConfig):
        value = _used_value(config, field.name)
        if value is None:
            continue
        flag = values[field.name]
        if flag.boolean:
            lines.append(f"--{flag.name}" if value else f"--no{flag.name}")
        else:
            if isinstance(value, tuple):
                value = list(value)
            lines.append(f"--{flag.name}={flag.serializer.serialize(value)}")
    return "".join(line + "\n" for line in lines)


def _used_value(config, name):
    """The value of setting `name` the run used (None: no flag says it)."""
    if name == "warmup_steps":
        return config.effective_warmup_steps
    if name == "model_size":
        # --bert_config_file names the model instead (giving both is an
        # error).
        return None if config.bert_config_file else config.model_size_name
    if name == "global_clipnorm" and config.global_clipnorm is None:
        # None with --clipnorm or --clipvalue, which replay the same.
        return config.effective_global_clipnorm
    return getattr(config, name)
