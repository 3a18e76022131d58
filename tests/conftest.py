import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests import their NumPy reference as a sibling module.
sys.path.insert(0, os.path.dirname(__file__))
