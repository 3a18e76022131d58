"""What every part of a run stands on: its errors and exit statuses, paths
on local and remote file systems, quiet TensorFlow logs, in-memory scratch
directories, and the cluster (strategy, the wait for the other workers and
the signals that end it). Nothing here imports the rest of `train`.
"""
