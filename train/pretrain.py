r"""Pretrain a BERT encoder (masked LM + next sentence) with tf_lamb.Lamb.

With no flag at all it pretrains a tiny BERT on CPU in a few minutes, on a
corpus built on the fly from the docstrings of the Python standard library
(no download), and leaves in --model_dir (default runs/pretrain):

  bert_config.json, vocab.txt   the model and its WordPiece vocabulary
  data/                         the generated TFRecords (reused next time)
  ckpt-*                        checkpoints (a second run resumes from them)
  train/                        TensorBoard events (losses, accuracies,
                                learning rate, examples/s, trust ratios)
  export/                       SavedModel of the encoder with TF Hub's
                                text-encoder API (see train/export.py;
                                python -m train.export also writes
                                Google BERT's checkpoint folder)
  eval_results.txt, eval/       with --mode=eval or train_and_eval: the
                                newest evaluation (Google's key = value
                                format) and every evaluation's TensorBoard
                                scalars

Every --log_steps updates it prints the step, MLM and NSP loss, MLM
accuracy, learning rate, examples/s and ETA, and writes them as TensorBoard
scalars together with, per variable, `weight_norm/<path>` (||w||),
`grad_norm/<path>` (||g||, g a replica's gradient of the mean loss, RMS over
replicas and micro-batches) and `trust_ratio/<path>`, LAMB's phi =
||w|| / ||r|| of the last update (`tf_lamb.Lamb.trust_ratios`).

Training runs in a custom loop: --steps_per_loop updates per call of a
tf.function that calls `strategy.run` on a replica step; with --jit_compile
the forward and backward pass (and LAMB's update) are XLA programs.  A run
resumes from the newest checkpoint in --model_dir (weights, optimizer slots,
step, where each input pipeline is in the data: nothing already trained
on is read again), so a killed run loses at most
--save_checkpoints_steps updates.  --init_checkpoint starts a new run from
the weights of Google's released BERT checkpoints or of another run.

This module is the command line only: train/flags.py turns the flags into a
`train.PretrainConfig`, and `train.run_pretraining(config)` runs the job
(the same call works from Python).

Your own data replaces the default corpus with --input_file (text: one
sentence per line, blank line between documents), --train_files (TFRecords
from `python -m train.create_pretraining_data`) or --tfds_name.
--mode=eval --eval_files=... evaluates instead of training.

Examples:
  python -m train.pretrain
  python -m train.pretrain --model_size=base --train_files='data/*.tfrecord' \
      --vocab_file=vocab.txt --train_batch_size=8192 --learning_rate=6e-3 \
      --num_train_steps=7038 --warmup_steps=2000 --phase2_steps=1564 \
      --phase2_train_files='data512/*.tfrecord' --phase2_max_seq_length=512 \
      --strategy=tpu --tpu=my-tpu --mixed_precision=mixed_bfloat16
"""

import sys

from train.runtime import logs

if __name__ == "__main__":
    # Before TensorFlow loads: its C++ log level is read then.
    logs.quiet_tensorflow()

# The imports below load TensorFlow.
from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from train import flags as train_flags  # noqa: E402
from train.data import features  # noqa: E402
from train.pretrain_lib import run_pretraining  # noqa: E402
from train.runtime import errors  # noqa: E402
from train.runtime import run_dir  # noqa: E402


def run_from_flags(flag_values):
    """Runs the job parsed flags describe, as `main` does; returns
    run_pretraining's metrics (InputError for bad flags or data)."""
    config = train_flags.config_from_flags(flag_values)
    return run_pretraining(config, record_files={
        run_dir.FLAGS: train_flags.flags_file(config, flag_values)})


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # One line and an exit status per fault, no traceback
    # (docs/failures.md).
    try:
        run_from_flags(flags.FLAGS)
    except (errors.InputError, errors.DataError) as error:
        sys.exit(f"Error: {error}")
    except errors.Preempted as stop:
        print(stop, flush=True)
        sys.exit(stop.exit_status)
    except errors.Interrupted as stop:
        print(stop, file=sys.stderr, flush=True)
        sys.exit(stop.exit_status)
    except (errors.DivergenceError, errors.CheckpointError) as error:
        print(f"Error: {error}", file=sys.stderr, flush=True)
        sys.exit(error.exit_status)
    except KeyboardInterrupt:
        # Outside the training loop (making examples, the export): nothing
        # trained is lost.
        print("Interrupted outside the training loop; rerun the same "
              "command to go on from the newest checkpoint", file=sys.stderr,
              flush=True)
        sys.exit(errors.EXIT_SIGINT)


train_flags.define_flags()
# `--help` lists the key flags of the main module: these are its flags, the
# example flags (defined in train.data.features) among them.
flags.adopt_module_key_flags(train_flags)
flags.adopt_module_key_flags(features)

if __name__ == "__main__":
    app.run(main)
