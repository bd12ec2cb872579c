"""Datasets by name: the built-in ``digits``, ``digits_marked`` (``explainers.data.marked``) and ``photos``, and
any ImageFolder.

A dataset is indexable and yields ``(PIL image, int label)``; it also knows its
``classes`` and a ``fingerprint`` that keys caches of anything fitted on it.
"""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from skimage import data as skdata
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torchvision.models import ResNet18_Weights

from ..runtime.errors import DatasetError, ImageError
from ..runtime.registry import Registry
from .images import MAX_PIXELS, load_image

DATASETS: Registry = Registry("dataset")

DIGITS_SPLIT_SEED = 0
DIGITS_TEST_FRACTION = 0.2
DIGITS_SIZE = 64
FOLDER_LAYOUT = "one sub-folder of images per class, e.g. birds/cardinal/001.jpg and birds/sparrow/002.jpg"


class SkippedFileWarning(UserWarning):
    """Files of an image folder that could not be read and were left out of the dataset."""


@dataclass
class DatasetSpec:
    """An indexable list of ``(PIL image, label)`` pairs with its class names."""

    name: str
    split: str
    classes: list[str]
    labels: np.ndarray
    _load: Callable[[int], Image.Image] = field(repr=False)
    fingerprint: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) of files left out
    names: list[str] = field(default_factory=list)  # what each image is called, when the dataset names them
    notes: list[str] = field(default_factory=list)  # a few words per image worth showing beside it ("mark of class 3")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range: {self.name} ({self.split}) has {len(self)} images")
        return self._load(int(index) % len(self)), int(self.labels[index])

    def indices_of(self, label: int) -> np.ndarray:
        """Positions of the images of one class."""
        return np.flatnonzero(self.labels == label)

    def class_of(self, index: int) -> str | None:
        """The class name of image ``index``, or None when the dataset does not know it (label ``UNLABELLED``)."""
        label = int(self.labels[index])
        return None if label == UNLABELLED else self.classes[label]

    def label_among(self, index: int, classes: Sequence[str]) -> int | None:
        """Image ``index``'s true class as an index into ``classes`` (a model's, matched by name), or None
        when the image has no label or its class is not one of them."""
        name = self.class_of(index)
        names = list(classes)
        return names.index(name) if name is not None and name in names else None


UNLABELLED = -1  # the label of an image whose class the dataset does not know


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k class names, in torchvision's order (its metadata; no download)."""
    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


DEFAULT_SPLITS = {"train": "the images the model was trained on", "test": "held-out images"}


def with_splits(**splits: str) -> Callable[[Callable[..., DatasetSpec]], Callable[..., DatasetSpec]]:
    """Declare the splits a registered dataset builder offers (name = what it holds), when they are not
    ``DEFAULT_SPLITS``: ``load_dataset`` refuses others, the sidebar offers these and explains them."""
    def declare(builder: Callable[..., DatasetSpec]) -> Callable[..., DatasetSpec]:
        builder.splits = dict(splits)  # type: ignore[attr-defined]
        return builder

    return declare


def dataset_splits(name: str) -> dict[str, str]:
    """The splits of a registered dataset, each with what it holds (``DEFAULT_SPLITS`` unless its builder
    declares others with ``with_splits``); an ImageFolder's are ``DEFAULT_SPLITS``."""
    return dict(getattr(DATASETS[name], "splits", DEFAULT_SPLITS)) if name in DATASETS else dict(DEFAULT_SPLITS)


def load_dataset(name_or_path: str, split: str = "train") -> DatasetSpec:
    """Build a dataset by registered name (``digits``, ``digits_marked``, ``photos``) or from an ImageFolder path."""
    splits = dataset_splits(name_or_path)
    if split not in splits:
        named = [repr(s) for s in splits]
        raise DatasetError(f"There is no split {split!r}: use {', '.join(named[:-1])} or {named[-1]}.")
    if name_or_path in DATASETS:
        return DATASETS.build(name_or_path, split=split)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return image_folder(path, split)
    raise DatasetError(_not_a_dataset(str(name_or_path), path))


def _not_a_dataset(given: str, path: Path) -> str:
    """Why ``given`` is neither a built-in dataset nor a folder, in the words of someone who typed a path."""
    builtin = ", ".join(DATASETS.names())
    if path.is_file():
        return f"{given} is a file, not a folder: give the folder that holds {FOLDER_LAYOUT}."
    if "/" in given or "\\" in given or given.startswith((".", "~")):
        resolved = str(path.resolve())
        where = "" if resolved == given else f" (looked for {resolved})"
        return f"The folder {given} does not exist{where}. Give a folder that holds {FOLDER_LAYOUT}."
    return (f"There is no built-in dataset called {given!r} and no folder of that name here: "
            f"use {builtin}, or the path of a folder that holds {FOLDER_LAYOUT}.")


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 handwritten digits (8x8, 0-16) as float32 images and int64 labels."""
    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digits_split(split: str) -> np.ndarray:
    """Indices of scikit-learn's digits in our fixed, stratified train/test split."""
    _, labels = digits_arrays()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels, random_state=DIGITS_SPLIT_SEED
    )
    return np.sort(train if split == "train" else test)


