"""One run of the batch-size study: train until a held-out loss target.

`Session(setup, optimizer, batch)` builds one `train.loop.trainer.Trainer`
(model, optimizer, compiled loop) and one `train.loop.evaluation.Evaluator`
for an (optimizer, batch size) pair; `Session.run(...)` then trains from a
fresh start (the seed's initial weights, zeroed optimizer state, update 0)
with a learning rate, warmup and cap of its own, evaluates on the held-out
examples along the way and stops at the tightest target or the cap. Every
run of the pair reuses the compiled loop: the learning-rate schedule reads
its peak, warmup and horizon from variables, so a new rate costs no
retracing (tracing takes ~10 s on a 2-core CPU, longer than many runs).
"""

import dataclasses
import gc
import json
import math
import os
import shutil
import time

import keras
import tensorflow as tf

import tf_lamb
from train import create_pretraining_data as cpd
from train import InputError
from train import PretrainConfig
from train.data import corpus
from train.data import reading
from train.data import tokenization
from train.loop import evaluation
from train.loop import trainer as trainer_lib
from train.model import bert
from train.runtime.cluster import strategy_for

# Weight decay skips LayerNorm and biases, for all three optimizers.
EXCLUDED_FROM_DECAY = ("LayerNorm", "layer_norm", "bias")


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every run of a study shares: data, model, optimizer settings,
    evaluation and the strategy."""

    train_file: str
    eval_file: str
    bert_config: object  # bert.BertConfig
    seq_length: int
    max_predictions: int
    weight_decay: float
    global_clipnorm: float
    eval_batch_size: int
    eval_examples: int  # held-out examples per evaluation (the first ones)
    eval_growth: float  # an evaluation every this factor of updates
    eval_gate: float  # evaluate once the train loss is this near a target
    max_micro_batch: int
    steps_per_loop: int
    strategy: object
    strategy_name: str = "one_device"
    mixed_precision: str = "float32"
    jit_compile: bool = False


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to `peak` over `warmup` updates, then linear decay to 0
    at update `horizon`: the same rule for every optimizer. The three values
    are variables (made under the strategy's scope) so that one compiled
    training loop serves runs of any rate."""

    def __init__(self, accumulation_steps):
        self.accumulation_steps = int(accumulation_steps)
        self.peak = tf.Variable(0.0, trainable=False, name="peak_rate")
        self.warmup = tf.Variable(1.0, trainable=False, name="warmup")
        self.horizon = tf.Variable(1.0, trainable=False, name="horizon")

    def set(self, peak, warmup, horizon):
        self.peak.assign(float(peak))
        self.warmup.assign(float(max(warmup, 0)))
        self.horizon.assign(float(max(horizon, 1)))

    def __call__(self, iterations):
        update = tf.cast(tf.cast(iterations, tf.int64)
                         // self.accumulation_steps, tf.float32)
        return rate_at(update, self.peak, self.warmup, self.horizon)

    def get_config(self):
        return {"accumulation_steps": self.accumulation_steps}


def rate_at(update, peak, warmup, horizon):
    """The rate of 0-based update `update` (floats or tensors)."""
    update = tf.cast(update, tf.float32)
    warm = peak * (update + 1.0) / tf.maximum(warmup, 1.0)
    decayed = peak * tf.maximum(1.0 - update / horizon, 0.0)
    return tf.where(update < warmup, warm, decayed)


def make_optimizer(name, schedule, setup, accumulation):
    """`name` (batch_scaling.OPTIMIZERS) with BERT's betas and
    epsilon, the same weight decay, exclusions and clipping."""
    common = dict(learning_rate=schedule, beta_1=0.9, beta_2=0.999,
                  epsilon=1e-6, weight_decay=setup.weight_decay or None,
                  global_clipnorm=setup.global_clipnorm or None,
                  gradient_accumulation_steps=(
                      accumulation if accumulation > 1 else None))
    if name in ("tf_lamb", "tf_lamb_trust_all"):
        # exclude_from_layer_adaptation=None takes the decay exclusions
        # (TF Addons' meaning); [] keeps the trust ratio on every variable.
        return tf_lamb.Lamb(
            exclude_from_weight_decay=list(EXCLUDED_FROM_DECAY),
            exclude_from_layer_adaptation=(
                [] if name == "tf_lamb_trust_all" else None),
            jit_compile=setup.jit_compile, **common)
    if name == "keras_adamw":
        optimizer = keras.optimizers.AdamW(**common)
    elif name == "keras_lamb":
        optimizer = keras.optimizers.Lamb(**common)
    else:
        raise ValueError(f"Unknown optimizer {name!r}")
    if setup.weight_decay:
        optimizer.exclude_from_weight_decay(
            var_names=list(EXCLUDED_FROM_DECAY))
    return optimizer


def micro_batch(batch, cap):
    """The largest micro-batch <= cap that divides `batch`."""
    for size in range(min(batch, cap), 0, -1):
        if batch % size == 0:
            return size
    return 1


def eval_points(cap, growth):
    """Updates after which a run may evaluate: every update up to
    1 / (growth - 1), then every `growth` factor, and the cap."""
    points, update = [], 1
    while update < cap:
        points.append(update)
        update = max(update + 1, int(math.ceil(update * growth)))
    points.append(cap)
    return points


@dataclasses.dataclass
class Outcome:
    """What one run measured."""

    reached: dict  # target loss -> first evaluated update at or below it
    evals: list  # [update, held-out MLM loss]
    stopped_at: int
    final_loss: float  # held-out MLM loss at the last evaluation
    diverged: bool
    train_seconds: float
    eval_seconds: float


class Session:
    """The compiled model, optimizer and evaluation of one (optimizer,
    batch size); `run` trains it from scratch to a target."""

    def __init__(self, setup, optimizer, batch, initial_weights):
        self.setup = setup
        self.batch = batch
        self.micro = micro_batch(batch, setup.max_micro_batch)
        self.accumulation = batch // self.micro
        self.initial_weights = initial_weights
        config = PretrainConfig(
            strategy=setup.strategy_name, train_files=(setup.train_file,),
            max_seq_length=setup.seq_length,
            max_predictions_per_seq=setup.max_predictions,
            train_batch_size=batch,
            gradient_accumulation_steps=self.accumulation,
            num_train_steps=1, warmup_steps=0,
            mixed_precision=setup.mixed_precision,
            jit_compile=setup.jit_compile, export_dir="none")
        phases = [p.with_files((setup.train_file,)) for p in config.phases()]
        self.schedule = None

        def optimizer_fn(_):
            # Called under the strategy's scope: the schedule's variables
            # live where the optimizer's do.
            self.schedule = WarmupLinearDecay(self.accumulation)
            return make_optimizer(optimizer, self.schedule, setup,
                                  self.accumulation)

        keras.mixed_precision.set_global_policy(setup.mixed_precision)
        self.trainer = trainer_lib.Trainer(config, setup.strategy,
                                           setup.bert_config, phases,
                                           optimizer_fn)
        self.fresh_optimizer = [v.numpy()
                                for v in self.trainer.optimizer.variables]
        self.evaluator = evaluation.Evaluator(
            self.trainer.model, setup.strategy, [setup.eval_file],
            setup.eval_batch_size, setup.seq_length, setup.max_predictions,
            max_steps=max(1, setup.eval_examples // setup.eval_batch_size),
            jit_compile=setup.jit_compile)

    def _reset(self, seed, peak, warmup, horizon):
        trainer = self.trainer
        trainer.model.set_weights(self.initial_weights(seed))
        for variable, value in zip(trainer.optimizer.variables,
                                   self.fresh_optimizer):
            variable.assign(value)
        trainer.step.assign(0)
        trainer.reset_stats()
        self.schedule.set(peak, warmup, horizon)

    def _iterator(self, seed):
        """The training examples in the order `seed` draws (the trainer's
        own pipeline, with this run's seed)."""
        # tf.data's shuffle draws from (global seed, op seed): the global
        # one is set too, or the order would depend on what ran before.
        tf.random.set_seed(seed)
        fn = reading.dataset_fn(
            [self.setup.train_file], self.micro, self.setup.seq_length,
            self.setup.max_predictions, seed=seed,
            shuffle_buffer=self.trainer.config.shuffle_buffer)
        return iter(self.setup.strategy.distribute_datasets_from_function(fn))

    def run(self, peak, seed, warmup, horizon, cap, targets):
        """Trains from the seed's initial weights with peak rate `peak`,
        `warmup` updates of warmup and linear decay to 0 at `horizon`, for at
        most `cap` updates; stops after the first evaluation at or below
        min(targets). Evaluations happen at `eval_points`, once the
        training loss of the updates since the last one is within
        `eval_gate` of max(targets), and always at the cap."""
        self._reset(seed, peak, warmup, horizon)
        iterator = self._iterator(seed)
        targets = sorted(targets)
        reached = {t: None for t in targets}
        evals, final, diverged = [], None, False
        train_seconds = eval_seconds = 0.0
        update = 0
        for point in eval_points(cap, self.setup.eval_growth):
            started = time.perf_counter()
            while update < point:
                chunk = min(point - update, self.setup.steps_per_loop)
                self.trainer.train_loop(iterator, chunk)
                update += chunk
            train_loss = self.trainer.read_stats()["mlm_loss"]
            train_seconds += time.perf_counter() - started
            if not math.isfinite(train_loss):
                diverged = True
                break
            if point < cap and train_loss > targets[-1] + self.setup.eval_gate:
                continue
            started = time.perf_counter()
            loss = self.evaluator.evaluate(update)["masked_lm_loss"]
            eval_seconds += time.perf_counter() - started
            if not math.isfinite(loss):
                diverged = True
                break
            evals.append([update, loss])
            final = loss
            for target in targets:
                if reached[target] is None and loss <= target:
                    reached[target] = update
            if reached[targets[0]] is not None:
                break
        return Outcome(reached=reached, evals=evals, stopped_at=update,
                       final_loss=final, diverged=diverged,
                       train_seconds=train_seconds, eval_seconds=eval_seconds)


    def curve(self, peak, seed, warmup, horizon, points):
        """The held-out MLM loss after each of `points` updates (sorted) of
        a run like `run`'s: the reference run that fixes the targets."""
        self._reset(seed, peak, warmup, horizon)
        iterator = self._iterator(seed)
        losses, update = [], 0
        for point in points:
            while update < point:
                chunk = min(point - update, self.setup.steps_per_loop)
                self.trainer.train_loop(iterator, chunk)
                update += chunk
            losses.append(self.evaluator.evaluate(update)["masked_lm_loss"])
        return losses


class WeightBank:
    """Initial weights per seed, made once: a model built after
    keras.utils.set_random_seed(seed). Every batch size and optimizer
    starts a seed's runs from the same weights."""

    def __init__(self, bert_config, seq_length, max_predictions):
        self.bert_config = bert_config
        self.shape = (seq_length, max_predictions)
        self._weights = {}

    def __call__(self, seed):
        if seed not in self._weights:
            keras.utils.set_random_seed(seed)
            model = bert.BertPretrainer(self.bert_config)
            model.build_for(*self.shape)
            self._weights[seed] = model.get_weights()
            del model
        return self._weights[seed]


def make_data(args, data_dir):
    """Train and held-out TFRecords, vocabulary and BERT config, made once:
    every `1 / eval_share`-th document is held out, so that evaluation sees
    text training never does. Returns a dict of their paths."""
    paths = dict(train=os.path.join(data_dir, "train.tfrecord"),
                 eval=os.path.join(data_dir, "eval.tfrecord"),
                 vocab=os.path.join(data_dir, "vocab.txt"),
                 bert_config=os.path.join(data_dir, "bert_config.json"))
    done = os.path.join(data_dir, "data.json")
    if os.path.exists(done):
        with open(done) as f:
            return json.load(f)["paths"]
    started = time.time()
    if os.path.isdir(data_dir):
        shutil.rmtree(data_dir)  # a half-made one
    os.makedirs(data_dir)
    if args.input_file:
        try:
            documents = corpus.read_documents(list(args.input_file))
        except ValueError as error:
            raise InputError(f"--input_file: {error}") from None
        documents = documents[:args.max_documents or None]
    else:
        documents = corpus.stdlib_documents(args.max_documents or None)
    every = max(2, int(round(1 / args.eval_share)))
    held_out = documents[::every]
    training = [d for i, d in enumerate(documents) if i % every]
    if len(held_out) < 2 or len(training) < 2:
        raise InputError(f"{len(documents)} documents are too few to hold "
                         f"out {args.eval_share:g} of them")
    _, train_count = cpd.create_pretraining_data(
        training, [paths["train"]], output_vocab_file=paths["vocab"],
        max_seq_length=args.seq_length, max_predictions=args.max_predictions,
        dupe_factor=args.dupe_factor, vocab_size=args.vocab_size,
        seed=args.seed)
    _, eval_count = cpd.create_pretraining_data(
        held_out, [paths["eval"]], vocab_file=paths["vocab"],
        max_seq_length=args.seq_length, max_predictions=args.max_predictions,
        dupe_factor=args.eval_dupe_factor, seed=args.seed + 1)
    vocab = len(tokenization.read_vocab(paths["vocab"]))
    bert_config = bert.BertConfig(
        vocab_size=vocab, hidden_size=args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        intermediate_size=args.intermediate,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
        max_position_embeddings=args.seq_length).validated("the study")
    with open(paths["bert_config"], "w") as f:
        f.write(bert_config.to_json_string())
    info = dict(paths=paths, train_documents=len(training),
                eval_documents=len(held_out), train_examples=train_count,
                eval_examples=eval_count, vocab_size=vocab,
                seconds=time.time() - started)
    with open(done + ".tmp", "w") as f:
        json.dump(info, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(done + ".tmp", done)
    print(f"Data: {len(training)} training documents -> {train_count} "
          f"examples; {len(held_out)} held-out documents -> {eval_count} "
          f"examples; vocabulary {vocab} ({time.time() - started:.0f} s)",
          flush=True)
    return paths


class Runner:
    """The study's data, strategy and the session of the current (optimizer,
    batch): `train(run)` trains one run of the plan to the targets."""

    def __init__(self, args, data_dir):
        self.args = args
        # Bad strategy flags fail here, before the data is made.
        strategy = strategy_for(PretrainConfig(
            strategy=args.strategy, tpu=args.tpu, num_gpus=args.num_gpus))
        paths = make_data(args, data_dir)
        with open(paths["bert_config"]) as f:
            bert_config = bert.BertConfig.from_dict(
                json.load(f), paths["bert_config"])
        self.setup = Setup(
            train_file=paths["train"], eval_file=paths["eval"],
            bert_config=bert_config, seq_length=args.seq_length,
            max_predictions=args.max_predictions,
            weight_decay=args.weight_decay,
            global_clipnorm=args.global_clipnorm,
            eval_batch_size=args.eval_batch_size,
            eval_examples=args.eval_examples, eval_growth=args.eval_growth,
            eval_gate=args.eval_gate, max_micro_batch=args.max_micro_batch,
            steps_per_loop=args.steps_per_loop, strategy=strategy,
            strategy_name=args.strategy,
            mixed_precision=args.mixed_precision,
            jit_compile=args.jit_compile)
        self.weights = WeightBank(bert_config, args.seq_length,
                                  args.max_predictions)
        self._session, self._key = None, None

    def session(self, optimizer, batch):
        """The compiled session of (optimizer, batch), made when the pair
        changes (the previous one is released first)."""
        if self._key != (optimizer, batch):
            self._session, self._key = None, None
            keras.backend.clear_session()
            gc.collect()
            self._session = Session(self.setup, optimizer, batch,
                                    self.weights)
            self._key = (optimizer, batch)
        return self._session

    def reference(self, run, points):
        """The held-out losses of `run` after each of `points` updates, and
        its wall time."""
        started = time.time()
        session = self.session(run["optimizer"], run["batch"])
        losses = session.curve(run["lr"], run["seed"], run["warmup_updates"],
                               run["horizon_updates"], points)
        return losses, time.time() - started

    def train(self, run, targets):
        """(Outcome, wall seconds, replicas) of one run of the plan."""
        started = time.time()
        session = self.session(run["optimizer"], run["batch"])
        outcome = session.run(run["lr"], run["seed"], run["warmup_updates"],
                              run["horizon_updates"], run["cap_updates"],
                              targets)
        return (outcome, time.time() - started,
                self.setup.strategy.num_replicas_in_sync)
