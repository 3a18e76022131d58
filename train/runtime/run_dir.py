"""The files a run keeps in its --model_dir beside its checkpoints.

    flags.txt          the flags as the command line resolved them
                       (`--flagfile=flags.txt` replays the run)
    config.json        the resolved PretrainConfig, read back by programs
                       that need a setting of the run (train.export)
    bert_config.json   the model, in Google BERT's format
    schedule.json      the learning-rate schedule (a resumed run warns when
                       its flags give another one)
    vocab.txt          the vocabulary the run's examples were made with
    data/              examples the run made itself (data/metadata.json
                       says from what)
    best/              the checkpoint of the best held-out MLM accuracy
                       (train_and_eval), apart from the rolling ones, and
                       best/best.json: its accuracy, update and path
    target_reached.json  the evaluation that reached
                       --stop_at_mlm_accuracy (a resumed run reads it)

Every path is joined the way TensorFlow joins it, so a relative folder or a
bucket (gs://, ram://) works as a local one. A file is written whole under a
new name, then renamed over the old one: a crash leaves the old file or the
new one, never half of either.
"""

import dataclasses
import json
import os

import tensorflow as tf

from train.runtime import paths

FLAGS = "flags.txt"
CONFIG = "config.json"
BERT_CONFIG = "bert_config.json"
SCHEDULE = "schedule.json"
VOCAB = "vocab.txt"
DATA = "data"
DATA_METADATA = os.path.join(DATA, "metadata.json")
BEST = "best"
# Inside BEST, beside its checkpoint.
BEST_RECORD = "best.json"
TARGET_REACHED = "target_reached.json"


def path(model_dir, name):
    """The path of run file `name` (one of the names above) in model_dir."""
    return os.path.join(model_dir, name)


def write(model_dir, files):
    """Writes {name: text} into model_dir (made if missing), each file
    atomically."""
    for name, text in files.items():
        file = path(model_dir, name)
        tf.io.gfile.makedirs(os.path.dirname(file))
        paths.write_atomically(file, text)


def copy_vocab(model_dir, vocab_file):
    """vocab.txt: a copy of `vocab_file` (nothing when it is that file)."""
    target = path(model_dir, VOCAB)
    if vocab_file and not paths.same(vocab_file, target):
        write(model_dir, {VOCAB: paths.read_text(vocab_file)})


# PretrainConfig's settings that other settings decide (None in the
# dataclass until resolved): config.json records the values the run used.
_RESOLVED = ("model_size_name", "phase1_steps", "effective_warmup_steps",
             "effective_global_clipnorm")


def config_text(config):
    """config.json's text for a PretrainConfig: {"settings": its fields,
    "resolved": the values its properties gave the settings left open}."""
    record = {"settings": dataclasses.asdict(config),
              "resolved": {name: getattr(config, name)
                           for name in _RESOLVED}}
    return json.dumps(record, indent=2, sort_keys=True) + "\n"


def read_json(model_dir, name):
    """Run file `name` as JSON, or None when the run has none (a run of an
    earlier version, or no run at all). ValueError when it is not JSON."""
    file = path(model_dir, name)
    if not tf.io.gfile.exists(file):
        return None
    with tf.io.gfile.GFile(file) as fh:
        return json.load(fh)


def recorded_setting(model_dir, name, default):
    """Setting `name` of the run in model_dir: from config.json, else from
    the key of the examples it made (data/metadata.json), else `default`
    (a run of an earlier version, which wrote neither)."""
    for source, part in ((CONFIG, "settings"), (DATA_METADATA, "key")):
        try:
            values = (read_json(model_dir, source) or {}).get(part, {})
        except (ValueError, tf.errors.OpError):
            continue
        if name in values:
            return values[name]
    return default
