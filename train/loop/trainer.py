"""Model, optimizer and compiled training steps, from a config and a strategy.

`Trainer(config, strategy, bert_config, phases)` builds a
`bert.BertPretrainer` and a `tf_lamb.Lamb` (or the optimizer that
`optimizer_fn(learning_rate_schedule)` returns, for comparisons) (inside a
`keras.optimizers.LossScaleOptimizer` for mixed_float16) under the strategy,
and compiles `train_loop(iterator, updates)`: `updates` optimizer updates in
one call of one `tf.function`, each update `gradient_accumulation_steps`
micro-batches taken from the distributed iterator. Each replica adds up
its micro-batches' gradients itself; the optimizer is called once per
update with their mean, so the gradients are summed over the replicas once
per update, not once per micro-batch. Many updates per call
(`--steps_per_loop`) spare the host round trip between updates that bounds
throughput on TPUs; the updates themselves are the same whatever the count
per call, since the data order and every dropout seed depend only on the
update and micro-batch numbers.

After every update the replicas agree, in one all-reduce inside the
replica program, on whether the update's gradients were not finite (LAMB
and the loss-scale optimizer skip such an update; it is counted in
`skipped_updates`) and on its loss; whether it diverged (not finite, or
above `loss_upper_bound`) stays on the device. The host reads what the
call did once, at its end (`_CALL_SIGNALS`), so nothing in the loop waits
for the device: a diverged update is acted on after the call (the
controller rolls back to a checkpoint anyway). A stop request
(`request_stop`, from a signal handler's thread) sets a host variable the
loop tests after each update, so one client process stops after the
update in progress; the workers of a multi_worker run agree on their flags
at the end of the call, and stop there, at the same update.
`train_loop` returns what happened.
"""

import dataclasses
import functools
import math

import keras
import tensorflow as tf

from tf_lamb import Lamb
from train.data import masking
from train.data import order
from train.data import reading
from train.loop import metrics
from train.loop import schedule
from train.model import bert

# What each update's all-reduce carries, in this order.
_SIGNALS = ("nonfinite_gradients", "mlm_loss_sum", "mlm_weight",
            "nsp_loss_sum", "nsp_count")
# What one call of the loop tells the host, in one read at its end: the
# updates it ran, whether a stop was requested (on any worker), whether an
# update diverged, and the loss of the first that did (else of the last).
_CALL_SIGNALS = ("updates", "stop_requested", "diverged", "loss")


@dataclasses.dataclass(frozen=True)
class LoopOutcome:
    """What one `train_loop` call did: `updates` run (fewer than asked
    when it stopped early), `stop_requested` (on some worker), `diverged`
    (an update of the call did), and `loss` (MLM + NSP) of the first
    update that diverged, else of the last one."""

    updates: int
    stop_requested: bool
    diverged: bool
    loss: float


def make_schedule(config, phases):
    return schedule.PretrainingSchedule(
        config.learning_rate, phases[0].steps, config.effective_warmup_steps,
        config.end_learning_rate, config.poly_power, config.phase2_steps,
        config.phase2_learning_rate, config.phase2_warmup_steps)


def is_chief(strategy):
    """Whether this process writes the run's files (always, but for
    the non-chief workers of MultiWorkerMirroredStrategy)."""
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    resolver = strategy.cluster_resolver
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