def digit_image(pixels: np.ndarray, size: int = DIGITS_SIZE) -> Image.Image:
    """An 8x8 digit (values 0..16, ink high) as a white-on-black greyscale image of ``size``."""
    small = Image.fromarray(np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8), mode="L")
    return small.resize((size, size), Image.Resampling.BILINEAR)


@DATASETS.register("digits", description="scikit-learn's bundled handwritten digits (8x8, shown at 64x64)")
def digits(split: str = "train") -> DatasetSpec:
    """scikit-learn's digits, split 80/20 by a seeded stratified draw (``digits_split``), shown at 64x64."""
    images, labels = digits_arrays()
    keep = digits_split(split)
    chosen = images[keep]
    return DatasetSpec(
        name="digits",
        split=split,
        classes=[str(d) for d in range(10)],
        labels=labels[keep],
        _load=lambda i: digit_image(chosen[i]),
        fingerprint=data_fingerprint("digits", split, DIGITS_SPLIT_SEED, DIGITS_TEST_FRACTION, len(keep)),
    )


@dataclass(frozen=True)
class Photo:
    """One photograph inside scikit-image's wheel: the ``skimage.data`` function that reads it,
    and its ImageNet-1k class (torchvision's name) where the photo obviously shows one."""

    name: str
    imagenet: str | None = None
    read: Callable[[], np.ndarray] | None = None  # instead of skimage.data.<name>, for a photo of a pair

    def load(self) -> Image.Image:
        pixels = self.read() if self.read is not None else getattr(skdata, self.name)()
        return Image.fromarray(pixels)  # RGB or greyscale (L), as stored; models convert to their own mode


def _motorcycle_left() -> np.ndarray:
    return skdata.stereo_motorcycle()[0]


# The photographs that ship inside scikit-image's wheel (skimage/data/*.png, *.jpg): every one of
# them is read without pooch or a network. Left out: the drawings and synthetic images (logo,
# colorwheel, horse's silhouette, checkerboard, binary_blobs, shepp_logan_phantom), lfw_subset
# (an array of 200 tiny face crops), cat (chelsea again), and those skimage downloads on demand
# (brain, cells3d, eagle, kidney, lily, skin, ...). Everyday scenes first, then textures and
# scientific images.
PHOTOS = (
    Photo("chelsea", "tabby"),
    Photo("coffee", "espresso"),
    Photo("rocket", "missile"),
    Photo("astronaut"),
    Photo("camera", "tripod"),
    Photo("motorcycle", read=_motorcycle_left),
    Photo("clock", "wall clock"),
    Photo("coins"),
    Photo("moon"),
    Photo("page"),
    Photo("text"),
    Photo("brick"),
    Photo("grass"),
    Photo("gravel"),
    Photo("hubble_deep_field"),
    Photo("retina"),
    Photo("immunohistochemistry"),
    Photo("cell"),
    Photo("microaneurysms"),
)


