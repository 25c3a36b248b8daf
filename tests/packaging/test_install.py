"""The package as a user gets it: a wheel with kernels/ and configs/ inside, a cheap
import, and a working fallback when the C++ extension is missing."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_python(code: str, *flags: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_import_is_cheap(tmp_path):
    code = "import sys, worldmodels; print(sorted(m for m in ('torch', 'triton') if m in sys.modules))"
    result = run_python(code, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_wheel_installs_kernels_configs_and_extension(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=900,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("worldmodels-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "worldmodels/kernels/__init__.py" in names
    assert "worldmodels/configs/config.yaml" in names
    assert "worldmodels/configs/exp/vae_balls.yaml" in names
    assert any(n.startswith("worldmodels/_C") and n.endswith(".so") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # -S: no site-packages, so neither the checkout nor an editable install can answer.
    code = (
        "import worldmodels, worldmodels.kernels, worldmodels.configs, worldmodels._C as C\n"
        "from importlib.resources import files\n"
        "print(worldmodels.__file__)\n"
        "print(sorted(p.name for p in files('worldmodels.configs').joinpath('exp').iterdir()))\n"
        "print(C.has_openmp())\n"
    )
    result = run_python(code, "-S", cwd=tmp_path, env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    location, experiments, _ = result.stdout.splitlines()
    assert location.startswith(str(site))
    assert "vae_balls.yaml" in experiments
