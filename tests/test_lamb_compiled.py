"""The step is one XLA program, traced once, and agrees with the graph path."""

import re

import numpy as np
import pytest
import tensorflow as tf
import keras

from tests.references.numpy_lamb import max_relative_error
from tf_lamb import Lamb

SHAPES = [(16, 8), (8,), (8, 4), (4,), ()]


def variables(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(np.asarray(rng.normal(size=s), np.float32),
                           name=f"v{i}") for i, s in enumerate(SHAPES)]


def gradient_stream(steps, seed=1):
    rng = np.random.default_rng(seed)
    return [[tf.constant(np.asarray(rng.normal(size=s), np.float32))
             for s in SHAPES] for _ in range(steps)]


def compiler_ir(optimizer, grads, stage):
    """The optimizer's one compiled step at an XLA `stage`."""
    ((_, program),) = optimizer._programs.values()
    return program.experimental_get_compiler_ir(
        list(grads), tuple(optimizer._hyperparameters()))(stage=stage)


def test_twenty_steps_with_schedule_and_changing_betas_trace_once():
    ws = variables()
    beta_2 = keras.Variable(0.99, trainable=False)
    optimizer = Lamb(
        learning_rate=keras.optimizers.schedules.CosineDecay(0.01, 20),
        beta_1=lambda: 0.85 + 0.001 * tf.cast(optimizer.iterations,
                                               tf.float32),
        beta_2=lambda: beta_2, weight_decay=0.01, global_clipnorm=1.0,
        use_ema=True, gradient_accumulation_steps=2)
    for step, grads in enumerate(gradient_stream(20)):
        beta_2.assign(0.99 - 0.001 * step)
        optimizer.apply_gradients(zip(grads, ws))
    ((_, program),) = optimizer._programs.values()
    assert program.experimental_get_tracing_count() == 1


def test_one_xla_module_updates_every_variable():
    ws = variables()
    optimizer = Lamb(weight_decay=0.01)
    grads = gradient_stream(1)[0]
    optimizer.apply_gradients(zip(grads, ws))
    hlo = compiler_ir(optimizer, grads, "hlo")
    assert hlo.count("HloModule") == 1
    # Every weight, first and second moment enters the one module.
    entry = hlo[hlo.index("ENTRY"):]
    parameters = set(re.findall(r"parameter\((\d+)\)", entry))
    assert len(parameters) >= 4 * len(SHAPES)


def run(optimizer, ws, steps=15):
    for grads in gradient_stream(steps):
        optimizer.apply_gradients(zip(grads, ws))
    return [w.numpy() for w in ws]


def settings():
    return dict(learning_rate=0.01, weight_decay=0.02, max_trust_ratio=5.0,
                clipnorm=2.0)


def test_compiled_and_graph_paths_agree():
    compiled = run(Lamb(**settings()), variables())
    graph = run(Lamb(jit_compile=False, **settings()), variables())
    error = max_relative_error(compiled, graph)
    print(f"jit vs graph max relative error: {error:.3g}")
    assert error <= 1e-6


@pytest.mark.parametrize("accumulation", [None, 3])
@pytest.mark.parametrize("jit_compile", [True, False])
def test_inside_user_tf_function(jit_compile, accumulation):
    ws = variables()
    kwargs = dict(settings(), gradient_accumulation_steps=accumulation)
    optimizer = Lamb(**kwargs)
    optimizer.build(ws)

    @tf.function(jit_compile=jit_compile)
    def step(grads):
        optimizer.apply_gradients(zip(grads, ws))

    for grads in gradient_stream(15):
        step(grads)
    eager = run(Lamb(**kwargs), variables())
    assert max_relative_error([w.numpy() for w in ws], eager) <= 1e-6


@pytest.mark.parametrize("accumulation", [None, 2])
def test_model_compile_jit_compile_matches_eager_fit(accumulation):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.normal(size=(64, 1)).astype(np.float32)

    def trained(jit_compile, run_eagerly):
        keras.utils.set_random_seed(1)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4),
                                  keras.layers.Dense(1)])
        optimizer = Lamb(learning_rate=0.01, weight_decay=0.01,
                         gradient_accumulation_steps=accumulation)
        model.compile(optimizer=optimizer, loss="mse",
                      jit_compile=jit_compile, run_eagerly=run_eagerly)
        model.fit(x, y, batch_size=16, epochs=3, shuffle=False, verbose=0)
        return [w.numpy() for w in model.trainable_variables]

    xla = trained(True, False)
    eager = trained(False, True)
    assert max_relative_error(xla, eager) <= 1e-5


def buffer_allocations(optimizer, grads):
    """XLA's buffer assignment for the optimizer's compiled step."""
    from tensorflow.compiler.xla.service import hlo_pb2
    serialized = compiler_ir(optimizer, grads,
                             "optimized_hlo_proto_serialized")
    return hlo_pb2.HloProto.FromString(
        serialized).buffer_assignment.buffer_allocations


