"""Sums of squares and norms that XLA fuses well and that cannot overflow,
and XLA's optimization barrier: the numerics every form of the step uses.

    sums_of_squares   [sum(x**2) for x in tensors], one pass (matvec on CPU)
    gradient_sums     [(sum(x**2), sum((x * s)**2))], s = OVERFLOW_SAFE_SCALE
    summed_together   (sum(x), sum(y)) from one reduction
    all_finite        every element finite <=> every scaled sum finite
    norm              sqrt(sum(x**2)), or sqrt(sum((x * s)**2)) / s
    optimization_barrier  tensors unchanged; XLA fuses nothing across it
"""

import tensorflow as tf

# XLA's optimization barrier and variadic reduction, which tf.raw_ops
# lacks; where TensorFlow has no such module the forms run without them
# (same values, more kernels).
try:
    from tensorflow.compiler.tf2xla.python import xla as _tf2xla
except ImportError:  # pragma: no cover
    _tf2xla = None


def optimization_barrier(*tensors):
    """`tensors` unchanged, through an XLA optimization barrier: XLA fuses
    nothing across it."""
    if _tf2xla is None or not hasattr(_tf2xla, "optimization_barrier"):
        return list(tensors)
    return list(_tf2xla.optimization_barrier(*tensors))


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
    (docs/optimizer_performance.md).
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


# A power of two small enough that the sum of squares of any finite
# tensor of this dtype times it cannot overflow (float32: |x| < 2**128, so
# (x * 2**-100)**2 < 2**56, and fewer than 2**40 elements sum below
# 2**96), and large enough that what it rounds to zero (|x| < 2**-49 in
# float32) cannot matter beside a square too large for the float.
OVERFLOW_SAFE_SCALE = {tf.float32: 2.0 ** -100, tf.float64: 2.0 ** -600}


def gradient_sums(*tensors, use_matvec=True):
    """[(sum(x**2), sum((x * s)**2)) for x in tensors], s the dtype's
    `OVERFLOW_SAFE_SCALE`, each pair from one pass over x (see
    sums_of_squares).

    The first is the squared norm, exact unless it overflowed (|x| ~ 1e19
    in a few float32 elements is enough); the second never overflows, so
    it is finite exactly when every element is, and gives the norm where
    the first is inf (`norm`).
    """
    pairs = []
    for x in tensors:
        scale = tf.constant(OVERFLOW_SAFE_SCALE[x.dtype], x.dtype)
        pairs.append(tuple(sums_of_squares(x, x * scale,
                                           use_matvec=use_matvec)))
    return pairs


def summed_together(x, y):
    """(sum(x), sum(y)) of two tensors of one shape and dtype, from one XLA
    reduction of the pair (two reductions of 50 operands each were two
    kernels on a TPU, each reading them all)."""
    reducer = _pair_sum(x.dtype)
    if reducer is None:
        return tf.reduce_sum(x), tf.reduce_sum(y)
    zero = tf.zeros([], x.dtype)
    return tuple(_tf2xla.variadic_reduce(
        [x, y], [zero, zero], list(range(x.shape.rank)), reducer))


_PAIR_SUMS = {}  # dtype -> the reducer of `summed_together`, or None


def _pair_sum(dtype):
    """The reducer of `summed_together` for `dtype`; None where this
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


def all_finite(scaled_sums):
    """Whether every element is finite, from `gradient_sums`' second sums
    (an inf/NaN element makes its sum inf/NaN; a finite one cannot)."""
    return tf.math.is_finite(tf.add_n(list(scaled_sums)))


def norm(squared_sum, scaled_squared_sum):
    """||x|| = sqrt(squared_sum), or where that sum overflowed,
    sqrt(scaled_squared_sum) / s from the scaled sum (`gradient_sums`)."""
    scale = OVERFLOW_SAFE_SCALE[squared_sum.dtype]
    return tf.where(tf.math.is_inf(squared_sum),
                    tf.sqrt(scaled_squared_sum) / scale,
                    tf.sqrt(squared_sum))


def squared_sum_in(dtype, pair, pair_dtype):
    """The squared norm of a `gradient_sums` pair of `pair_dtype`, in
    `dtype`; where a narrower dtype's sum overflowed, from its scaled sum,
    which the wider dtype holds unscaled."""
    plain = tf.cast(pair[0], dtype)
    if pair_dtype == dtype:
        return plain
    return tf.where(tf.math.is_inf(plain),
                    tf.cast(pair[1], dtype)
                    / OVERFLOW_SAFE_SCALE[pair_dtype] ** 2,
                    plain)


def scaled_sum_in(dtype, scaled, pair_dtype):
    """A `gradient_sums` scaled sum of `pair_dtype` in `dtype`, at `dtype`'s
    scale: s_dtype**2 / s_pair**2 times it (float32 and float64 variables
    mixed)."""
    if pair_dtype == dtype:
        return scaled
    return tf.cast(scaled, dtype) * (OVERFLOW_SAFE_SCALE[dtype]
                                     / OVERFLOW_SAFE_SCALE[pair_dtype])**2


def widest(tensors):
    """float64 if any of `tensors` is, else float32."""
    return (tf.float64 if any(t.dtype == tf.float64 for t in tensors)
            else tf.float32)
