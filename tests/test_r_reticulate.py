"""tf_lamb from R: `reticulate::import("tf_lamb")`, a Keras model compiled
with `tf_lamb$Lamb(...)` and fitted from an R session, ends with the weights
of the same fit run from Python.

Runs where `Rscript` and R's reticulate package are installed (Debian:
`apt-get install r-base-core r-cran-reticulate`) and skips otherwise. The
data cross from R as plain numeric vectors (Python lists): reticulate
before 1.38 cannot convert R matrices to NumPy 2 arrays ("incompatible
NumPy binary version"), and this keeps the test meaningful there too.
"""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

RSCRIPT = shutil.which("Rscript")

# The fit, written twice: in R below and in Python in `_fit_in_python`.
EXAMPLES, FEATURES, EPOCHS, BATCH = 64, 8, 3, 16
LAMB = dict(learning_rate=0.01, weight_decay=0.01)

R_FIT = r"""
library(reticulate)
args <- commandArgs(trailingOnly = TRUE)
use_python(args[1], required = TRUE)
tf_lamb <- import("tf_lamb")
keras <- import("keras")
np <- import("numpy", convert = FALSE)

n <- as.integer(args[3]); d <- as.integer(args[4])
x <- sin(seq_len(n * d) * 0.37)
y <- cos(seq_len(n) * 0.11)
x <- np$array(x, dtype = "float32")$reshape(c(n, d))
y <- np$array(y, dtype = "float32")$reshape(c(n, 1L))

keras$utils$set_random_seed(1L)
model <- keras$Sequential(list(
  keras$Input(shape = list(d)),
  keras$layers$Dense(16L, activation = "tanh"),
  keras$layers$Dense(1L)))
model$compile(optimizer = tf_lamb$Lamb(learning_rate = 0.01,
                                       weight_decay = 0.01),
              loss = "mse")
history <- model$fit(x, y, epochs = as.integer(args[5]),
                     batch_size = as.integer(args[6]), shuffle = FALSE,
                     verbose = 0L)
model$save_weights(args[2])
cat("losses", unlist(history$history$loss), "\n")
cat("optimizer", class(model$optimizer)[1], "\n")
"""


def _reticulate_version():
    if RSCRIPT is None:
        return None
    completed = subprocess.run(
        [RSCRIPT, "-e", 'cat(format(packageVersion("reticulate")))'],
        capture_output=True, text=True, timeout=60)
    return completed.stdout.strip() if completed.returncode == 0 else None


RETICULATE = _reticulate_version()
pytestmark = pytest.mark.skipif(
    RETICULATE is None, reason="needs Rscript and R's reticulate package")


def _fit_in_python():
    import keras
    import tf_lamb
    n, d = EXAMPLES, FEATURES
    # R's seq_len(k) is 1..k; R and NumPy take sin/cos of the same doubles.
    x = np.sin(np.arange(1, n * d + 1) * 0.37).astype("float32")
    x = x.reshape(n, d)  # row-major, as NumPy's reshape in the R script
    y = np.cos(np.arange(1, n + 1) * 0.11).astype("float32").reshape(n, 1)
    keras.utils.set_random_seed(1)
    model = keras.Sequential([
        keras.Input(shape=(d,)),
        keras.layers.Dense(16, activation="tanh"),
        keras.layers.Dense(1)])
    model.compile(optimizer=tf_lamb.Lamb(**LAMB), loss="mse")
    history = model.fit(x, y, epochs=EPOCHS, batch_size=BATCH,
                        shuffle=False, verbose=0)
    return model, history.history["loss"]


def test_a_model_fitted_from_r_equals_the_same_fit_from_python(tmp_path):
    script = tmp_path / "fit.R"
    script.write_text(R_FIT)
    weights = tmp_path / "from_r.weights.h5"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
               # The R session's Python imports tf_lamb as this one does.
               PYTHONPATH=os.pathsep.join(
                   [os.path.dirname(os.path.dirname(__file__))]
                   + os.environ.get("PYTHONPATH", "").split(os.pathsep)))
    completed = subprocess.run(
        [RSCRIPT, str(script), sys.executable, str(weights), str(EXAMPLES),
         str(FEATURES), str(EPOCHS), str(BATCH)],
        capture_output=True, text=True, timeout=300, env=env)
    assert completed.returncode == 0, (
        f"reticulate {RETICULATE}: {completed.stderr[-3000:]}")
    lines = dict(line.split(" ", 1) for line in
                 completed.stdout.splitlines() if " " in line)
    assert lines["optimizer"].strip() == "tf_lamb.lamb.Lamb"
    r_losses = [float(v) for v in lines["losses"].split()]
    assert len(r_losses) == EPOCHS and r_losses[-1] < r_losses[0]

    model, py_losses = _fit_in_python()
    np.testing.assert_allclose(r_losses, py_losses, rtol=1e-5)
    from_python = [w.numpy() for w in model.weights]
    model.load_weights(str(weights))
    for fitted_in_r, fitted_in_python in zip(model.weights, from_python):
        np.testing.assert_allclose(fitted_in_r.numpy(), fitted_in_python,
                                   rtol=1e-5, atol=1e-6)
