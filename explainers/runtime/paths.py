"""Where Protoscope's own files are: the shipped ``assets/`` and the app beside the library.

From a checkout (or ``pip install -e .``) both lie beside the ``explainers`` package; a wheel
(``pip install .``) installs them under ``<prefix>/share/protoscope`` (the data files declared in
``pyproject.toml``). ``$PROTOSCOPE_HOME`` names another such folder.
"""
from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Callable

__all__ = ["ASSETS", "HOME", "cache_dir", "temporary_path", "write_atomically"]


def _home() -> Path:
    named = os.environ.get("PROTOSCOPE_HOME")
    if named:
        return Path(named)
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "assets").is_dir():
        return checkout
    installed = Path(sys.prefix) / "share" / "protoscope"
    return installed if (installed / "assets").is_dir() else checkout


HOME = _home()  # the folder that holds app.py, pages/ and assets/
ASSETS = HOME / "assets"


def cache_dir() -> Path:
    """Where what is computed once is kept on this machine (fits, features, CLIP's zero-shot heads):
    ``$PROTOSCOPE_CACHE`` or ``.cache/`` beside the project."""
    root = os.environ.get("PROTOSCOPE_CACHE")
    return Path(root) if root else ASSETS.parent / ".cache"


def temporary_path(path: Path) -> Path:
    """A name to write ``path`` under before renaming it into place: unique per process and thread,
    so that two writers of the same file never write into one temporary file."""
    return path.with_name(f".{path.stem}.{os.getpid()}-{threading.get_ident()}.tmp{path.suffix}")


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary)`` then rename it to ``path``: a half-written file is never read back."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_path(path)
    try:
        write(temporary)
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
