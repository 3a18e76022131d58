"""LAMB's step for all variables at once, as one program per device.

`tf_lamb.algorithm` says what a step computes; this module says how it runs
fast and correctly:

- across replicas: gradients are summed before any norm is taken, then one
  `strategy.extended.update` runs the program on each device's copy;
- as one XLA program (or one graph) for all variables, in the form the
  device's compiler makes fast: a CPU streams each variable once per norm
  with matvec norms (`sums_of_squares`); a GPU launches a kernel per fusion,
  so there every norm of every variable is taken in one pass that writes
  nothing, small variables stacked, before one writing pass per variable
  (`update_grouped`); a TPU's compiler stages operands through its vector
  memory, so there the gradients are checked a shape at a time
  (`gradient_sums_by_shape`) and each variable is updated in turn, fenced
  from the next (`update_in_sequence`);
- with the all-or-nothing rule for inf/NaN gradients, gradient
  accumulation and EMA, each written so that XLA updates variables in place.

Measurements behind each choice: docs/performance.md.
"""

import contextlib
import dataclasses
import math
from typing import NamedTuple, Optional

import tensorflow as tf

from tf_lamb import algorithm, framework
# XLA's optimization barrier, which tf.raw_ops lacks; where TensorFlow has
# no such module the grouped form runs without it (same values, more kernels).
try:
    from tensorflow.compiler.tf2xla.python import xla as _tf2xla
except ImportError:  # pragma: no cover
    _tf2xla = None

# XLA:CPU fuses the squares into the norms' matvec from TensorFlow 2.21 on;
# 2.16's does not (2.17-2.20 unmeasured): plain reductions there.
MATVEC_NORMS_ON_CPU = framework.major_minor(tf.__version__) >= (2, 21)


# The forms of the update (Settings.form): "chained" takes each variable's
# norms and update one after the other; "grouped" takes all norms first, in
# few kernels (`update_grouped`); "sequenced" is chained with each variable
# finished before the next one starts (`update_in_sequence`), after an
# inf/NaN check of a kernel per shape (`gradient_sums_by_shape`). Measured with
# each target's compiler (benchmarks.compile_for, docs/performance.md):
# grouped launches a third of keras Lamb's kernels on an H100; on a TPU,
# whose compiler stages operands through its vector memory, the stacks it
# builds cost traffic, and the sequence keeps the staging lowest.
FORMS = {"cpu": "chained", "gpu": "grouped", "tpu": "sequenced"}


@dataclasses.dataclass(frozen=True)
class Settings:
    """What a program is built with: Python values baked into it."""

    epsilon: float
    max_trust_ratio: Optional[float]
    bias_correction: bool
    jit_compile: bool
    use_matvec: bool  # the form of the norms, see sums_of_squares
    form: str = "chained"  # of the update, see FORMS
    clipnorm: Optional[float] = None
    global_clipnorm: Optional[float] = None
    clipvalue: Optional[float] = None
    accumulation_steps: Optional[int] = None
    ema_momentum: Optional[float] = None  # None: no EMA
    ema_overwrite_frequency: Optional[int] = None
    # The optimizer's weight decay, which each VariableState bakes in (0
    # for an excluded variable); here so that a new value makes a new
    # program.
    weight_decay: Optional[float] = None


class VariableState(NamedTuple):
    """One variable's tensors in a step (this device's copies), and how LAMB
    treats it."""

    weight: tf.Variable
    momentum: tf.Variable
    velocity: tf.Variable
    accumulator: Optional[tf.Variable]  # gradient accumulation only
    weight_decay: float  # 0: no decay (excluded, or none asked for)
    layer_adaptation: bool  # False: phi = 1


class StepState(NamedTuple):
    """The optimizer's tensors a step reads and writes."""

    iterations: tf.Variable  # calls so far
    trust_ratios: tf.Variable  # phi of every variable of the optimizer
    indices: tuple  # the variables' places in trust_ratios
    variables: tuple  # their VariableStates
    # EMA only: (weight, average) of every trainable variable of the
    # optimizer, updated at every call as Keras does, whether or not the
    # variable has a gradient in this call.
    averaged: tuple = ()


# -- norms -------------------------------------------------------------------

_traced_for = []  # kinds given to `traced_for`, innermost last


@contextlib.contextmanager
def traced_for(kind):
    """Programs traced inside take the form of `kind` ("cpu", "gpu" or
    "tpu") wherever their variables are: for a program exported here and
    compiled for another device (benchmarks.export_hlo, --compile_for)."""
    if kind not in FORMS:
        raise ValueError(f"Unknown device kind {kind!r}; expected one of "
                         f"{sorted(FORMS)}")
    _traced_for.append(kind)
    try:
        yield
    finally:
        _traced_for.pop()


