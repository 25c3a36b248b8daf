"""Ctrl-C during training: stop between steps, and never inside a checkpoint write.

:class:`StopRequest` turns the first SIGINT into a request that the loop honours once
the current step is complete (so ``last.pt`` holds the state as of that step, and a
resumed run continues exactly); a second SIGINT while the step still runs quits at
once, without saving. :func:`sigint_deferred` holds SIGINT back while a block runs
(an atomic checkpoint write) and delivers it when the block ends.

Both only act in the main thread, where Python runs signal handlers, and leave an
ignored SIGINT ignored (a job a script started in the background); elsewhere they do
nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator


class TrainingInterrupted(KeyboardInterrupt):
    """The run stopped on Ctrl-C; the message says what was saved and how to resume."""


def _handles_sigint() -> bool:
    """Whether this thread may take over SIGINT: the main thread, SIGINT not ignored."""
    in_main = threading.current_thread() is threading.main_thread()
    return in_main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN


def _restore(previous) -> None:
    """Reinstall ``previous`` (None: a handler not set from Python, replaced by the default)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)


class StopRequest:
    """While active, the first SIGINT sets :attr:`requested` and calls ``notify``; a second
    one raises :class:`KeyboardInterrupt`, unless :meth:`finishing` was called (the loop
    is already saving and stopping), after which further signals are ignored."""

    def __init__(self, notify: Callable[[], None] = lambda: None):
        self.requested = False
        self._finishing = False
        self._notify = notify
        self._installed = False
        self._previous = None

    def install(self) -> StopRequest:
        """Take over SIGINT (main thread only); returns self."""
        if not self._installed and _handles_sigint():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def uninstall(self) -> None:
        """Give SIGINT back to the handler it had before :meth:`install`."""
        if self._installed:
            _restore(self._previous)
            self._installed = False

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def finishing(self) -> None:
        """From now on a SIGINT changes nothing: the run is saving and stopping."""
        self._finishing = True

    def _handle(self, signum, frame) -> None:
        if self._finishing:
            return
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self._notify()


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Run the block with SIGINT held back; a SIGINT that arrived meanwhile is raised
    again, to whichever handler was installed before, once the block has finished."""
    if not _handles_sigint():
        yield
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        _restore(previous)
        if pending:
            signal.raise_signal(signal.SIGINT)
