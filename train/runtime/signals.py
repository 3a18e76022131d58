"""SIGTERM and SIGINT while the main thread waits in Python, before
training (for the other workers of a cluster, train/runtime/cluster.py):
`raising_on_signals` ends the wait with `errors.Interrupted` at once.

Training itself stops on them otherwise, through a watcher thread
(train/loop/preemption.py), since the main thread then sits in compiled
code where a Python handler does not run.
"""

import contextlib
import signal
import threading

from train.runtime.errors import Interrupted

# The signals that stop a run, before and during training.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def raising_on_signals(while_doing):
    """While active, SIGTERM and SIGINT raise `Interrupted` (whose message
    says it stopped `while_doing`) in the main thread. For waits in Python
    (sleeps, socket timeouts), which a handler interrupts at once; the
    previous handlers come back on exit. Installs nothing outside the main
    thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(number, frame):
        del frame
        raise Interrupted(number, while_doing)

    previous = {number: signal.signal(number, on_signal)
                for number in SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            # None: a handler set outside Python, which cannot be put back.
            signal.signal(number, signal.SIG_DFL if handler is None
                          else handler)
