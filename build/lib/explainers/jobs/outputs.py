"""A job's output folder: what it was made with, which images are complete, and writing files whole.

Each file is written under a temporary name and renamed into place (``write_file``), so a file that
exists is complete, whatever stopped the job (Ctrl-C, a killed worker, a full disk). An image counts as
done when its last file, the record that lists its results, exists: the next run of the same job skips
it. ``job.json`` says what the folder holds (the command and every setting that changes a result); a run
with other settings refuses the folder unless told to ``overwrite`` it, and never touches files it did
not write.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from ..fitted import store
from ..runtime import UserInputError

__all__ = ["JOB_FILE", "OutputFolder", "write_bytes", "write_file", "write_text"]

JOB_FILE = "job.json"


def write_file(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary)``, then rename it to ``path``: a reader sees the whole file or none."""
    def written(temporary: Path) -> None:
        write(temporary)

    store.write_atomically(path, written)


def write_bytes(path: Path, data: bytes) -> None:
    """``data`` to ``path``, whole or not at all."""
    write_file(path, lambda temporary: temporary.write_bytes(data))


def write_text(path: Path, text: str) -> None:
    """``text`` to ``path``, whole or not at all."""
    write_file(path, lambda temporary: temporary.write_text(text))


class OutputFolder:
    """The folder ``root`` of one job, described by ``settings`` (JSON-able): made if missing, resumed if it
    holds the same job, refused if it holds another one or other files, unless ``overwrite`` (then this
    job's own sub-folders ``parts`` are emptied; files this command did not write are left alone).

    Checked when made, written by ``create``: a job checks everything else (its engine's cluster answers)
    before it writes anything."""

    def __init__(self, root: Path, settings: dict[str, Any], parts: tuple[str, ...], overwrite: bool = False) -> None:
        self.root = Path(root)
        self.settings = json.loads(json.dumps(settings, default=str))
        if self.root.exists() and not self.root.is_dir():
            raise UserInputError(f"{self.root} is a file: give a folder for the outputs")
        found = self._recorded()
        self.replace = self.root.is_dir() and any(self.root.iterdir()) and found != self.settings
        self.parts = parts
        if self.replace and not overwrite:
            why = ("holds the outputs of another job (other settings)" if found is not None
                   else "is not empty and holds no job of this command")
            raise UserInputError(f"the output folder {self.root} {why}: add --overwrite to replace them, or "
                                 "choose a new folder (the same command with the same settings resumes)")

    def create(self) -> "OutputFolder":
        """Make the folder (emptying another job's parts when ``overwrite`` allowed it) and record this job."""
        if self.replace:
            for part in self.parts:
                shutil.rmtree(self.root / part, ignore_errors=True)
            (self.root / JOB_FILE).unlink(missing_ok=True)
            self.replace = False
        self.root.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.settings, indent=1, sort_keys=True) + "\n"
        write_file(self.root / JOB_FILE, lambda temporary: temporary.write_text(text))
        return self

    def _recorded(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / JOB_FILE).read_text())
        except (OSError, ValueError):
            return None

    def path(self, *parts: str) -> Path:
        """A path inside the folder."""
        return self.root.joinpath(*parts)