def input_pipelines(strategy):
    """How many input pipelines (hosts) feed the replicas."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        spec = strategy.cluster_resolver.cluster_spec().as_dict()
        return len(spec.get("worker", [])) + len(spec.get("chief", []))
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return strategy.extended.num_hosts
    return 1


class Trainer:
    """Model, optimizer, compiled steps and metrics under one strategy."""

    STATS = metrics.SUM_NAMES

    def __init__(self, config, strategy, bert_config, phases,
                 optimizer_fn=None, masking_rule=None):
        self.strategy = strategy
        # With a train.data.masking.MaskingRule, the training data's masks
        # are drawn afresh at each read (--dynamic_masking).
        self.masking_rule = masking_rule
        self.config = config
        self.bert_config = bert_config
        self.phases = list(phases)
        self.accumulation = config.accumulation
        self.replicas = strategy.num_replicas_in_sync
        keras.utils.set_random_seed(config.seed)
        self.schedule = make_schedule(config, self.phases)
        on_read = dict(synchronization=tf.VariableSynchronization.ON_READ,
                       aggregation=tf.VariableAggregation.SUM,
                       trainable=False)
        self.loss_scaling = config.mixed_precision == "mixed_float16"
        with strategy.scope():
            self.model = bert.BertPretrainer(bert_config)
            self.model.build_for(self.phases[0].seq_length,
                                 self.phases[0].predictions)
            if optimizer_fn is None:
                self.inner_optimizer = Lamb(learning_rate=self.schedule,
                                            **config.lamb_arguments())
            else:
                self.inner_optimizer = optimizer_fn(self.schedule)
            if self.loss_scaling:
                self.optimizer = keras.optimizers.LossScaleOptimizer(
                    self.inner_optimizer)
            else:
                self.optimizer = self.inner_optimizer
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False,
                                    name="global_step")
            self.stats = {name: tf.Variable(0.0, name=name, **on_read)
                          for name in self.STATS}
            self.grad_sq = [tf.Variable(0.0, name=f"grad_sq_{i}", **on_read)
                            for i in range(len(
                                self.model.trainable_variables))]
            self.grad_count = tf.Variable(0.0, name="grad_count", **on_read)
            self._update_sums = tf.Variable(tf.zeros([len(_SIGNALS)]),
                                            name="update_sums", **on_read)
            # Each replica's own sum of its micro-batches' gradients (a
            # replica-local copy each, never all-reduced): the replicas sum
            # their gradients once per update, not once per micro-batch.
            self._accumulated = [
                tf.Variable(tf.zeros(v.shape, tf.float32),
                            name=f"accumulated_gradient_{i}", **on_read)
                for i, v in enumerate(self.model.trainable_variables)
            ] if self.accumulation.steps > 1 else []
            self.skipped_updates = tf.Variable(
                0, dtype=tf.int64, trainable=False, name="skipped_updates")
            # What one call of the loop did (_CALL_SIGNALS), read once by
            # the host at the end of the call.
            self._call_signals = tf.Variable(
                tf.zeros([len(_CALL_SIGNALS)]), trainable=False,
                name="call_signals")
            # Where each replica is in the data (kept in the checkpoint,
            # so that a resumed run starts there without replaying).
            self.data_position = order.PositionState(self.replicas)
        # Set from a signal handler's thread. A host variable, outside the
        # strategy: the loop tests it after every update without waiting
        # for the device.
        with tf.device("/cpu:0"):
            self._stop_request = tf.Variable(0.0, trainable=False,
                                             name="stop_request")
        # One client process drives every replica (one device, mirrored,
        # TPU) unless the strategy is multi-worker; there each worker has
        # its own stop flag, and they agree on it at the end of a call.
        self._one_client = not isinstance(
            strategy, tf.distribute.MultiWorkerMirroredStrategy)
        self.loss_upper_bound = float(config.loss_upper_bound)
        self.variables = self.model.trainable_variables
        self.checkpoint = order.TrainingCheckpoint(
            model=self.model, optimizer=self.optimizer, step=self.step,
            skipped_updates=self.skipped_updates,
            data_position=self.data_position)
        self.static_scale = config.loss_scale_factor
        self._compiled = tf.function(self._forward_backward,
                                     jit_compile=config.jit_compile,
                                     reduce_retracing=True)
        self._train_loop = tf.function(self._train_updates)
        self.reset_stats = tf.function(self._reset_stats)
        self._read_stats_vector = tf.function(self._stats_vector)
        # Norms computed where the weights live; only scalars are copied.
        self._weight_norms = tf.function(lambda: [
            tf.norm(tf.cast(v.value, tf.float32)) for v in self.variables])

    # -- the compiled pieces ---------------------------------------------------

    def _forward_backward(self, features, seed):
        with tf.GradientTape() as tape:
            mlm_logits, nsp_logits = self.model(features, training=True,
                                                seed=seed)
            stats = bert.pretraining_losses(features, mlm_logits,
                                                nsp_logits)
            loss = metrics.training_objective(stats, self.replicas)
            if self.loss_scaling:
                loss = self.optimizer.scale_loss(loss)
            elif self.static_scale:
                loss = loss * self.static_scale
        grads = tape.gradient(loss, self.variables)
        grads = [tf.convert_to_tensor(g) for g in grads]
        # Squared norms of this replica's gradient of the mean loss, unscaled
        # before squaring: the square of a scaled gradient can overflow.
        unscale = float(self.replicas)
        if self.loss_scaling:
            unscale = unscale / tf.cast(self.optimizer.dynamic_scale,
                                        tf.float32)
        elif self.static_scale:
            unscale = unscale / self.static_scale
        squares = [tf.reduce_sum(tf.square(tf.cast(g, tf.float32) * unscale))
                   for g in grads]
        return grads, stats, squares

    def _micro_step(self, features, micro_step):
        """Forward and backward of one micro-batch on this replica: records
        its statistics and signals and returns its gradients (of the loss
        over the replicas' mean, scaled as the optimizer expects)."""
        context = tf.distribute.get_replica_context()
        # The examples' positions in the data are the trainer's, not the
        # model's: recorded for a resume, then left out of the features.
        features = dict(features)
        tags = features.pop(order.POSITION_KEY, None)
        if tags is not None:
            self.data_position.record(tags, context)
        # Dropout masks depend on the seed, the micro-step and the replica
        # only, so a resumed run draws the same ones.
        seed = tf.random.experimental.stateless_fold_in(
            tf.constant([self.config.seed, 0], tf.int64), micro_step)
        seed = tf.random.experimental.stateless_fold_in(
            seed, tf.cast(context.replica_id_in_sync_group, tf.int64))
        grads, stats, squares = self._compiled(features, seed)
        for name in self.STATS:
            self.stats[name].assign_add(stats[name])
        for variable, square in zip(self.grad_sq, squares):
            variable.assign_add(square)
        self.grad_count.assign_add(1.0)
        # The quantity LAMB tests before it applies an update: the sum of
        # the squared gradients.
        nonfinite = tf.cast(tf.logical_not(tf.math.is_finite(
            tf.add_n(squares))), tf.float32)
        self._update_sums.assign_add(tf.stack(
            [nonfinite] + [stats[name] for name in _SIGNALS[1:]]))
        return grads

    def _replica_accumulate(self, features, micro_step, starts_update):
        """A micro-batch that is not an update's last: its gradients are
        added to this replica's sums (the update's first overwrites them,
        so no pass is spent zeroing), with no collective."""
        grads = self._micro_step(features, micro_step)
        for total, g in zip(self._accumulated, grads):
            g = tf.cast(g, tf.float32)
            total.assign(g if starts_update else total.read_value() + g)

    def _replica_update(self, features, micro_step):
        """An update's last micro-batch, then the update: the signals are
        summed over the replicas first, so that an overflow on any replica
        skips the update on all of them (and lowers the loss scale
        everywhere); the optimizer then sums the gradients over the
        replicas, once. Returns the update's signals (_SIGNALS)."""
        grads = self._micro_step(features, micro_step)
        if self._accumulated:
            steps = float(self.accumulation.steps)
            grads = [tf.cast((total.read_value() + tf.cast(g, tf.float32))
                             / steps, g.dtype)
                     for total, g in zip(self._accumulated, grads)]
        signals = self._take_update_sums()
        if self.loss_scaling:
            # The loss-scale optimizer tests this replica's gradients only:
            # a NaN in the smallest of them makes every replica see the
            # overflow that one of them had.
            smallest = min(range(len(grads)),
                           key=lambda i: grads[i].shape.num_elements())
            grads[smallest] = grads[smallest] + tf.where(
                signals[0] > 0, float("nan"), 0.0)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return signals

    def _take_update_sums(self):
        """The update's signals summed over the replicas, inside the replica
        program (on a TPU, part of the TPU's own program)."""
        sums = self._update_sums.read_value()
        self._update_sums.assign(tf.zeros_like(sums))
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, sums)

    def _one_update(self, iterator):
        """One update; its signals stay on the device."""
        steps = self.accumulation.steps
        first = self.accumulation.first_micro_batch(self.step.read_value())
        if steps > 1:
            self.strategy.run(self._replica_accumulate,
                              args=(next(iterator), first, True))
            for i in tf.range(1, steps - 1, dtype=tf.int64):
                self.strategy.run(self._replica_accumulate,
                                  args=(next(iterator), first + i, False))
        results = self.strategy.run(
            self._replica_update,
            args=(next(iterator), first + (steps - 1)))
        self.step.assign_add(1)
        # Every replica holds the same sums: the first one's are taken.
        signals = self.strategy.experimental_local_results(results)[0]
        nonfinite, mlm_sum, mlm_weight, nsp_sum, nsp_count = tf.unstack(
            signals)
        self.skipped_updates.assign_add(tf.cast(nonfinite > 0, tf.int64))
        loss = (tf.math.divide_no_nan(mlm_sum, mlm_weight)
                + tf.math.divide_no_nan(nsp_sum, nsp_count))
        diverged = tf.cast(tf.logical_or(
            tf.logical_not(tf.math.is_finite(loss)),
            loss > self.loss_upper_bound), tf.float32)
        updates, _, diverged_before, loss_before = tf.unstack(
            self._call_signals.read_value())
        # The first diverged update's loss is the one the message names;
        # the rest of the call is rolled back with it.
        self._call_signals.assign(tf.stack([
            updates + 1.0, 0.0, tf.maximum(diverged_before, diverged),
            tf.where(diverged_before > 0, loss_before, loss)]))

    def _agreed_stop(self):
        """Above 0 when a stop was requested on any worker (one collective
        of a scalar, at the end of a call)."""
        return tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM,
            tf.identity(self._stop_request.read_value()))

    def _train_updates(self, iterator, updates):
        self._call_signals.assign(tf.zeros([len(_CALL_SIGNALS)]))
        # Carried through the loop, so that the value reported is the one
        # the loop acted on (two reads of a variable are not ordered).
        stop = tf.constant(0.0)
        for _ in tf.range(updates):
            self._one_update(iterator)
            if self._one_client:
                # A host variable: testing it needs nothing from the device.
                stop = tf.identity(self._stop_request.read_value())
                if stop > 0:
                    break
        if not self._one_client:
            stop = self.strategy.experimental_local_results(
                self.strategy.run(self._agreed_stop))[0]
        updates_run, _, diverged, loss = tf.unstack(
            self._call_signals.read_value())
        self._call_signals.assign(tf.stack([updates_run, stop, diverged,
                                            loss]))

    def train_loop(self, iterator, updates=1):
        """Runs up to `updates` optimizer updates in one call. With one
        client process it stops after the update in progress when a stop
        is requested; with several workers, at the end of the call, on the
        same update everywhere. An update that diverged is reported at the
        end of the call (the controller rolls back to a checkpoint anyway).
        The host reads the device once per call. Returns a LoopOutcome."""
        self._train_loop(iterator, tf.constant(updates, tf.int64))
        updates_run, stop, diverged, loss = (
            self._call_signals.numpy().tolist())
        return LoopOutcome(updates=int(updates_run),
                           stop_requested=stop > 0, diverged=diverged > 0,
                           loss=loss)

    def request_stop(self):
        """Asks the running (or next) `train_loop` call to stop (see
        train_loop for when); safe to call from any thread."""
        self._stop_request.assign(1.0)

    def weights_finite(self):
        """Whether every weight is finite (checked before each save)."""
        return all(math.isfinite(n) for n in
                   (float(x) for x in self._weight_norms()))

    def _reset_stats(self):
        def reset():
            for variable in (list(self.stats.values()) + self.grad_sq
                             + [self.grad_count]):
                variable.assign(tf.zeros_like(variable))
        self.strategy.run(reset)

    # -- reading -----------------------------------------------------------------

    def _stats_vector(self):
        """Every statistic of a log line in one float32 vector (so that the
        host reads them in one transfer): the sums of STATS, the
        micro-batch count, the loss scale (mixed_float16 only), then per
        variable ||w||, the summed squared gradient norms and LAMB's trust
        ratios (absent for another optimizer)."""
        parts = [tf.stack([tf.convert_to_tensor(self.stats[name])
                           for name in self.STATS]),
                 tf.reshape(tf.convert_to_tensor(self.grad_count), [1])]
        if self.loss_scaling:
            parts.append(tf.reshape(tf.cast(tf.convert_to_tensor(
                self.optimizer.dynamic_scale), tf.float32), [1]))
        parts += [tf.stack([tf.norm(tf.cast(v.value, tf.float32))
                            for v in self.variables]),
                  tf.stack([tf.convert_to_tensor(g) for g in self.grad_sq])]
        if isinstance(self.inner_optimizer, Lamb):
            parts.append(tf.cast(tf.convert_to_tensor(
                self.inner_optimizer.trust_ratios), tf.float32))
        return tf.concat(parts, 0)

    def read_stats(self):
        """Means since the last reset, then a reset; every worker must call
        it."""
        with self.strategy.scope():
            vector = self._read_stats_vector().numpy().tolist()
        stats, vector = vector[:len(self.STATS)], vector[len(self.STATS):]
        count, vector = max(vector[0], 1.0), vector[1:]
        loss_scale = None
        if self.loss_scaling:
            loss_scale, vector = vector[0], vector[1:]
        n = len(self.variables)
        w_norms, grad_sq, ratios = vector[:n], vector[n:2 * n], vector[2 * n:]
        means = metrics.means_from_sums(dict(zip(self.STATS, stats)))
        self.reset_stats()
        return {
            "mlm_loss": means["mlm_loss"],
            "nsp_loss": means["nsp_loss"],
            "mlm_accuracy": means["mlm_accuracy"],
            "nsp_accuracy": means["nsp_accuracy"],
            "weight_norms": w_norms,
            "grad_norms": [math.sqrt(max(g, 0.0) / count) for g in grad_sq],
            # LAMB's own phi = ||w|| / ||r|| of the last update (none for
            # another optimizer).
            "trust_ratios": ratios or [None] * n,
            # The dynamic loss scale now (None without loss scaling).
            "loss_scale": loss_scale,
        }

    def learning_rate(self, update):
        """The rate of update number `update` (0-based)."""
        return float(self.schedule.rate_at_update(update))

    def distributed_iterator(self, phase_index, updates_done):
        """An iterator over `phases[phase_index]`'s data that starts after
        the micro-batches of its first `updates_done` updates: at the
        position the checkpoint restored holds (nothing already trained on
        is read), else (an older checkpoint, another layout) by replaying
        the data from the phase's start, with a warning."""
        phase = self.phases[phase_index]
        pipelines = max(1, input_pipelines(self.strategy))
        micro_batch = self.accumulation.micro_batch_size(phase.batch_size)
        seed = self.config.seed + 1000 * phase_index
        layout = order.layout(
            phase_index, seed, pipelines, self.replicas,
            micro_batch // self.replicas, len(phase.files),
            self.config.shuffle_buffer)
        starts, skip = self._resume_points(layout, pipelines, updates_done)
        draw_masks = None
        if self.masking_rule is not None:
            draw_masks = functools.partial(
                masking.mask_batch, seed=seed, rule=self.masking_rule,
                max_predictions=phase.predictions)
        fn = reading.dataset_fn(
            phase.files, micro_batch, phase.seq_length, phase.predictions,
            seed=seed, batches_to_skip=skip,
            shuffle_buffer=self.config.shuffle_buffer,
            start_positions=starts, draw_masks=draw_masks)
        return iter(self.strategy.distribute_datasets_from_function(fn))

    def _resume_points(self, layout, pipelines, updates_done):
        """(start positions per pipeline or None, batches to replay per
        pipeline) for a stream after `updates_done` updates."""
        state = self.data_position
        starts = None
        if updates_done:
            starts = order.resume_points(
                state.positions.numpy(), state.layout.numpy(), layout,
                pipelines)
        if starts is not None:
            return starts, 0
        # The recorded positions belong to another stream (or none is
        # recorded): none is kept until this stream's first update.
        state.forget(layout)
        skip = (self.accumulation.first_micro_batch(updates_done)
                * self.replicas // pipelines)
        if skip:
            print(f"Warning: the checkpoint holds no data position for "
                  f"this run's input layout (written by an older version, "
                  f"or with another number of replicas, input pipelines, "
                  f"batch size or files); replaying the first "
                  f"{updates_done} updates' data to resume", flush=True)
        return None, skip