@DATASETS.register("photos", description="photographs inside scikit-image's wheel (offline), ImageNet classes")
def photos(split: str = "train") -> DatasetSpec:
    """scikit-image's bundled photos (one set: ``split`` is ignored), in ``PHOTOS`` order.

    ``classes`` are the 1,000 ImageNet-1k names (torchvision's order, as ImageNet models have
    them); a photo's label is its ImageNet class, or ``UNLABELLED`` (-1) when it shows none.
    ``names`` holds each photo's name.
    """
    classes = list(imagenet_classes())
    return DatasetSpec(
        name="photos",
        split=split,
        classes=classes,
        labels=np.array([classes.index(p.imagenet) if p.imagenet else UNLABELLED for p in PHOTOS], dtype=np.int64),
        _load=lambda i: PHOTOS[i].load(),
        fingerprint=data_fingerprint("photos", *(f"{p.name}:{p.imagenet}" for p in PHOTOS)),
        names=[p.name for p in PHOTOS],
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def image_folder(root: Path, split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> DatasetSpec:
    """A folder with one sub-folder of images per class (torchvision's ImageFolder layout).

    If ``root`` holds ``train/`` and ``test/`` sub-folders they are the split; otherwise a
    deterministic stratified split (``test_fraction``, ``seed``) is made.

    Unreadable files are left out, with a ``SkippedFileWarning`` naming them, and listed in
    ``skipped`` for the dashboard; only when no file of the split is readable is it an
    error. They are found when the folder is indexed, cheaply, so that a fit over thousands
    of images does not decode each one an extra time (the fit itself decodes every image
    once per pass): PIL reads each file's header (format and size, no pixels), and files of
    formats with an end marker (PNG's IEND, JPEG's EOI, GIF's trailer), the ones a broken
    download or copy leaves cut off, are checked for it in their last kilobyte. Only a file
    whose marker is missing is decoded, so one that merely carries data after its end
    (phones append videos to JPEGs) is still used. Damage that neither check can see (the
    middle of a file overwritten) is reported, naming the file, when the image is loaded.
    The split is drawn before the check, so one bad file does not move others between
    train and test, and each split checks only its own files.
    """
    root = Path(root)
    try:
        if (root / "train").is_dir() and (root / "test").is_dir():
            files, labels, classes = _scan_classes(root / split)
            keep: Sequence[int] = range(len(files))
        else:
            files, labels, classes = _scan_classes(root)
            keep = _stratified_split(labels, split, test_fraction, seed)
    except OSError as error:  # a folder that cannot be listed (permissions, a network drive gone)
        raise DatasetError(f"The folder {error.filename or root} cannot be read ({error.strerror or error}): "
                           "check that it exists and that you may read it.") from error
    chosen, chosen_labels, skipped = _readable([files[i] for i in keep], [labels[i] for i in keep], f"{root} ({split})")
    return DatasetSpec(
        name=root.name,
        split=split,
        classes=classes,
        labels=np.asarray(chosen_labels, dtype=np.int64),
        _load=lambda i: _load_for_dataset(chosen[i]),
        fingerprint=data_fingerprint(str(root.resolve()), split, *(f"{p.name}:{p.stat().st_size}" for p in chosen)),
        skipped=skipped,
    )


def _load_for_dataset(path: Path) -> Image.Image:
    try:
        return load_image(path, name=str(path)).convert("RGB")
    except ImageError as error:  # damage the index-time check could not see
        raise ImageError(f"{error} Remove or replace this file in the training folder, then try again.") from error


def _readable(files: list[Path], labels: list[int], where: str) -> tuple[list[Path], list[int], list[tuple[str, str]]]:
    """The files that pass ``_unreadable`` with their labels, and (path, why) of those that do not."""
    kept: list[Path] = []
    kept_labels: list[int] = []
    skipped: list[tuple[str, str]] = []
    for path, label in zip(files, labels):
        reason = _unreadable(path)
        if reason is None:
            kept.append(path)
            kept_labels.append(label)
        else:
            skipped.append((str(path), reason))
    if skipped and not kept:
        raise DatasetError(f"None of the {len(files)} image files in {where} can be read: "
                         f"{_list_skipped(skipped)}. Check that they are images (PNG, JPEG, ...) and not damaged.")
    if skipped:
        warnings.warn(f"{plural(len(skipped), 'unreadable file')} left out of {where}: {_list_skipped(skipped)}",
                      SkippedFileWarning, stacklevel=3)
    return kept, kept_labels, skipped


def _unreadable(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None; reads its header and last kilobyte, decodes
    only a file whose end marker is missing (see ``image_folder``)."""
    try:
        if path.stat().st_size == 0:
            return "the file is empty"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size test below decides
            with Image.open(path) as image:
                width, height = image.size
                kind = image.format
    except UnidentifiedImageError:
        return "not an image that can be read"
    except Image.DecompressionBombError:
        return f"larger than the {MAX_PIXELS / 1e6:.0f} MP limit"
    except (OSError, SyntaxError, ValueError):  # PIL's own words name its internals, not the file's problem
        return "damaged or truncated: its header cannot be read"
    if width * height > MAX_PIXELS:
        return f"{width}x{height} pixels, larger than the {MAX_PIXELS / 1e6:.0f} MP limit"
    if _ends_complete(path, kind):
        return None
    try:
        load_image(path)
    except ImageError:
        return "truncated: the file ends before its image data does"
    return None


END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9", "GIF": b";"}


def _ends_complete(path: Path, kind: str | None) -> bool:
    """False when a format with an end marker lacks it in the file's last kilobyte."""
    marker = END_MARKERS.get(kind or "")
    if marker is None:
        return True
    with path.open("rb") as file:
        file.seek(max(0, path.stat().st_size - 1024))
        return marker in file.read()


def _list_skipped(skipped: list[tuple[str, str]], show: int = 5) -> str:
    listed = "; ".join(f"{path} ({why})" for path, why in skipped[:show])
    return listed + (f"; and {len(skipped) - show} more" if len(skipped) > show else "")


def plural(n: int, noun: str) -> str:
    """``1 class``, ``3 classes``: a count with its noun in the right number."""
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {noun}es" if noun.endswith(("s", "sh", "ch", "x")) else f"{n:,} {noun}s"


def _scan_classes(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(label)
    if not files:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        found = (f"it holds {plural(len(loose), 'image')} but no class sub-folders" if loose and not classes else
                 f"its {plural(len(classes), 'sub-folder')} hold no image files" if classes else "it is empty")
        raise DatasetError(f"No training images in {root}: {found}. Give a folder that holds {FOLDER_LAYOUT} "
                         f"({', '.join(sorted(IMAGE_SUFFIXES))} files).")
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


def data_fingerprint(*parts: object) -> str:
    """A short hash of what defines a dataset (its name, split, files and their sizes): keys every cache."""
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]
