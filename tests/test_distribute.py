"""tf_lamb.Lamb under tf.distribute equals the single-device run.

conftest.py splits the CPU into two logical devices, so MirroredStrategy runs
two replicas here. Clipping norms and trust ratios must be taken on the
gradient summed over replicas; keras.optimizers.Lamb clips each replica's
share, which is the mistake these tests make visible.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import keras

from tests.support import distributed_training as dt
from tests.references.numpy_lamb import max_relative_error
from tf_lamb import Lamb
from tf_lamb.distribute import make_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mirrored():
    strategy = make_strategy("mirrored")
    assert strategy.num_replicas_in_sync == 2
    return strategy


@pytest.mark.parametrize("jit_compile", [True, False])
def test_custom_loop_mirrored_equals_single_device(jit_compile, device_kind):
    x, y = dt.data()

    def make():
        return dt.make_lamb(jit_compile)

    single, single_opt = dt.train_custom_loop(tf.distribute.get_strategy(),
                                              x, y, make)
    multi, multi_opt = dt.train_custom_loop(mirrored(), x, y, make)
    error = max_relative_error(multi, single)
    print(f"custom loop, mirrored vs single: {error:.3g}")
    assert error <= 1e-6
    # EMA and accumulators agree too, on every replica.
    for ours, ref in zip(multi_opt.variables, single_opt.variables):
        copies = dt.replica_copies(ours)
        assert len(copies) == 2
        np.testing.assert_array_equal(copies[0], copies[1])
        assert max_relative_error([copies[0]], [ref.numpy()]) <= 1e-6


def test_tf_variables_mirrored_equal_single_device(device_kind):
    """A tf.Module's plain tf.Variables, created in the strategy's scope."""
    x, y = dt.data()
    single, _ = dt.train_custom_loop(tf.distribute.get_strategy(), x, y,
                                     model_fn=dt.PlainModule)
    multi, optimizer = dt.train_custom_loop(mirrored(), x, y,
                                            model_fn=dt.PlainModule)
    assert max_relative_error(multi, single) <= 1e-6
    assert max_relative_error(single, [
        v.numpy() for v in dt.PlainModule().trainable_variables]) > 1e-3
    for slot in optimizer._momentums:
        copies = dt.replica_copies(slot)
        np.testing.assert_array_equal(copies[0], copies[1])


def test_fit_mirrored_equals_single_device():
    x, y = dt.data()
    single, _ = dt.train_fit(tf.distribute.get_strategy(), x, y)
    multi, optimizer = dt.train_fit(mirrored(), x, y)
    error = max_relative_error(multi, single)
    print(f"fit, mirrored vs single: {error:.3g}")
    assert error <= 1e-6
    assert int(optimizer.iterations.numpy()) == dt.STEPS // 2


def test_keras_lamb_clips_per_replica_but_we_clip_the_sum():
    x, y = dt.data()

    def keras_lamb():
        return keras.optimizers.Lamb(learning_rate=0.02, global_clipnorm=0.5)

    def our_lamb():
        return Lamb(learning_rate=0.02, global_clipnorm=0.5)

    for make, expect_equal in ((keras_lamb, False), (our_lamb, True)):
        single, _ = dt.train_custom_loop(tf.distribute.get_strategy(), x, y,
                                         make)
        multi, _ = dt.train_custom_loop(mirrored(), x, y, make)
        error = max_relative_error(multi, single)
        print(f"{make.__name__}: mirrored vs single {error:.3g}")
        assert (error <= 1e-6) == expect_equal


def test_per_replica_trust_ratios_would_differ():
    # What an implementation that skipped the all-reduce would compute on
    # replica 0: LAMB on its half of the batch alone.
    x, y = dt.data()
    half = dt.GLOBAL_BATCH // 2
    first_half = np.concatenate([x[i:i + half]
                                 for i in range(0, len(x), dt.GLOBAL_BATCH)])
    first_y = np.concatenate([y[i:i + half]
                              for i in range(0, len(y), dt.GLOBAL_BATCH)])
    strategy = tf.distribute.get_strategy()
    single, _ = dt.train_custom_loop(strategy, x, y)
    # Same loss scale as a replica's share: sum over half / global batch.
    unaggregated, _ = dt.train_custom_loop(
        strategy, np.repeat(first_half, 2, axis=0)[:len(x)],
        np.repeat(first_y, 2, axis=0)[:len(y)])
    ours, _ = dt.train_custom_loop(mirrored(), x, y)
    assert max_relative_error(unaggregated, single) > 1e-2
    assert max_relative_error(ours, single) <= 1e-6


def poisoned_loss_scale_run(poison_replica):
    """LossScaleOptimizer(Lamb) where one replica's data holds an inf."""
    x, y = dt.data(steps=2)
    share = dt.GLOBAL_BATCH // 2
    x = x.copy()
    x[dt.GLOBAL_BATCH + poison_replica * share] = np.inf  # step 2 only
    return dt.train_custom_loop(
        mirrored(), x, y, make_optimizer=lambda: Lamb(learning_rate=0.02),
        wrap_optimizer=keras.optimizers.LossScaleOptimizer)


