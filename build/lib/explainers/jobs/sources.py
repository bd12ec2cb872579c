"""Which images a job works on: files, a folder of them (any depth), or a built-in dataset's split.

Every image gets a ``name`` that is unique in the job and safe as a file name (its path relative to the
folder, with ``/`` as ``__``), and a reference that a worker in another process (a Ray actor) can load it
from on its own: a path, or a dataset name, split and index. Nothing is decoded when the job is listed:
a file that cannot be read is found by the worker that loads it, reported, and left out of the results.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from ..data import DATASETS, IMAGE_SUFFIXES, load_dataset, load_image
from ..runtime import DatasetError, ImageError

__all__ = ["ImageRef", "list_images", "load_ref"]



@dataclass(frozen=True)
class ImageRef:
    """One image of a job: ``name`` (unique, a file name), and where to read it: ``path``, or ``dataset``,
    ``split`` and ``index`` of a built-in dataset. ``label`` is the class index its dataset gives it
    (-1: none known)."""

    name: str
    path: str | None = None
    dataset: str | None = None
    split: str = "test"
    index: int = 0
    label: int = -1


def list_images(sources: Sequence[str | Path], split: str = "test") -> list[ImageRef]:
    """The images of ``sources``: image files, folders (every image file below them, sorted), or the name of
    a built-in dataset (its ``split``). A ``DatasetError`` says what was wrong when nothing can be used."""
    refs: list[ImageRef] = []
    for source in sources:
        text = str(source)
        if text in DATASETS.names() and not Path(text).exists():
            dataset = load_dataset(text, split)
            refs.extend(ImageRef(f"{text}-{split}-{i:06d}", dataset=text, split=split, index=i,
                                 label=int(dataset.labels[i])) for i in range(len(dataset)))
            continue
        path = Path(text).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise DatasetError(f"{path} holds no image files ({', '.join(IMAGE_SUFFIXES)}), in it or below")
            refs.extend(ImageRef(_name(p.relative_to(path)), path=str(p)) for p in files)
        elif path.is_file():
            refs.append(ImageRef(_name(Path(path.name)), path=str(path)))
        else:
            builtin = ", ".join(DATASETS.names())
            raise DatasetError(f"{text} is neither an image file, a folder nor a built-in dataset ({builtin})")
    seen: dict[str, int] = {}
    for ref in refs:
        seen[ref.name] = seen.get(ref.name, 0) + 1
    twice = [name for name, count in seen.items() if count > 1]
    if twice:
        raise DatasetError(f"two images are both called {twice[0]}: give each file once, or their folders")
    if not refs:
        raise DatasetError("no images were given")
    return refs


def _name(relative: Path) -> str:
    return "__".join(relative.parts)


_DATASETS: dict[tuple[str, str], object] = {}


def load_ref(ref: ImageRef) -> Image.Image:
    """The image ``ref`` names, decoded; an unreadable file raises ``ImageError`` naming it."""
    if ref.path is not None:
        return load_image(ref.path, name=ref.path)
    assert ref.dataset is not None
    key = (ref.dataset, ref.split)
    if key not in _DATASETS:
        _DATASETS[key] = load_dataset(ref.dataset, ref.split)
    dataset = _DATASETS[key]
    try:
        return dataset[ref.index][0]  # type: ignore[index]
    except IndexError as error:
        raise ImageError(f"{ref.name}: {error}") from error