@pytest.mark.parametrize("kwargs", [
    {},
    {"weight_decay": 0.01, "global_clipnorm": 1.0, "use_ema": True},
    {"gradient_accumulation_steps": 3, "max_trust_ratio": 5.0},
], ids=["plain", "clip_ema", "accumulation"])
def test_step_in_place_without_temporaries_or_host_calls(kwargs):
    shapes = [(256, 128), (128,), (128, 64), ()]
    ws = [keras.Variable(np.full(s, 0.5, np.float32), name=f"v{i}")
          for i, s in enumerate(shapes)]
    grads = [tf.ones(s) for s in shapes]
    optimizer = Lamb(**kwargs)
    optimizer.apply_gradients(zip(grads, ws))
    largest = 4 * 256 * 128
    allocations = [a for a in buffer_allocations(optimizer, grads)
                   if not (a.is_thread_local or a.is_constant)]
    # Every full-size result (w, m, v, averages, accumulators) is written
    # into its parameter's buffer...
    outputs = [a for a in allocations
               if a.maybe_live_out and not a.is_entry_computation_parameter]
    assert all(a.size < largest for a in outputs), [a.size for a in outputs]
    # ...and all the scratch space together is smaller than one variable.
    scratch = sum(a.size for a in allocations
                  if not (a.maybe_live_out
                          or a.is_entry_computation_parameter))
    print(f"{kwargs}: {scratch} B of scratch")
    assert scratch < largest
    # Nothing leaves the device mid-step.
    hlo = compiler_ir(optimizer, grads, "optimized_hlo")
    for op in ("send", "recv", "infeed", "outfeed", "custom-call"):
        assert f" {op}(" not in hlo, op


def test_traced_for_gives_programs_another_devices_form():
    from tf_lamb import compiled
    ws = variables()
    grads = gradient_stream(1)[0]
    forms = {}
    for kind in ("gpu", "tpu", "cpu"):
        optimizer = Lamb(learning_rate=0.01)
        with compiled.traced_for(kind):
            optimizer.apply_gradients(zip(grads, ws))
        forms[kind] = compiler_ir(optimizer, grads, "hlo")
    # The GPU's form stacks the small variables; the others do not.
    assert "concatenate" in forms["gpu"]
    assert forms["tpu"] != forms["gpu"] and forms["cpu"] != forms["tpu"]
    # The TPU's form fences each variable from the next, and the check of
    # each shape's gradients from the next shape's (one barrier between
    # each two); the CPU's has none.
    assert forms["tpu"].count(" opt-barrier(") == (
        (len(SHAPES) - 1) + (len(set(SHAPES)) - 1))
    assert " opt-barrier(" not in forms["cpu"]
    with pytest.raises(ValueError, match="device kind"):
        with compiled.traced_for("ipu"):
            pass
    assert compiled.device_kind("/device:CPU:0") == "cpu"


def test_gradient_sums_by_shape_against_numpy():
    """One (sum of squares, scaled sum of squares) pair per shape, in the
    order of each shape's first gradient, summed over its gradients; an
    inf in any of a group's gradients makes that group's scaled sum
    non-finite, and a sum that overflows float32 has a finite scaled one."""
    from tf_lamb import compiled
    rng = np.random.default_rng(9)
    shapes = [(3, 2), (4,), (3, 2), (4,), (5,), (3, 2)]
    arrays = [rng.normal(size=s).astype(np.float32) for s in shapes]
    arrays[2][1, 1] = 3e19  # its square overflows float32

    dtypes = []

    @tf.function(jit_compile=True)
    def sums_of(grads):
        sums, dtypes[:] = compiled.gradient_sums_by_shape(grads)
        return sums

    sums = sums_of([tf.constant(a) for a in arrays])
    assert dtypes == [tf.float32] * 3
    scale = 2.0 ** -100
    for (plain, scaled), members in zip(sums, ([0, 2, 5], [1, 3], [4])):
        exact = sum(np.sum(arrays[i].astype(np.float64) ** 2)
                    for i in members)
        # Squares of ordinary values scaled so far down underflow to 0.
        np.testing.assert_allclose(scaled.numpy(), exact * scale ** 2,
                                   rtol=1e-6, atol=1e-30)
        if exact < np.finfo(np.float32).max:
            np.testing.assert_allclose(plain.numpy(), exact, rtol=1e-6)
        else:
            assert np.isinf(plain.numpy())
    arrays[3][2] = np.inf
    sums = sums_of([tf.constant(a) for a in arrays])
    assert [bool(np.isfinite(scaled.numpy())) for _, scaled in sums] == [
        True, False, True]
