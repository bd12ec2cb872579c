"""Datasets by name: the built-in ``digits`` and ``samples``, and any ImageFolder.

A dataset is indexable and yields ``(PIL image, int label)``; it also knows its
``classes`` and a ``fingerprint`` that keys caches of anything fitted on it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .images import load_image
from .registry import Registry

DATASETS: Registry = Registry("dataset")

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_SIZE = 64


@dataclass
class DatasetSpec:
    """An indexable list of ``(PIL image, label)`` pairs with its class names."""

    name: str
    split: str
    classes: list[str]
    labels: np.ndarray
    _load: Callable[[int], Image.Image] = field(repr=False)
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range: {self.name} ({self.split}) has {len(self)} images")
        return self._load(int(index) % len(self)), int(self.labels[index])

    def indices_of(self, label: int) -> np.ndarray:
        """Positions of the images of one class."""
        return np.flatnonzero(self.labels == label)


def load_dataset(name_or_path: str, split: str = "train") -> DatasetSpec:
    """Build a dataset by registered name (``digits``, ``samples``) or from an ImageFolder path."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if name_or_path in DATASETS:
        return DATASETS.build(name_or_path, split=split)
    path = Path(name_or_path)
    if path.is_dir():
        return image_folder(path, split)
    raise ValueError(
        f"unknown dataset {name_or_path!r}: use one of {DATASETS.names()} or a folder with one sub-folder per class"
    )


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digits_split(split: str) -> np.ndarray:
    """Indices of scikit-learn's digits in our fixed, stratified train/test split."""
    from sklearn.model_selection import train_test_split

    _, labels = _digits_arrays()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    return np.sort(train if split == "train" else test)


def digit_image(pixels: np.ndarray, size: int = DIGITS_SIZE) -> Image.Image:
    """An 8x8 digit (values 0..16, ink high) as a white-on-black greyscale image of ``size``."""
    small = Image.fromarray(np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
    return small.resize((size, size), Image.BILINEAR)


@DATASETS.register("digits", description="scikit-learn's bundled handwritten digits (8x8, shown at 64x64)")
def digits(split: str = "train") -> DatasetSpec:
    images, labels = _digits_arrays()
    keep = digits_split(split)
    chosen = images[keep]
    return DatasetSpec(
        name="digits",
        split=split,
        classes=[str(d) for d in range(10)],
        labels=labels[keep],
        _load=lambda i: digit_image(chosen[i]),
        fingerprint=_fingerprint("digits", split, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, len(keep)),
    )


SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket", "camera")


@DATASETS.register("samples", description="photographs bundled with scikit-image, for ImageNet models")
def samples(split: str = "train") -> DatasetSpec:
    from skimage import data as skdata

    def load(i: int) -> Image.Image:
        image = Image.fromarray(getattr(skdata, SAMPLE_IMAGES[i])())
        return image.convert("RGB")

    return DatasetSpec(
        name="samples",
        split=split,
        classes=["unlabelled"],
        labels=np.zeros(len(SAMPLE_IMAGES), dtype=np.int64),
        _load=load,
        fingerprint=_fingerprint("samples", *SAMPLE_IMAGES),
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_folder(root: Path, split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> DatasetSpec:
    """A folder with one sub-folder of images per class (torchvision's ImageFolder layout).

    If ``root`` holds ``train/`` and ``test/`` sub-folders they are the split; otherwise a
    deterministic stratified split (``test_fraction``, ``seed``) is made.
    """
    root = Path(root)
    if (root / "train").is_dir() and (root / "test").is_dir():
        files, labels, classes = _scan_classes(root / split)
        keep: Sequence[int] = range(len(files))
    else:
        files, labels, classes = _scan_classes(root)
        keep = _stratified_split(labels, split, test_fraction, seed)
    chosen = [files[i] for i in keep]
    return DatasetSpec(
        name=root.name,
        split=split,
        classes=classes,
        labels=np.asarray([labels[i] for i in keep], dtype=np.int64),
        _load=lambda i: load_image(chosen[i], name=str(chosen[i])).convert("RGB"),
        fingerprint=_fingerprint(str(root.resolve()), split, *(f"{p.name}:{p.stat().st_size}" for p in chosen)),
    )


def _scan_classes(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(label)
    if not files:
        raise ValueError(
            f"no images found in {root}: expected one sub-folder per class holding "
            f"{', '.join(sorted(IMAGE_SUFFIXES))} files"
        )
    return files, labels, classes


def _stratified_split(labels: list[int], split: str, test_fraction: float, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    labels_array = np.asarray(labels)
    chosen: list[int] = []
    for label in np.unique(labels_array):
        members = rng.permutation(np.flatnonzero(labels_array == label))
        n_test = int(round(len(members) * test_fraction)) if len(members) > 1 else 0
        chosen.extend(members[:n_test] if split == "test" else members[n_test:])
    return sorted(int(i) for i in chosen)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
