"""``worldmodels.utils.host_memory``: the mallopt settings take effect where glibc is.

Each check of the settings runs in a fresh interpreter: ``mallopt`` changes the whole
process, and glibc's adaptive default cannot be restored inside one. Their effect on a
training update (page faults, seconds) is a benchmark figure:
``benchmarks/probe_host_memory.py``.
"""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from worldmodels.training.schema import COMMON

PROBE = """
import sys
from worldmodels.utils import host_memory
print(host_memory.retain_freed_memory(), host_memory.release_freed_memory(), host_memory._mallopt() is not None)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="mallopt's parameters are glibc's")
def test_both_settings_take_effect_with_glibc():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True"]


def test_without_glibc_nothing_is_changed(monkeypatch):
    from worldmodels.utils import host_memory

    monkeypatch.setattr(host_memory, "_mallopt", lambda: None)
    assert host_memory.retain_freed_memory() is False and host_memory.release_freed_memory() is False


def test_the_training_loop_setting_has_a_schema_rule():
    rule = COMMON["train.retain_host_memory"]
    assert rule.accepts(True) and rule.accepts(False) and not rule.accepts("yes")