def device_kind(device):
    """"cpu", "gpu" or "tpu": the kind of device a variable placed on
    `device` (a device string) lives on, or the one `traced_for` names."""
    if _traced_for:
        return _traced_for[-1]
    device_type = (tf.DeviceSpec.from_string(device or "").device_type
                   or "").upper()
    if not device_type:
        for kind in ("TPU", "GPU"):
            if tf.config.list_logical_devices(kind):
                device_type = kind
                break
    return {"TPU": "tpu", "GPU": "gpu"}.get(device_type, "cpu")


def norms_as_matvec(device, jit_compile):
    """The form of the norms for a program on `device` (sums_of_squares)."""
    return (jit_compile and device_kind(device) == "cpu"
            and MATVEC_NORMS_ON_CPU)


def update_form(device, jit_compile, dtypes=()):
    """The form of the update for a program on `device` (FORMS) for
    variables of `dtypes`; outside XLA, "chained", whose tf.cond skips a
    non-finite step, and so with float64 variables, which the grouped
    form's float32 stacks would not hold."""
    if not jit_compile or any(tf.as_dtype(d) == tf.float64 for d in dtypes):
        return "chained"
    return FORMS[device_kind(device)]


def sums_of_squares(*tensors, use_matvec=True):
    """[sum(x**2) for x in tensors], for tensors of one shape.

    With `use_matvec`, each tensor is viewed as rows of its last dimension,
    the rows of all the tensors are interleaved, and one matvec
    `square(rows) @ ones` sums them. XLA on CPU fuses that into a single
    streaming loop, where a large `reduce_sum(square(x))` becomes a
    reduce-window that writes x**2 out first; and with w and r = f(w, m, v)
    interleaved, w, m and v are read once for both norms instead of once per
    norm. Without it, plain reductions: GPUs and TPUs fuse those well, and
    may run a float32 matvec at TF32 or bfloat16 precision. The fusion is a
    property of one XLA:CPU (TensorFlow 2.21's): re-measure when it moves
    (docs/performance.md).
    """
    if not use_matvec:
        # One kernel outside XLA, where reduce_sum(square(x)) writes x**2
        # out first; XLA lowers both to the same reduction.
        return [2.0 * tf.nn.l2_loss(x) for x in tensors]
    columns = tensors[0].shape[-1] if tensors[0].shape.rank else 1
    # XLA:CPU's matvec slows down on rows longer than 2048; a row split in
    # halves is still a free reshape.
    while columns > 2048 and columns % 2 == 0:
        columns //= 2
    rows = tf.stack([tf.reshape(x, [-1, columns]) for x in tensors], axis=1)
    row_sums = tf.linalg.matvec(tf.square(tf.reshape(rows, [-1, columns])),
                                tf.ones([columns], rows.dtype))
    return tf.unstack(tf.reduce_sum(
        tf.reshape(row_sums, [-1, len(tensors)]), axis=0))


def compute_dtype(dtype):
    """The dtype LAMB computes a variable's update in: float64 for a
    float64 variable, float32 otherwise (the state of a float16 or bfloat16
    variable is float32)."""
    return tf.float64 if tf.as_dtype(dtype) == tf.float64 else tf.float32


# A power of two small enough that the sum of squares of any finite
# tensor of this dtype times it cannot overflow (float32: |x| < 2**128, so
# (x * 2**-100)**2 < 2**56, and fewer than 2**40 elements sum below
# 2**96), and large enough that what it rounds to zero (|x| < 2**-49 in
# float32) cannot matter beside a square too large for the float.
_OVERFLOW_SAFE_SCALE = {tf.float32: 2.0 ** -100, tf.float64: 2.0 ** -600}


def gradient_sums(*tensors, use_matvec=True):
    """[(sum(x**2), sum((x * s)**2)) for x in tensors], s the dtype's
    `_OVERFLOW_SAFE_SCALE`, each pair from one pass over x (see
    sums_of_squares).

    The first is the squared norm, exact unless it overflowed (|x| ~ 1e19
    in a few float32 elements is enough); the second never overflows, so
    it is finite exactly when every element is, and gives the norm where
    the first is inf (`norm`).
    """
    pairs = []
    for x in tensors:
        scale = tf.constant(_OVERFLOW_SAFE_SCALE[x.dtype], x.dtype)
        pairs.append(tuple(sums_of_squares(x, x * scale,
                                           use_matvec=use_matvec)))
    return pairs


