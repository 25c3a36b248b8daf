"""The package's layering: no family imports another, and the command-line tools reach
the families only through the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import worldmodels

PACKAGE = Path(worldmodels.__file__).parent
ALGOS = PACKAGE / "algos"
FAMILIES = sorted(p.name for p in ALGOS.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
CLI_TOOLS = ("train.py", "play.py", "play_modes.py", "play_view.py", "record.py", "visualize.py", "compare_openloop.py")


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved, lazy
    imports inside functions included)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def families_in(names: set[str]) -> set[str]:
    return {name.split(".")[2] for name in names
            if name.startswith("worldmodels.algos.") and name.split(".")[2] in FAMILIES}


def test_the_walker_sees_relative_and_lazy_imports(tmp_path):
    folder = PACKAGE / "algos" / "iris"
    names = imported_modules(folder / "agent.py")
    assert "worldmodels.rl.imagination_agent" in names and "worldmodels.algos.iris.world_model" in names
    assert families_in({"worldmodels.algos.dreamerv3.collect", "worldmodels.algos.registry"}) == {"dreamerv3"}


def test_no_family_imports_another():
    assert {"dreamerv3", "iris", "delta_iris", "vta", "vae"} <= set(FAMILIES)
    crossings = []
    for family in FAMILIES:
        for path in sorted((ALGOS / family).rglob("*.py")):
            others = families_in(imported_modules(path)) - {family}
            crossings.extend(f"{path.relative_to(PACKAGE)} imports {other}" for other in sorted(others))
    assert not crossings, "\n".join(crossings)


def test_cli_tools_reach_families_only_through_the_registry():
    reaching = []
    for name in CLI_TOOLS:
        families = families_in(imported_modules(PACKAGE / name))
        reaching.extend(f"{name} imports {family}" for family in sorted(families))
    assert not reaching, "\n".join(reaching)


def test_shared_layers_import_no_family():
    for layer in ("rl", "envs", "data", "training", "nn", "ops"):
        for path in sorted((PACKAGE / layer).rglob("*.py")):
            assert not families_in(imported_modules(path)), f"{path.relative_to(PACKAGE)} imports a family"
