"""End the process with a one-line message when a guarded call stops answering.

A native call that blocks forever (an envpool batch whose game process has died waits
on a futex that nothing will ever wake) cannot be interrupted from Python: a signal
handler only runs when the call returns. :class:`Watchdog` watches from a daemon thread
instead: each ``with watchdog:`` block arms a deadline ``timeout_s`` ahead and disarms
it on exit; if a block is still running at its deadline, the thread writes ``message``
to stderr and calls ``on_timeout`` (by default ``os._exit(EXIT_CODE)``: the blocked call
holds the interpreter, so nothing gentler can end it). What earlier stages wrote stays
on disk, so the run resumes from its checkpoints.

    watchdog = Watchdog(600, "the env stopped answering; rerun with --resume <dir>")
    with watchdog:
        obs = env.step(actions)
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

EXIT_CODE = 75   # EX_TEMPFAIL: a temporary failure, worth running again


def _exit(_message: str) -> None:
    os._exit(EXIT_CODE)


class Watchdog:
    """Calls ``on_timeout(message)`` (after writing ``message`` to stderr) when a ``with``
    block runs longer than ``timeout_s`` seconds; one daemon thread, started lazily."""

    def __init__(self, timeout_s: float, message: str, on_timeout: Callable[[str], None] = _exit):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s={timeout_s} must be > 0.")
        self.timeout_s, self.message, self._on_timeout = float(timeout_s), message, on_timeout
        self._deadline: float | None = None
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False

    def __enter__(self) -> "Watchdog":
        with self._changed:
            self._deadline = time.monotonic() + self.timeout_s
            if self._thread is None or not self._thread.is_alive():
                self._closing = False
                self._thread = threading.Thread(target=self._watch, name="watchdog", daemon=True)
                self._thread.start()
            self._changed.notify()
        return self

    def __exit__(self, *exc) -> None:
        with self._changed:
            self._deadline = None
            self._changed.notify()

    def close(self) -> None:
        """Stop the watching thread (a later ``with`` block starts it again)."""
        with self._changed:
            self._closing, self._deadline = True, None
            self._changed.notify()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        with self._changed:
            while not self._closing:
                if self._deadline is None:
                    self._changed.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self._deadline = None
                print(self.message, file=sys.stderr, flush=True)
                self._on_timeout(self.message)


__all__ = ["EXIT_CODE", "Watchdog"]
