"""The watchdog: a guarded block past its deadline ends the process with one line."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from worldmodels.utils.watchdog import EXIT_CODE, Watchdog


def _recorder() -> tuple[list[str], threading.Event, callable]:
    calls: list[str] = []
    fired = threading.Event()

    def on_timeout(message: str) -> None:
        calls.append(message)
        fired.set()

    return calls, fired, on_timeout


def test_a_block_past_its_deadline_fires_once_with_the_message(capsys):
    calls, fired, on_timeout = _recorder()
    watchdog = Watchdog(0.05, "the env stopped answering", on_timeout)
    with watchdog:
        assert fired.wait(5.0)
        time.sleep(0.2)   # still inside: it fires once per armed block, not again
    watchdog.close()
    assert calls == ["the env stopped answering"]
    assert capsys.readouterr().err == "the env stopped answering\n"


def test_blocks_that_finish_in_time_never_fire():
    calls, fired, on_timeout = _recorder()
    watchdog = Watchdog(0.2, "stalled", on_timeout)
    for _ in range(20):   # each block re-arms the deadline: 20 x 0.02 s is well past 0.2 s in all
        with watchdog:
            time.sleep(0.02)
    time.sleep(0.4)       # disarmed between and after the blocks
    watchdog.close()
    assert not fired.is_set() and calls == []


def test_a_slow_block_after_fast_ones_fires():
    calls, fired, on_timeout = _recorder()
    watchdog = Watchdog(0.1, "stalled", on_timeout)
    with watchdog:
        pass
    with watchdog:
        assert fired.wait(5.0)
    watchdog.close()
    assert calls == ["stalled"]


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout_s=0 must be > 0"):
        Watchdog(0, "stalled")


def test_by_default_it_ends_a_process_blocked_in_a_call_that_holds_the_interpreter():
    script = ("import time\nfrom worldmodels.utils.watchdog import Watchdog\n"
              "with Watchdog(0.2, 'blocked: rerun with --resume'):\n"
              "    time.sleep(60)\n"
              "print('not reached')\n")
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - start < 20
    assert done.returncode == EXIT_CODE
    assert done.stderr.strip() == "blocked: rerun with --resume" and "not reached" not in done.stdout


def test_close_ends_the_thread_and_a_later_block_watches_again():
    calls, fired, on_timeout = _recorder()
    watchdog = Watchdog(0.1, "stalled", on_timeout)
    before = set(threading.enumerate())
    with watchdog:
        pass
    watching = set(threading.enumerate()) - before
    watchdog.close()
    assert len(watching) == 1 and not watching.pop().is_alive()
    with watchdog:
        assert fired.wait(5.0)
    watchdog.close()
    assert calls == ["stalled"]
