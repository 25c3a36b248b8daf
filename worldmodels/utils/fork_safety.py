"""Make a process safe for native code that forks from several threads at once.

envpool's VizDoom starts one game process per env with ``fork()``, from the threads of
its init pool, several at a time. Every OpenBLAS loaded in the process (numpy's and
scipy's wheels each bring one; ``cma`` imports scipy) registers a fork handler,
``blas_thread_shutdown_``, that joins OpenBLAS's worker threads. Two forks at once run
it concurrently, which OpenBLAS does not make safe (its issues 2270 and 3111 report the
race): in a hung process the second fork's handler waits forever in ``pthread_join``,
that env's game never starts, and ``envpool.make`` waits for it. Measured on a 2-core
machine with the bundled wheels: with scipy's OpenBLAS loaded, 15 of 24 processes
making 8 TakeCover-v1 envs hung (6 and 9 in two sets of 12); after
:func:`stop_openblas_threads`, 0 of 12.

:func:`stop_openblas_threads` runs that same shutdown once, in the calling thread,
before the forks: the handlers then find no workers and return at once. OpenBLAS starts
its workers again on its next threaded call, as it does after any fork.
"""

from __future__ import annotations

import ctypes
from pathlib import Path


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; [] elsewhere)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    paths = {line.split(None, 5)[-1] for line in maps if len(line.split(None, 5)) == 6}
    return sorted(p for p in paths if "openblas" in Path(p).name.lower())


def stop_openblas_threads() -> int:
    """Join the worker threads of every loaded OpenBLAS now (``blas_thread_shutdown_``);
    returns how many libraries were shut down. Safe to call any number of times."""
    stopped = 0
    for path in loaded_openblas():
        shutdown = getattr(ctypes.CDLL(path), "blas_thread_shutdown_", None)
        if shutdown is not None:
            shutdown()
            stopped += 1
    return stopped


__all__ = ["loaded_openblas", "stop_openblas_threads"]
