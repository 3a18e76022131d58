"""The evaluations of a run: which held-out records each phase is
evaluated on, and what follows each evaluation during training.

Each phase is evaluated at its own sequence length: phase 1 on
--eval_files, phase 2 on --phase2_eval_files (or on --eval_files when none
are given); without --eval_files, on the held-out examples the run made
from its text at each phase's lengths (train/data/sources.py). An
evaluation after update N reads the set of the phase that update N belongs
to, so the evaluation at the end of phase 1 is still phase 1's.

After each evaluation during training (`RunEvaluation.__call__`):
eval_results.txt and the TensorBoard scalars (the chief), the best
checkpoint (checkpoints.BestCheckpoint) and the MLPerf events
(mlperf_log). `--mode=eval` evaluates with `only`, which writes the results
and nothing else.
"""

from train.loop import evaluation


def eval_sets(config, phases, eval_files, phase2_eval_files, heldout):
    """The evaluation files of each phase (a list per phase)."""
    result = []
    for index, _ in enumerate(phases):
        if eval_files:
            files = (phase2_eval_files if index and phase2_eval_files
                     else eval_files)
        elif heldout is not None:
            files = heldout.files_for(index)
        else:
            files = ()
        result.append(list(files))
    return result


class RunEvaluation:
    """Evaluates the model at update `step` on the set of the phase that
    holds it.

    Arguments: `sets` (eval_sets' files per phase; a phase whose files
    match phase 1's lengths shares its evaluator), `reading(files, phase)`
    a context manager that turns a reading error into a DataError, `best`
    a BestCheckpoint (None: no best kept), `mlperf` an mlperf_log log,
    `chief` whether this worker writes the results.
    """

    def __init__(self, config, trainer, phases, sets, reading, best, mlperf,
                 chief):
        self.config = config
        self.trainer = trainer
        self.phases = phases
        self.reading = reading
        self.best = best
        self.mlperf = mlperf
        self.chief = chief
        self.history = []
        self._evaluators = []
        for index, files in enumerate(sets):
            # Records of phase 1's lengths (--eval_files through phase 2)
            # are read at phase 1's lengths.
            shape = self.phases[index if files != sets[0] else 0]
            self._evaluators.append((evaluation.Evaluator(
                trainer.model, trainer.strategy, files,
                config.eval_batch_size, shape.seq_length, shape.predictions,
                max_steps=config.max_eval_steps,
                jit_compile=config.jit_compile), shape))

    def phase_index(self, step):
        """The phase update `step` belongs to (0 before any update)."""
        begin = 0
        for index, phase in enumerate(self.phases):
            begin += phase.steps
            if step <= begin:
                return index
        return len(self.phases) - 1

    def examples_per_evaluation(self):
        """The records one evaluation of phase 1 reads (MLPerf's
        eval_samples)."""
        evaluator = self._evaluators[0][0]
        return min(evaluator.num_examples,
                   evaluator.num_steps * evaluator.global_batch_size)

    def only(self, step):
        """One evaluation and its eval_results.txt; nothing else."""
        evaluator, shape = self._evaluators[self.phase_index(step)]
        with self.reading(evaluator.files, shape):
            metrics = evaluator.evaluate(step)
        if self.chief:
            evaluation.write_eval_results(self.config.model_dir, metrics)
        return metrics

    def __call__(self, step, last=False):
        """An evaluation during training (`last`: the run's final one):
        the results, the best checkpoint, the MLPerf events; returns the
        metrics, with `best` True when this update became the best."""
        metrics = self.only(step)
        # After eval_results.txt, which keeps Google's keys: what was read.
        metrics["seq_length"] = self._evaluators[self.phase_index(step)][
            1].seq_length
        record = self.best.consider(step, metrics) if self.best else None
        metrics["best"] = record is not None
        if record is not None and self.chief:
            print(f"Best held-out MLM accuracy so far: "
                  f"{record['masked_lm_accuracy']:.4f} at update {step} "
                  f"({record['checkpoint']})", flush=True)
        target = self.config.stop_at_mlm_accuracy
        reached = target is not None and (
            metrics["masked_lm_accuracy"] >= target)
        # No block follows the evaluation that ends the run.
        self.mlperf.evaluation(step, metrics["masked_lm_accuracy"],
                               last or reached)
        self.history.append(metrics)
        return metrics