@pytest.mark.parametrize("poison_replica", [0, 1])
def test_non_finite_on_one_replica_skips_the_step_everywhere(poison_replica,
                                                             device_kind):
    x, y = dt.data(steps=1)
    after_one, _ = dt.train_custom_loop(
        mirrored(), x, y, make_optimizer=lambda: Lamb(learning_rate=0.02),
        wrap_optimizer=keras.optimizers.LossScaleOptimizer)
    after_two, optimizer = poisoned_loss_scale_run(poison_replica)
    for a, b in zip(after_two, after_one):
        np.testing.assert_array_equal(a, b)
    inner = optimizer.inner_optimizer
    for slot in inner._momentums + inner._velocities:
        copies = dt.replica_copies(slot)
        np.testing.assert_array_equal(copies[0], copies[1])
        assert np.all(np.isfinite(copies[0]))


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_multi_worker_two_processes_equal_single_device(tmp_path):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1",
               TF_CPP_MIN_LOG_LEVEL="2")
    processes = []
    try:
        for index in range(2):
            env["TF_CONFIG"] = json.dumps({
                "cluster": {"worker": workers},
                "task": {"type": "worker", "index": index}})
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "tests.support.multi_worker_main",
                 str(tmp_path / f"worker{index}.npz")],
                env=dict(env), cwd=ROOT, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True))
        deadline = time.monotonic() + 300
        for process in processes:
            output, _ = process.communicate(
                timeout=max(1, deadline - time.monotonic()))
            assert process.returncode == 0, output.decode()[-3000:]
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    results = []
    for index in range(2):
        with np.load(tmp_path / f"worker{index}.npz") as npz:
            results.append([npz[f"arr_{i}"] for i in range(len(npz.files))])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    x, y = dt.data(steps=8)
    single, _ = dt.train_custom_loop(tf.distribute.get_strategy(), x, y)
    error = max_relative_error(results[0], single)
    print(f"multi-worker vs single: {error:.3g}")
    assert error <= 1e-6


@pytest.mark.parametrize("name,kwargs,message", [
    ("bogus", {}, "Unknown strategy 'bogus'"),
    ("tpu", {"tpu": "grpc://127.0.0.1:1"}, "No TPU reachable at grpc://"),
    ("tpu", {"tpu": "grpc://no-port"}, "not grpc://host:port"),
    ("mirrored", {"num_gpus": 3}, "num_gpus=3"),
])
def test_make_strategy_errors_name_the_problem(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_strategy(name, **kwargs)


def test_make_strategy_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        make_strategy("multi_worker")


def test_make_strategy_one_device_runs_on_cpu():
    strategy = make_strategy("one_device")
    assert strategy.num_replicas_in_sync == 1
    assert "CPU" in strategy.extended.worker_devices[0]


def test_strategies_made_in_one_process_keep_their_collectives_apart():
    """Each MirroredStrategy numbers its all-reduces from the same keys, and
    TensorFlow caches a collective's shape by key for the whole process: a
    second plain MirroredStrategy whose first all-reduce has another shape
    fails (TensorFlow issue 62790). make_strategy's strategies do not."""

    def first_all_reduce(strategy, size):
        @tf.function
        def step():
            def replica():
                return tf.distribute.get_replica_context().all_reduce(
                    "sum", tf.ones([size]))
            return strategy.run(replica)
        return [v.numpy() for v in strategy.experimental_local_results(
            step())]

    first, second = make_strategy("mirrored"), make_strategy("mirrored")
    assert first.num_replicas_in_sync == second.num_replicas_in_sync == 2
    for size, strategy in ((5, first), (3, second), (7, first)):
        for copy in first_all_reduce(strategy, size):
            np.testing.assert_array_equal(copy, np.full([size], 2.0))
