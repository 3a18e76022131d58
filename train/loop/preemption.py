"""Stopping a run cleanly on SIGTERM and SIGINT.

A Python signal handler runs only between bytecodes of the main thread,
which sits inside one call of the compiled training loop for up to
--steps_per_loop updates. So the handler is not where the stop happens:
`signal.set_wakeup_fd` makes the interpreter's C-level handler write the
signal's number to a pipe, whichever thread the signal reaches, and a
watcher thread reading that pipe calls `request_stop` at once. The trainer
reads that request after every update, inside the compiled loop, and all
workers agree on it in the update's all-reduce (see train/loop/trainer.py).

Before training, where the main thread waits in Python (for the other
workers of a cluster), `train.runtime.signals.raising_on_signals` is
enough: the handler runs at once and ends the wait with
`errors.Interrupted`.
"""

import os
import signal
import threading

from train.runtime.signals import SIGNALS

# Written to the pipe to end the watcher thread (no signal has number 0).
_QUIT = b"\0"


class StopOnSignals:
    """A context manager: while active, SIGTERM and SIGINT call
    `request_stop()` (from a thread of its own) instead of ending the
    process; `signal_number` is the first signal received, or None.

    It installs nothing when not entered from the main thread (Python only
    lets the main thread set signal handlers); the previous handlers come
    back on exit.
    """

    def __init__(self, request_stop):
        self._request_stop = request_stop
        self.signal_number = None
        self._active = False

    def __enter__(self):
        if threading.current_thread() is not threading.main_thread():
            return self
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)
        self._previous = {number: signal.signal(number, self._on_signal)
                          for number in SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._write_fd,
                                                 warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, daemon=True,
                                        name="stop-on-signals")
        self._thread.start()
        self._active = True
        return self

    def _on_signal(self, number, frame):
        # The watcher thread has acted already; this runs later, in the
        # main thread, and only keeps Python's default action away.
        del frame
        if self.signal_number is None:
            self.signal_number = number

    def _watch(self):
        while True:
            byte = os.read(self._read_fd, 1)
            if not byte or byte == _QUIT:
                return
            if self.signal_number is None:
                self.signal_number = byte[0]
            self._request_stop()

    def __exit__(self, *exc_info):
        if not self._active:
            return False
        self._active = False
        signal.set_wakeup_fd(self._previous_fd)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        os.write(self._write_fd, _QUIT)
        self._thread.join(timeout=10)
        os.close(self._read_fd)
        os.close(self._write_fd)
        return False