def gradient_sums_by_shape(grads):
    """`gradient_sums` of the gradients of each shape and dtype together:
    ([(sum of sum(x**2), sum of sum((x * s)**2)) of each group], [the
    group's dtype]), groups in the order of their first gradient.

    Each group's pair comes from one pass that reads all of its gradients
    (sum_i x_i**2 element-wise, then summed), and the groups pass through
    an optimization barrier one after another. libtpu stages a gradient
    into vector memory for each kernel that reads it; with a kernel per
    gradient here, it staged most of them twice (here, then for their
    variable's update). A dozen kernels for BERT's 204 gradients, in turn,
    leave most staged once (docs/performance.md).
    """
    groups = {}
    for g in grads:
        groups.setdefault((tuple(g.shape), g.dtype), []).append(g)
    sums, dtypes = [], []
    for (_, dtype), group in groups.items():
        if sums:
            passed = optimization_barrier(*sums[-1], *group)
            sums[-1], group = tuple(passed[:2]), passed[2:]
        scale = tf.constant(_OVERFLOW_SAFE_SCALE[dtype], dtype)
        sums.append(_summed_together(
            tf.add_n([tf.square(g) for g in group]),
            tf.add_n([tf.square(g * scale) for g in group])))
        dtypes.append(dtype)
    return sums, dtypes


def _summed_together(x, y):
    """(sum(x), sum(y)) of two tensors of one shape and dtype, from one XLA
    reduction of the pair (two reductions of 50 operands each were two
    kernels on a TPU, each reading them all)."""
    reducer = _pair_sum(x.dtype)
    if reducer is None:
        return tf.reduce_sum(x), tf.reduce_sum(y)
    zero = tf.zeros([], x.dtype)
    return tuple(_tf2xla.variadic_reduce(
        [x, y], [zero, zero], list(range(x.shape.rank)), reducer))


def _pair_sum(dtype):
    """The reducer of `_summed_together` for `dtype`; None where this
    TensorFlow lacks XLA's variadic reduction or the function form it
    takes."""
    if dtype not in _PAIR_SUMS:
        try:
            from tensorflow.python.framework import function
        except ImportError:  # pragma: no cover
            function = None
        if (function is None or _tf2xla is None
                or not hasattr(_tf2xla, "variadic_reduce")):
            _PAIR_SUMS[dtype] = None
            return None

        @function.Defun(dtype, dtype, dtype, dtype)
        def pair_sum(x_sum, y_sum, x, y):
            return x_sum + x, y_sum + y

        _PAIR_SUMS[dtype] = pair_sum
    return _PAIR_SUMS[dtype]


_PAIR_SUMS = {}


def all_finite(scaled_sums):
    """Whether every element is finite, from `gradient_sums`' second sums
    (an inf/NaN element makes its sum inf/NaN; a finite one cannot)."""
    return tf.math.is_finite(tf.add_n(list(scaled_sums)))


def norm(squared_sum, scaled_squared_sum):
    """sqrt(squared_sum), or where that sum overflowed, the norm from the
    scaled sum (`gradient_sums`)."""
    scale = _OVERFLOW_SAFE_SCALE[squared_sum.dtype]
    return tf.where(tf.math.is_inf(squared_sum),
                    tf.sqrt(scaled_squared_sum) / scale,
                    tf.sqrt(squared_sum))


# -- across replicas and devices ---------------------------------------------

def apply_on_every_device(strategy, grads, hyperparameters, anchor,
                          run_program):
    """Sums `grads` over replicas, then calls `run_program(anchor_copy,
    grads, hyperparameters)` once per device (or once inside a TPU program),
    where every distributed variable resolves to that device's copy.

    `anchor` is any optimizer variable: its copy tells the device.
    """
    def update_all(strategy, grads, hyperparameters):
        strategy.extended.update(anchor.value, run_program,
                                 args=(grads, hyperparameters), group=False)

    replica_context = tf.distribute.get_replica_context()
    if replica_context is None:
        update_all(strategy, grads, hyperparameters)
        return
    # Clipping norms and trust ratios must see the global gradient, never
    # one replica's share. (One replica: the call alone would cost time.)
    if replica_context.num_replicas_in_sync > 1:
        grads = replica_context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    tf.__internal__.distribute.interim.maybe_merge_call(
        update_all, strategy, grads, hyperparameters)


def program(state_of_device, settings):
    """The step as a tf.function of (gradients, (lr, beta_1, beta_2)).

    `state_of_device()` gives the StepState when the function is traced,
    inside the update of one device, so the program captures that device's
    copies: each device needs a program of its own.
    """
    return tf.function(
        lambda grads, hyper: step(grads, hyper, state_of_device(), settings),
        jit_compile=settings.jit_compile, autograph=False,
        reduce_retracing=True)


# -- the step ----------------------------------------------------------------

