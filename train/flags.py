"""The command-line flags of `python -m train.pretrain`, and the
`PretrainConfig` they make.

This is the only module that reads absl's FLAGS (besides each binary's
`main`); everything below it takes a `PretrainConfig`.
"""

import dataclasses

from absl import flags

from tf_lamb.distribute import STRATEGIES
from train import config as config_lib
from train import create_pretraining_data as cpd
from train.modeling import MODEL_SIZES

# Settings whose default depends on others: the config resolves them when
# the flag was not given (see PretrainConfig).
_UNSET_WHEN_ABSENT = ("model_size", "warmup_steps", "global_clipnorm")


def define_flags():
    # -- where things run ----------------------------------------------------
    flags.DEFINE_enum("strategy", "one_device", STRATEGIES,
                      "tf.distribute strategy. multi_worker reads the "
                      "cluster from the TF_CONFIG environment variable.")
    flags.DEFINE_string("tpu", None,
                        "TPU name or grpc:// address (only with "
                        "--strategy=tpu); empty: TPU_NAME or the local TPU "
                        "VM.")
    flags.DEFINE_integer("num_gpus", None,
                         "GPUs to use with one_device/mirrored (0: the "
                         "CPU); default: all visible GPUs, else the CPU.")
    # -- model ---------------------------------------------------------------
    flags.DEFINE_enum("model_size", "tiny", list(MODEL_SIZES),
                      "Preset BERT size (layers/hidden/heads): tiny 2/128/2, "
                      "mini 4/256/4, small 4/512/8, medium 8/512/8, base "
                      "12/768/12, large 24/1024/16. The vocabulary size "
                      "comes from the vocabulary. Not with "
                      "--bert_config_file.")
    flags.DEFINE_string("bert_config_file", None,
                        "BERT config JSON in Google's format (vocab_size, "
                        "hidden_size, num_hidden_layers, ...); replaces "
                        "--model_size.")
    flags.DEFINE_string("init_checkpoint", None,
                        "Start from the weights (not the optimizer state) "
                        "of this checkpoint: one written by Google's BERT "
                        "(bert_model.ckpt) or by this program (a model_dir "
                        "or a checkpoint prefix). Only at the start of a "
                        "run: a checkpoint in --model_dir wins.")
    # -- data ----------------------------------------------------------------
    flags.DEFINE_list("train_files", None,
                      "Comma-separated globs of TFRecord files of "
                      "pretraining examples (Google BERT format, e.g. from "
                      "train.create_pretraining_data) with "
                      "--max_seq_length tokens. Needs --vocab_file or "
                      "--bert_config_file.")
    flags.DEFINE_list("phase2_train_files", None,
                      "Like --train_files, for phase 2 (examples of "
                      "--phase2_max_seq_length tokens).")
    flags.DEFINE_list("input_file", None,
                      "Comma-separated globs of text files (one sentence "
                      "per line, blank line between documents) turned into "
                      "examples before training, instead of the default "
                      "corpus.")
    flags.DEFINE_string("tfds_name", None,
                        "A tensorflow-datasets text dataset already present "
                        "in --tfds_data_dir (e.g. wikipedia/20230601.en), "
                        "turned into examples before training. Needs the "
                        "tensorflow-datasets package.")
    flags.DEFINE_string("tfds_split", "train", "Split of --tfds_name.")
    flags.DEFINE_string("tfds_data_dir", None,
                        "tensorflow-datasets data directory (default: "
                        "TFDS's own, ~/tensorflow_datasets).")
    flags.DEFINE_string("tfds_text_key", "text",
                        "Feature of --tfds_name that holds the text.")
    flags.DEFINE_integer("max_documents", 100000,
                         "Most documents read from --tfds_name.")
    flags.DEFINE_string("vocab_file", None,
                        "WordPiece vocabulary (one token per line). "
                        "Default: learnt from the text, or required with "
                        "--train_files unless --bert_config_file gives the "
                        "size.")
    cpd.define_flags(seed_flag=False)
    flags.DEFINE_integer("shuffle_buffer", 10000,
                         "Examples in the tf.data shuffle buffer.")
    # -- schedule ------------------------------------------------------------
    flags.DEFINE_integer("train_batch_size", 32,
                         "Global batch size of one optimizer update (all "
                         "replicas and accumulation steps together).")
    flags.DEFINE_integer("gradient_accumulation_steps", 1,
                         "Micro-batches per optimizer update: each replica "
                         "runs train_batch_size / (replicas * this) "
                         "examples at a time.")
    flags.DEFINE_integer("num_train_steps", 500,
                         "Optimizer updates in total (phase 2 included).")
    flags.DEFINE_float("learning_rate", 1e-2, "Peak learning rate.")
    flags.DEFINE_integer("warmup_steps", 50,
                         "Updates of linear warmup, after which the rate "
                         "decays polynomially to --end_learning_rate. When "
                         "not given and phase 1 has fewer than 50 updates: "
                         "10% of them.")
    flags.DEFINE_float("end_learning_rate", 0.0,
                       "Learning rate at the end of each phase.")
    flags.DEFINE_float("poly_power", 1.0,
                       "Power of the polynomial decay (1: linear).")
    flags.DEFINE_integer("phase2_steps", 0,
                         "The last this many of --num_train_steps run on "
                         "--phase2_max_seq_length tokens with their own "
                         "warmup and decay (the LAMB paper's 128 -> 512 "
                         "schedule); 0: one phase.")
    flags.DEFINE_integer("phase2_max_seq_length", 512,
                         "Tokens per example in phase 2.")
    flags.DEFINE_integer("phase2_max_predictions_per_seq", 80,
                         "Masked-LM predictions per example in phase 2.")
    flags.DEFINE_integer("phase2_train_batch_size", None,
                         "Global batch size in phase 2 (default: "
                         "--train_batch_size).")
    flags.DEFINE_float("phase2_learning_rate", None,
                       "Peak learning rate of phase 2 (default: "
                       "--learning_rate).")
    flags.DEFINE_integer("phase2_warmup_steps", 0,
                         "Warmup updates at the start of phase 2.")
    # -- optimizer (tf_lamb.Lamb) ---------------------------------------------
    flags.DEFINE_float("beta_1", 0.9, "LAMB: decay of the first moment.")
    flags.DEFINE_float("beta_2", 0.999, "LAMB: decay of the second moment.")
    flags.DEFINE_float("epsilon", 1e-6,
                       "LAMB: added to sqrt(v_hat) (BERT uses 1e-6).")
    flags.DEFINE_float("weight_decay", 0.01,
                       "LAMB: weight decay rate inside the update (0: "
                       "none).")
    flags.DEFINE_list("exclude_from_weight_decay",
                      ["LayerNorm", "layer_norm", "bias"],
                      "LAMB: regular expressions; variables whose path "
                      "matches one get no weight decay.")
    flags.DEFINE_list("exclude_from_layer_adaptation", None,
                      "LAMB: regular expressions; variables whose path "
                      "matches one get no trust ratio (default: the "
                      "--exclude_from_weight_decay list).")
    flags.DEFINE_float("max_trust_ratio", None,
                       "LAMB: upper bound of the trust ratio (default: "
                       "none).")
    flags.DEFINE_bool("bias_correction", True,
                      "LAMB: Adam-style bias correction of the moments.")
    flags.DEFINE_float("global_clipnorm", 1.0,
                       "Clip the gradients of all variables jointly to this "
                       "norm (BERT: 1.0); 0 turns clipping off.")
    flags.DEFINE_float("clipnorm", None,
                       "Clip each variable's gradient to this norm instead "
                       "of --global_clipnorm.")
    flags.DEFINE_float("clipvalue", None,
                       "Clip each gradient element to [-clipvalue, "
                       "clipvalue] instead of --global_clipnorm.")
    flags.DEFINE_bool("use_ema", False,
                      "LAMB: keep an exponential moving average of the "
                      "weights.")
    flags.DEFINE_float("ema_momentum", 0.99, "LAMB: EMA momentum.")
    flags.DEFINE_integer("ema_overwrite_frequency", None,
                         "LAMB: overwrite the weights with their average "
                         "every this many updates (needs --use_ema).")
    flags.DEFINE_float("loss_scale_factor", None,
                       "LAMB: a static loss scale; the loss is multiplied "
                       "by it and the gradients divided by it (for "
                       "mixed_float16, dynamic scaling is used instead).")
    # -- performance -----------------------------------------------------------
    flags.DEFINE_enum("mixed_precision", "float32", config_lib.PRECISIONS,
                      "Keras dtype policy. mixed_float16 scales the loss "
                      "(keras LossScaleOptimizer); TPUs want "
                      "mixed_bfloat16.")
    flags.DEFINE_bool("jit_compile", False,
                      "Compile the model's forward and backward pass and "
                      "the LAMB update with XLA. Meant for GPUs and TPUs "
                      "(TPUs compile with XLA in any case). Leave it off on "
                      "a CPU: on a 2-core x86 it was slower than plain "
                      "graph mode (the default run: 186-193 against "
                      "166-171 ms per update; BERT-base at batch 4: as "
                      "fast to 25% slower).")
    flags.DEFINE_integer("steps_per_loop", 100,
                         "Optimizer updates per call of the compiled "
                         "training loop; a call ends early at an update "
                         "where a log, checkpoint or eval is due, so their "
                         "intervals stay as given, and the updates are the "
                         "same for any value. A call costs the host about "
                         "1.3 ms on a CPU (0.6% of an update of the default "
                         "run), but a round trip on a TPU can cost as much "
                         "as an update. SIGTERM/SIGINT end a call after the "
                         "update in progress (docs/failures.md).")
    # -- evaluation ----------------------------------------------------------------
    flags.DEFINE_enum("mode", "train", config_lib.MODES,
                      "train; eval (evaluate the newest checkpoint in "
                      "--model_dir, else --init_checkpoint, on "
                      "--eval_files); or train_and_eval (evaluate every "
                      "--eval_every_steps updates and at the end).")
    flags.DEFINE_list("eval_files", None,
                      "Comma-separated globs of TFRecord files of held-out "
                      "examples (Google BERT format) with --max_seq_length "
                      "tokens, for --mode=eval/train_and_eval.")
    flags.DEFINE_integer("eval_batch_size", 32,
                         "Global batch size of evaluation.")
    flags.DEFINE_integer("max_eval_steps", None,
                         "Evaluate at most this many batches (default: "
                         "every eval example once, the last partial batch "
                         "included).")
    flags.DEFINE_integer("eval_every_steps", None,
                         "With --mode=train_and_eval: evaluate every this "
                         "many updates (and at the end).")
    # -- output ------------------------------------------------------------------
    flags.DEFINE_string("model_dir", "runs/pretrain",
                        "Checkpoints, TensorBoard events, config, vocabulary "
                        "and generated data. A run resumes from the last "
                        "checkpoint found here.")
    flags.DEFINE_integer("save_checkpoints_steps", 100,
                         "Save a checkpoint every this many updates (and at "
                         "the end).")
    flags.DEFINE_integer("keep_checkpoint_max", 3,
                         "Newest checkpoints kept.")
    flags.DEFINE_integer("log_steps", 50,
                         "Print progress and write summaries every this "
                         "many updates.")
    flags.DEFINE_string("export_dir", None,
                        "Where the encoder's SavedModel is written at the "
                        "end (default: <model_dir>/export; 'none': no "
                        "export).")
    flags.DEFINE_integer("seed", 42,
                         "Seed of initialisation, dropout, data order and "
                         "generated examples.")
    # -- failures (docs/failures.md) -----------------------------------------------
    flags.DEFINE_float("loss_upper_bound",
                       config_lib.PretrainConfig.loss_upper_bound,
                       "An update whose loss (MLM + NSP) is above this, or "
                       "not finite, counts as divergence: the run goes back "
                       "to its last good checkpoint (see "
                       "--recovery_max_trials).")
    flags.DEFINE_integer("recovery_max_trials",
                         config_lib.PretrainConfig.recovery_max_trials,
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
        if isinstance(value, list):
            value = tuple(value)
        settings[field.name] = value
    return config_lib.PretrainConfig(**settings)
