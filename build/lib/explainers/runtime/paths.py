"""Where Protoscope's own files are: the shipped ``assets/`` and the app beside the library.

From a checkout (or ``pip install -e .``) both lie beside the ``explainers`` package; a wheel
(``pip install .``) installs them under ``<prefix>/share/protoscope`` (the data files declared in
``pyproject.toml``). ``$PROTOSCOPE_HOME`` names another such folder.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["ASSETS", "HOME"]


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