def run_if(condition, body, jit_compile):
    """Runs `body(trip)`, trip = 0, if `condition` holds.

    Under XLA this is a while loop of zero or one trips: a loop updates its
    variables in place, where a conditional copies every variable that the
    branch not taken passes through (on an accumulating call, all of w, m
    and v). Outside XLA a `tf.cond` costs nothing extra.
    """
    def run():
        body(tf.constant(0))
        return tf.constant(True)

    if not jit_compile:
        tf.cond(condition, run, lambda: tf.constant(False))
        return

    def loop_body(trip):
        body(trip)
        return trip + 1

    tf.while_loop(lambda trip: trip < tf.cast(condition, tf.int32),
                  loop_body, [tf.constant(0)])


def step(grads, hyperparameters, state, settings):
    """One call: an update, or with gradient accumulation, a call that adds
    to the accumulators or one that updates with their mean."""
    iterations = state.iterations
    steps = settings.accumulation_steps
    if not steps:
        finite = update(grads, hyperparameters, iterations, state, settings)
        update_ema(state.averaged, iterations, finite, settings)
        return
    accumulators = [variable.accumulator for variable in state.variables]
    is_update_step = tf.equal((iterations + 1) % steps, 0)
    starts_cycle = tf.equal(iterations % steps, 0)

    def accumulate(trip):
        # The first call of a cycle overwrites the last cycle's mean, so no
        # pass over the accumulators is spent zeroing them.
        for a, g in zip(accumulators, grads):
            g = tf.cast(g, a.dtype)
            a.assign(tf.where(starts_cycle, g, a.read_value() + g))
        # Keras moves the averages at every call, the weights unchanged.
        update_ema(state.averaged, iterations // steps, None, settings)

    def take_mean(trip):
        # A loop of its own: inside the update's loop XLA would fuse the mean
        # into each pass that reads it and copy the old sums aside.
        for a, g in zip(accumulators, grads):
            a.assign((a.read_value() + tf.cast(g, a.dtype)) / steps)

    def apply_mean(trip):
        means = [a.read_value() for a in accumulators]
        if settings.jit_compile:
            # Times 1.0 from the trip count: XLA would otherwise hoist the
            # loop-invariant g**2 out of the loop as a full-size temporary
            # per variable, allocated even when no update runs.
            one = tf.cast(trip, tf.float32) + 1.0
            means = [m * tf.cast(one, m.dtype) for m in means]
        finite = update(means, hyperparameters, iterations // steps, state,
                        settings)
        update_ema(state.averaged, iterations // steps, finite, settings)

    run_if(tf.logical_not(is_update_step), accumulate, settings.jit_compile)
    run_if(is_update_step, take_mean, settings.jit_compile)
    run_if(is_update_step, apply_mean, settings.jit_compile)


def update(grads, hyperparameters, update_count, state, settings):
    """One LAMB update of every variable in `state`; `update_count` updates
    were applied before. A step whose gradients hold inf or NaN changes no
    variable and no slot."""
    if settings.form == "grouped":
        return update_grouped(grads, hyperparameters, update_count, state,
                              settings)
    grads = [tf.cast(g, compute_dtype(v.weight.dtype))
             for g, v in zip(grads, state.variables)]
    if settings.form == "sequenced" and not settings.clipnorm:
        sums, sum_dtypes = gradient_sums_by_shape(grads)
    else:
        sums = gradient_sums(*grads, use_matvec=settings.use_matvec)
        sum_dtypes = [g.dtype for g in grads]
    # Decided on the summed gradients: the whole step is dropped, on every
    # replica alike, or taken.
    finite = all_finite([tf.cast(scaled, _widest(grads))
                         for _, scaled in sums])
    clippings = _clippings(grads, sums, sum_dtypes, settings)
    # The scalars in each dtype the variables compute in (float64 ones
    # take their powers in float64; a float32-only program has no float64).
    values = {dtype: algorithm.StepValues.at(
        tf.cast(update_count + 1, dtype),
        *(tf.cast(h, dtype) for h in hyperparameters),
        bias_correction=settings.bias_correction)
        for dtype in {g.dtype for g in grads}}

    def update_variables(finite):
        if settings.form == "sequenced":
            return update_in_sequence(
                state.variables, grads, clippings, values, settings, finite)
        ratios = [update_variable(variable, clip(g), values[g.dtype],
                                  settings, finite)
                  for variable, g, clip in zip(state.variables, grads,
                                               clippings)]
        return tf.stack(ratios)

    store_trust_ratios(state, update_variables, finite=finite,
                       jit_compile=settings.jit_compile)
    return finite


def _widest(tensors):
    return (tf.float64 if any(t.dtype == tf.float64 for t in tensors)
            else tf.float32)


def store_trust_ratios(state, update_variables, finite, jit_compile):
    """Runs `update_variables(finite)`, which returns phi of the variables
    of `state`, and keeps those in the optimizer's trust ratios where the
    step is finite."""
    trust_ratios = state.trust_ratios
    previous = trust_ratios.read_value()
    if jit_compile:
        # XLA updates variables in place only outside conditionals, so there
        # `finite` selects the old values element-wise.
        ratios = update_variables(finite)
    else:
        # Outside XLA each element-wise select is a pass of its own; a cond
        # skips the whole update instead.
        ratios = tf.cond(finite, lambda: update_variables(None),
                         lambda: tf.gather(previous, state.indices))
    trust_ratios.assign(tf.where(
        finite,
        tf.tensor_scatter_nd_update(previous, [[i] for i in state.indices],
                                    ratios),
        previous))


def _unless_nonfinite(finite, new, old):
    """`new` where `finite` holds, else `old`; `new` when finite is None."""
    return new if finite is None else tf.where(finite, new, old)


def update_variable(variable, gradient, values, settings, finite):
    """Algorithm 2 for one variable; its trust ratio phi.

    `finite`: keep the old values where it is false (None: the caller has
    checked it already).
    """
    w, m_slot, v_slot = variable.weight, variable.momentum, variable.velocity
    weight = tf.cast(w.read_value(), gradient.dtype)
    m_old, v_old = m_slot.read_value(), v_slot.read_value()
    m, v = algorithm.update_moments(gradient, m_old, v_old, values.beta_1,
                                    values.beta_2)
    m_slot.assign(_unless_nonfinite(finite, m, m_old))
    v_slot.assign(_unless_nonfinite(finite, v, v_old))
    # Reading the slots back (rather than reusing m, v) lets XLA update them
    # in place: nothing after this point needs their old values.
    m, v = m_slot.read_value(), v_slot.read_value()

    def direction(as_product=False):
        return algorithm.lamb_direction(
            m, v, weight, values.beta_1_power, values.beta_2_power,
            settings.epsilon, variable.weight_decay, as_product)

    r = direction()
    ratio = _trust_ratio(variable, weight, r, settings, settings.use_matvec)
    if ratio is not None and settings.jit_compile:
        # r again, in a form XLA does not share with the norm's pass, so r
        # is never written out: the norm's and the update's loops each read
        # w, m, v. Unfused graph ops keep r anyway.
        r = direction(as_product=True)
    new_weight = _unless_nonfinite(
        finite, algorithm.apply_update(weight, r, values.learning_rate, ratio),
        weight)
    w.assign(tf.cast(new_weight, w.dtype))
    return _stored(ratio)


def _trust_ratio(variable, weight, direction, settings, use_matvec):
    """phi of `variable`, None where it takes no layer adaptation."""
    if not variable.layer_adaptation:
        return None
    weight_squared, direction_squared = sums_of_squares(
        weight, direction, use_matvec=use_matvec)
    return algorithm.trust_ratio(tf.sqrt(weight_squared),
                                 tf.sqrt(direction_squared),
                                 settings.max_trust_ratio)


def _stored(ratio):
    """phi as the optimizer's trust_ratios keep it (1 for no adaptation)."""
    return tf.constant(1.0) if ratio is None else tf.cast(ratio, tf.float32)


def new_values(variable, weight, m_old, v_old, gradient, values, settings,
               finite):
    """Algorithm 2 for one variable, as values: (phi, new weight, m, v),
    each kept at its old value where `finite` is false. `weight` is in
    the gradient's dtype."""
    m, v = algorithm.update_moments(gradient, m_old, v_old, values.beta_1,
                                    values.beta_2)
    m = _unless_nonfinite(finite, m, m_old)
    v = _unless_nonfinite(finite, v, v_old)
    r = algorithm.lamb_direction(
        m, v, weight, values.beta_1_power, values.beta_2_power,
        settings.epsilon, variable.weight_decay)
    if variable.layer_adaptation and not variable.weight_decay:
        # w made an operand of r (0 * w adds nothing to a finite w): libtpu
        # then sums ||w||**2 in the kernel of ||r||**2, where without weight
        # decay it took a kernel of its own (BERT-base: 204 kernels fewer).
        r = r + 0.0 * weight
    ratio = _trust_ratio(variable, weight, r, settings, use_matvec=False)
    new_weight = _unless_nonfinite(
        finite, algorithm.apply_update(weight, r, values.learning_rate, ratio),
        weight)
    return _stored(ratio), new_weight, m, v


# `update_in_sequence` stacks the trust ratios this many at a time.
RATIOS_PER_STACK = 8


def update_in_sequence(variables, grads, clippings, values, settings,
                       finite):
    """`new_values` of each variable in turn, last first, each
    finished before the next one starts: one variable's results and the
    next one's inputs pass through one optimization barrier; each gradient
    is clipped (`clippings`) after its barrier. Returns phi of the
    variables, a vector in their order.

    Once the trust ratios are a result of the program, libtpu runs every
    variable's moments and norms before any weight update and stages the
    new moments through its vector memory and back (BERT-base on a v5e:
    130.7 B/param by its cost analysis; 71.1 in this sequence, keras Lamb
    71.2). Last first: the gradients checked last may still be in vector
    memory when their variables update.

    The ratios are stacked `RATIOS_PER_STACK` at a time and the stacks
    pass through the barriers: in libtpu's buffer assignment the scalars
    that stay live sit 16 KiB apart, and 204 ratios kept to the end (or
    the two sums each is made of) were most of the step's scratch.
    """
    def assign(variable, results):
        ratio, new_weight, m, v = results
        variable.momentum.assign(m)
        variable.velocity.assign(v)
        variable.weight.assign(tf.cast(new_weight, variable.weight.dtype))
        return ratio

    stacks, ratios = [], []

    def keep(ratio):
        ratios.append(ratio)
        if len(ratios) == RATIOS_PER_STACK:
            stacks.append(tf.stack(ratios))
            del ratios[:]

    previous = None  # (variable, its results)
    for i in reversed(range(len(variables))):
        variable, gradient = variables[i], grads[i]
        inputs = [tf.cast(variable.weight.read_value(), gradient.dtype),
                  variable.momentum.read_value(),
                  variable.velocity.read_value(), gradient]
        if previous is not None:
            passed = optimization_barrier(*stacks, *previous[1], *inputs)
            stacks[:], passed = passed[:len(stacks)], passed[len(stacks):]
            keep(assign(previous[0], passed[:4]))
            inputs = passed[4:]
        weight, m_old, v_old, gradient = inputs
        previous = (variable, new_values(
            variable, weight, m_old, v_old, clippings[i](gradient),
            values[gradient.dtype], settings, finite))
    if previous is not None:
        keep(assign(*previous))
    if ratios:
        stacks.append(tf.stack(ratios))
    if not stacks:
        return tf.zeros([0])
    # Kept last first.
    return tf.reverse(tf.concat(stacks, 0), [0])


def _squared_sum_in(dtype, pair, pair_dtype):
    """The squared norm of a `gradient_sums` pair of `pair_dtype`, in
    `dtype`; where a narrower dtype's sum overflowed, from its scaled sum,
    which the wider dtype holds unscaled."""
    plain = tf.cast(pair[0], dtype)
    if pair_dtype == dtype:
        return plain
    return tf.where(tf.math.is_inf(plain),
                    tf.cast(pair[1], dtype)
                    / _OVERFLOW_SAFE_SCALE[pair_dtype] ** 2,
                    plain)


def _clippings(grads, sums, sum_dtypes, settings):
    """For each gradient, the function that clips it as `settings` asks,
    from `sums`: `gradient_sums` pairs of dtypes `sum_dtypes`, one per
    gradient (which `clipnorm` needs) or per group of them
    (`gradient_sums_by_shape`)."""
    if settings.clipnorm:
        return [lambda g, pair=pair: algorithm.clip_by_global_norm(
                    [g], tf.cast(settings.clipnorm, g.dtype), norm(*pair))[0]
                for pair in sums]
    if settings.global_clipnorm:
        dtype = _widest(grads)
        squared = tf.add_n([_squared_sum_in(dtype, pair, pair_dtype)
                            for pair_dtype, pair in zip(sum_dtypes, sums)])
        # Each narrower dtype's scaled sum brought to the widest dtype's
        # scale (float32 and float64 variables mixed).
        scaled = tf.add_n([
            scaled if pair_dtype == dtype else
            tf.cast(scaled, dtype) * (_OVERFLOW_SAFE_SCALE[dtype]
                                      / _OVERFLOW_SAFE_SCALE[pair_dtype])**2
            for pair_dtype, (_, scaled) in zip(sum_dtypes, sums)])
        scale = algorithm.clip_scale(
            tf.cast(settings.global_clipnorm, dtype), norm(squared, scaled))
        return [lambda g: g * tf.cast(scale, g.dtype)] * len(grads)
    if settings.clipvalue:
        return [lambda g: tf.clip_by_value(g, -settings.clipvalue,
                                           settings.clipvalue)] * len(grads)
    return [lambda g: g] * len(grads)


def update_ema(averaged, updates, finite, settings):
    """average = momentum * average + (1 - momentum) * w for every (w,
    average) in `averaged`, at every call, as Keras' base optimizer does.
    `updates` is Keras' `optimizer.iterations` (updates before this call):
    momentum is 0 while it is 0 (the weights are copied in), and where
    `updates + 1` is a multiple of `ema_overwrite_frequency` the weights take
    their averages. Where `finite` is false (an update dropped by the inf/NaN
    rule), nothing changes."""
    if settings.ema_momentum is None or not averaged:
        return
    momentum = tf.where(updates > 0, settings.ema_momentum, 0.0)
    overwrite = None
    if settings.ema_overwrite_frequency:
        overwrite = tf.equal(
            (updates + 1) % settings.ema_overwrite_frequency, 0)
        if finite is not None:
            overwrite = tf.logical_and(finite, overwrite)
    for w, average in averaged:
        dtype = compute_dtype(w.dtype)
        weight = tf.cast(w.read_value(), dtype)
        old_average = tf.cast(average.read_value(), dtype)
        w_momentum = tf.cast(momentum, dtype)
        new_average = _unless_nonfinite(
            finite, w_momentum * old_average + (1.0 - w_momentum) * weight,
            old_average)
        average.assign(tf.cast(new_average, average.dtype))
        if overwrite is not None:
            w.assign(tf.where(overwrite, tf.cast(new_average, w.dtype),
                              w.read_value()))


# -- the grouped form (GPU) --------------------------------------------------

def optimization_barrier(*tensors):
    """`tensors` unchanged, through an XLA optimization barrier: XLA fuses
    nothing across it."""
    if _tf2xla is None or not hasattr(_tf2xla, "optimization_barrier"):
        return list(tensors)
    return list(_tf2xla.optimization_barrier(*tensors))


# A variable of at most this many elements is stacked with the others of its
# size and treatment, so that one kernel sums them all; BERT's biases and
# LayerNorm parameters are 0.2 % of its parameters but 60 % of its
# variables, and each kernel of their own costs a launch.
SMALL_VARIABLE_ELEMENTS = 1 << 16
# A larger variable's sums are taken in two stages: into this many partial
# sums each (one kernel per variable), then all partial sums at once. XLA
# splits a large reduction in two kernels anyway; done here, the second
# stage of every variable shares one kernel.
PARTIAL_SUMS = 256


def grouped_sums(inputs, keys, terms):
    """sum(t) of every term t of every variable, as a [variables, k] tensor.

    `inputs[i]` holds variable i's tensors (each of its shape), and
    `terms(key, *tensors)` returns k element-wise terms of them, None for a
    term that is 0. Variables of one size and one `keys[i]` are stacked and
    summed by one reduction. No term is written out: each reduction fuses
    the terms it sums.
    """
    small, large = {}, {}
    for i, tensors in enumerate(inputs):
        size = tensors[0].shape.num_elements()
        if size <= SMALL_VARIABLE_ELEMENTS:
            small.setdefault((size, keys[i]), []).append(i)
        else:
            large.setdefault((math.gcd(size, PARTIAL_SUMS), keys[i]),
                            []).append(i)

    rows, layouts = {}, {}  # variable -> its non-zero sums; which terms
    for (_, key), members in small.items():
        stacked = [tf.stack([tf.reshape(inputs[i][j], [-1]) for i in members])
                   for j in range(len(inputs[members[0]]))]
        term_list = terms(key, *stacked)
        present = [tf.reduce_sum(t, axis=-1) for t in term_list
                   if t is not None]
        sums = (tf.unstack(tf.stack(present, axis=-1)) if present
                else [None] * len(members))
        for i, row in zip(members, sums):
            rows[i], layouts[i] = row, term_list
    for (parts, _), members in large.items():
        partial_sums, summed = [], []
        for i in members:
            layouts[i] = terms(keys[i], *inputs[i])
            present = [tf.reshape(t, [parts, -1]) for t in layouts[i]
                       if t is not None]
            if present:
                partial_sums.append(tf.reduce_sum(tf.stack(present), axis=-1))
                summed.append(i)
        if partial_sums:
            for i, row in zip(summed, tf.unstack(tf.reduce_sum(
                    tf.stack(partial_sums), axis=-1))):
                rows[i] = row

    def full_row(i):
        present = iter(tf.unstack(rows[i]) if rows.get(i) is not None
                       else ())
        return tf.stack([tf.constant(0.0) if t is None else next(present)
                         for t in layouts[i]])

    return tf.stack([full_row(i) for i in range(len(inputs))])


def update_grouped(grads, hyperparameters, update_count, state, settings):
    """`update` in the grouped form: every sum of squares of the step (the
    gradients' for the inf/NaN rule and clipping, the weights' and the
    directions' for the trust ratios) in one pass over all variables that
    writes nothing, then one pass per variable that writes w, m and v.

    With clipping by norm the directions need the clipped gradients, so
    the gradients' sums take a pass of their own first. Only float32
    variables (and float16/bfloat16 ones) take this form (`update_form`).
    """
    variables = state.variables
    grads = [tf.cast(g, tf.float32) for g in grads]
    weights = [tf.cast(v.weight.read_value(), tf.float32) for v in variables]
    moments = [(v.momentum.read_value(), v.velocity.read_value())
               for v in variables]
    values = algorithm.StepValues.at(
        tf.cast(update_count + 1, tf.float32), *hyperparameters,
        bias_correction=settings.bias_correction)
    keys = [(v.weight_decay, v.layer_adaptation) for v in variables]
    clip_by_norm = bool(settings.clipnorm or settings.global_clipnorm)

    def clipped_values(g):
        if settings.clipvalue:
            return tf.clip_by_value(g, -settings.clipvalue, settings.clipvalue)
        return g

    def direction(key, g, w, m, v, as_product=False):
        m, v = algorithm.update_moments(g, m, v, values.beta_1, values.beta_2)
        return algorithm.lamb_direction(
            m, v, w, values.beta_1_power, values.beta_2_power,
            settings.epsilon, key[0], as_product)

    overflow_safe = tf.constant(_OVERFLOW_SAFE_SCALE[tf.float32])

    def norm_terms(key, g, w, m, v, grad_scale=None):
        # The unclipped g decides the inf/NaN rule, as in `update` (its
        # scaled square: see gradient_sums).
        gradient_term = (None if clip_by_norm
                         else tf.square(g * overflow_safe))
        if not key[1]:
            return [gradient_term, None, None]
        g = clipped_values(g)
        if grad_scale is not None:
            g = g * grad_scale
        return [gradient_term, tf.square(w),
                tf.square(direction(key, g, w, m, v))]

    grad_scales = [None] * len(grads)
    if clip_by_norm:
        grad_sums = grouped_sums(
            [(g,) for g in grads], [()] * len(grads),
            lambda key, g: [tf.square(g), tf.square(g * overflow_safe)])
        finite = all_finite(tf.unstack(grad_sums[:, 1]))
        if settings.clipnorm:
            scales = algorithm.clip_scale(
                settings.clipnorm, norm(grad_sums[:, 0], grad_sums[:, 1]))
        else:
            scales = tf.fill([len(grads)], algorithm.clip_scale(
                settings.global_clipnorm,
                norm(tf.reduce_sum(grad_sums[:, 0]),
                     tf.reduce_sum(grad_sums[:, 1]))))
        grad_scales = tf.unstack(scales)
        # The scale travels as an input of each variable's terms, so stacked
        # variables take a stacked scale.
        sums = grouped_sums(
            [(g, w, m, v, tf.fill(tf.shape(g), s)) for g, w, (m, v), s
             in zip(grads, weights, moments, grad_scales)], keys,
            lambda key, g, w, m, v, s: norm_terms(key, g, w, m, v, s))
    else:
        sums = grouped_sums(
            [(g, w, m, v) for g, w, (m, v) in zip(grads, weights, moments)],
            keys, norm_terms)
        finite = all_finite(tf.unstack(sums[:, 0]))
    ratios = algorithm.trust_ratio(tf.sqrt(sums[:, 1]), tf.sqrt(sums[:, 2]),
                                   settings.max_trust_ratio)
    adapted = tf.constant([key[1] for key in keys])
    ratios = tf.where(adapted, ratios, 1.0)

    def update_variables(finite):
        for i, variable in enumerate(variables):
            # Through a barrier of its own, a variable's tensors share no
            # operand with another's: XLA then writes its w, m and v in one
            # kernel (reading g, m, v, w once), and joins such kernels of
            # many variables. Without it XLA joins the w of many variables
            # and writes each m and v apart, reading g, m, v twice.
            g, w, m_old, v_old = optimization_barrier(
                grads[i], weights[i], *moments[i])
            g = clipped_values(g)
            if grad_scales[i] is not None:
                g = g * grad_scales[i]
            m, v = algorithm.update_moments(g, m_old, v_old, values.beta_1,
                                            values.beta_2)
            # r again, in a form XLA does not share with the sums' pass, so
            # that neither pass writes it out.
            r = algorithm.lamb_direction(
                m, v, w, values.beta_1_power, values.beta_2_power,
                settings.epsilon, keys[i][0], as_product=True)
            new_weight = algorithm.apply_update(
                w, r, values.learning_rate,
                ratios[i] if keys[i][1] else None)
            variable.momentum.assign(tf.where(finite, m, m_old))
            variable.velocity.assign(tf.where(finite, v, v_old))
            variable.weight.assign(tf.cast(tf.where(finite, new_weight, w),
                                           variable.weight.dtype))
        return ratios

    store_trust_ratios(state, update_variables, finite=finite,
                       jit_compile=True)
    return finite
