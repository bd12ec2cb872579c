"""``pip install .`` gives the library, the app and the shipped files: the wheel built from pyproject.toml
holds every module of ``explainers`` and ``ui``, ``app.py``, every page, every shipped asset, and the
``protoscope`` command. Built offline (no build isolation: the venv's setuptools)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _setuptools_version() -> tuple[int, ...]:
    try:
        import setuptools
    except ImportError:
        return (0,)
    return tuple(int(part) for part in setuptools.__version__.split(".")[:2] if part.isdigit())


@pytest.mark.skipif(_setuptools_version() < (69,), reason="building the wheel offline needs setuptools >= 69 here")
def test_the_wheel_holds_the_library_the_app_and_the_assets(tmp_path):
    leftovers = [REPO / "build", REPO / "protoscope.egg-info"]
    before = [path.exists() for path in leftovers]
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    for path, existed in zip(leftovers, before):  # setuptools builds in the tree: leave it as it was
        if path.exists() and not existed:
            shutil.rmtree(path)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("protoscope-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    share = next(n.split("/share/protoscope/")[0] for n in names if "/share/protoscope/" in n) + "/share/protoscope/"
    modules = {str(p.relative_to(REPO)) for folder in ("explainers", "ui") for p in (REPO / folder).rglob("*.py")}
    assert modules <= names, sorted(modules - names)[:5]
    app = {share + "app.py", *(share + str(p.relative_to(REPO)) for p in (REPO / "pages").glob("*.py"))}
    assert app <= names, sorted(app - names)
    shipped = {share + str(p.relative_to(REPO)) for p in (REPO / "assets").rglob("*") if p.is_file()}
    assert shipped <= names, sorted(shipped - names)[:5]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "protoscope = explainers.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
    assert not any(n.startswith(("tests/", "benchmarks/")) for n in names)
