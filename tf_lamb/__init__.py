"""tf_lamb: the LAMB optimizer for Keras 3 on TensorFlow."""

from tf_lamb.lamb import Lamb, check_arguments

__version__ = "0.1.0"
__all__ = ["Lamb", "check_arguments", "__version__"]
