"""tf_lamb: the LAMB optimizer for Keras 3 on TensorFlow.

`Lamb` is the Keras optimizer (`tf_lamb.lamb`); `check_arguments` applies
its argument rules without building one. The formulas are in
`tf_lamb.algorithm`, the compiled step in `tf_lamb.compiled`.
"""

# First: without TensorFlow (or with one too old) this raises the ImportError
# that says what to install, not Keras' error from deep inside its import.
from tf_lamb import framework  # noqa: F401  isort: skip
from tf_lamb.arguments import check_arguments
from tf_lamb.lamb import Lamb

__version__ = "0.1.0"
__all__ = ["Lamb", "check_arguments", "__version__"]
