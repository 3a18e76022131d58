"""--stop_at_mlm_accuracy across invocations of a run.

The evaluation that reaches the target ends the run with a checkpoint of
its update (actions.EvalAction), and the chief records it in
<model_dir>/target_reached.json. Running the same command again must not
quietly train past the update MLPerf's log and the user were told the run
stopped at, so a run whose model_dir holds that record trains no further
(it still evaluates and exports) unless it is given a target above the
accuracy it reached: a new, deliberate goal. Removing the record also lets
it go on.
"""

import json

import tensorflow as tf

from train.runtime import paths
from train.runtime import run_dir


def reached(config, accuracy):
    """Whether `accuracy` reaches the run's --stop_at_mlm_accuracy."""
    return config.stop_at_mlm_accuracy is not None and (
        accuracy >= config.stop_at_mlm_accuracy)


def write_record(config, step, metrics, checkpoint):
    """Records the evaluation after update `step` that reached the target,
    and says so in one line; returns the record."""
    record = {"step": int(step),
              "masked_lm_accuracy": float(metrics["masked_lm_accuracy"]),
              "stop_at_mlm_accuracy": config.stop_at_mlm_accuracy,
              "checkpoint": checkpoint}
    paths.write_atomically(run_dir.path(config.model_dir,
                                        run_dir.TARGET_REACHED),
                           json.dumps(record, indent=2) + "\n")
    return record


def announce(record):
    print(f"Reached --stop_at_mlm_accuracy={record['stop_at_mlm_accuracy']}"
          f": held-out MLM accuracy {record['masked_lm_accuracy']:.4f} after "
          f"update {record['step']}; the run stops there (checkpoint "
          f"{record['checkpoint']})", flush=True)


def reached_before(config, chief):
    """The record of a target an earlier invocation reached, when it keeps
    this one from training (see the module's docstring), else None. The
    chief says which, in one line."""
    try:
        record = run_dir.read_json(config.model_dir, run_dir.TARGET_REACHED)
    except (ValueError, tf.errors.OpError):
        record = None
    if not record or not config.trains:
        return None
    file = run_dir.path(config.model_dir, run_dir.TARGET_REACHED)
    goes_on = config.stop_at_mlm_accuracy is not None and (
        config.stop_at_mlm_accuracy > record["masked_lm_accuracy"])
    if chief:
        print(f"This run reached --stop_at_mlm_accuracy="
              f"{record['stop_at_mlm_accuracy']} after update "
              f"{record['step']} (held-out MLM accuracy "
              f"{record['masked_lm_accuracy']:.4f}, {file}); " + (
                  f"training goes on to --stop_at_mlm_accuracy="
                  f"{config.stop_at_mlm_accuracy}" if goes_on else
                  "it trains no further (give a higher "
                  "--stop_at_mlm_accuracy, or remove that file, to go on)"),
              flush=True)
    return None if goes_on else record
