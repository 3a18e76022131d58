"""The training loop: the trainer's compiled steps, the controller that
runs them and fires the actions (logs, summaries, checkpoints, evaluation),
the learning-rate schedule, the metrics, this run's own checkpoints, and
stopping cleanly on SIGTERM and SIGINT.
"""
