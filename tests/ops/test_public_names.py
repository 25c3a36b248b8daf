"""``from worldmodels.ops import <name>`` gives the documented op, never a submodule.

Each check runs in a fresh interpreter: which submodules are already loaded decides
what a lazy package attribute resolves to, so an in-process check could pass by luck.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import worldmodels.ops as ops

README = Path(__file__).resolve().parents[2] / "README.md"

CHECK = """
import inspect, sys, types
names = sys.argv[1:]
for name in names:
    obj = getattr(__import__("worldmodels.ops", fromlist=[name]), name)
    if isinstance(obj, types.ModuleType) or not callable(obj):
        print(f"BAD {name}: {obj!r}")
    elif getattr(obj, "__name__", name) != name:
        print(f"BAD {name}: resolves to {obj.__name__}")
print("checked", len(names))
"""


def readme_ops() -> list[str]:
    """The backticked names in the first column of the README's op table."""
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| op | what | paths |"))
    names = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        names += re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", line.split("|")[1])
    return names


def run_check(prelude: str, names: list[str]) -> str:
    code = prelude + "\n" + CHECK
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_readme_table_names_exported_ops():
    documented = readme_ops()
    assert {"vq", "attention", "gru_scan", "boundary_sample"} <= set(documented)
    assert set(documented) <= set(ops.__all__)


def test_every_exported_name_imports_as_what_it_documents():
    # sorted order loads e.g. the vq submodule (for VQOutput) before the op vq is asked for
    out = run_check("", sorted(set(ops.__all__) | set(readme_ops())))
    assert "BAD" not in out, out
    assert f"checked {len(set(ops.__all__))}" in out


@pytest.mark.parametrize("name", sorted(n for n in ops.__all__ if ops._EXPORTS[n] == n))
def test_an_op_named_like_its_module_imports_alone_in_a_fresh_process(name):
    out = run_check("", [name])
    assert "BAD" not in out, out


def test_the_op_wins_after_its_module_was_imported_by_the_nn_layers():
    out = run_check("import worldmodels.nn.vq, worldmodels.nn.transformer", ["vq", "attention"])
    assert "BAD" not in out, out
