"""The wheel is a working clipvg: it carries the committed towers, the run configs and py.typed,
and an installed copy (outside the checkout) answers ``--version`` and finds ``--config demo``
and the towers that config names.

The wheel is built offline from a copy of the sources (no build isolation: the environment's own
setuptools), with uv when it is there, else through setuptools' PEP 517 hook directly.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import clipvg

REPO = Path(__file__).resolve().parents[1]
TOWERS = "clipvg/assets/towers/tiny-synth-v1/open_clip_model.safetensors"


def _uv() -> str | None:
    here = Path(sys.executable).parent / "uv"
    return str(here) if here.exists() else shutil.which("uv")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src, dist = tmp / "src", tmp / "dist"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "MANIFEST.in", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(REPO / "clipvg", src / "clipvg", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    uv = _uv()
    if uv:
        cmd = [uv, "build", "--wheel", "--offline", "--no-build-isolation", "--python", sys.executable,
               "--out-dir", str(dist), str(src)]
    else:
        cmd = [sys.executable, "-c", f"import setuptools.build_meta as b; b.build_wheel({str(dist)!r})"]
        dist.mkdir()
    proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (built,) = dist.glob("clipvg-*.whl")
    return built


def test_wheel_carries_towers_configs_and_py_typed(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (TOWERS, "clipvg/assets/towers/tiny-synth-v1/MODEL_CARD.md", "clipvg/configs/demo.yaml",
                   "clipvg/configs/cluster.yaml", "clipvg/py.typed", "clipvg/cli.py"):
        assert needed in names, needed
    configs = {Path(n).name for n in names if n.startswith("clipvg/configs/")}
    assert configs == {p.name for p in (REPO / "configs").glob("*.yaml")}  # configs/ is the same set
    assert (REPO / "configs").resolve() == (REPO / "clipvg" / "configs").resolve()  # one source of truth
    with zipfile.ZipFile(wheel) as z:
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
        assert z.getinfo(TOWERS).file_size == (REPO / TOWERS).stat().st_size
    assert f"\nVersion: {clipvg.__version__}\n" in meta  # single-sourced from clipvg.__version__
    assert "clipvg = clipvg.cli:main" in entry


def test_installed_wheel_runs_outside_the_checkout(wheel, tmp_path):
    site = tmp_path / "site"
    uv = _uv()
    if uv:
        proc = subprocess.run([uv, "pip", "install", "--offline", "--no-deps", "--python", sys.executable,
                               "--target", str(site), str(wheel)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    else:  # a pure-Python wheel installs by unpacking
        zipfile.ZipFile(wheel).extractall(site)
    probe = (
        "import json, sys, clipvg\n"
        "from importlib.resources import files\n"
        "from clipvg.cli import main\n"
        "from clipvg.config import load_config\n"
        "cfg = load_config('demo')\n"
        "print(json.dumps({'file': clipvg.__file__, 'weights': cfg.model.weights,\n"
        "    'resource': files('clipvg').joinpath('configs/demo.yaml').is_file()}))\n"
        "main(['--version'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}  # before site-packages: the editable install loses
    env.pop("CLIPVG_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    first, version = proc.stdout.strip().splitlines()
    found = json.loads(first)
    assert Path(found["file"]).resolve().is_relative_to(site.resolve())
    assert found["resource"] is True
    assert Path(found["weights"]).resolve() == (site / TOWERS).resolve()
    assert version == f"clipvg {clipvg.__version__}"
