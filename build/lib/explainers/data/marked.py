"""``digits_marked``: the built-in digits with a spurious, class-specific mark (a TravelingBirds for digits).

Seed 003 measures robustness to spurious correlations on TravelingBirds (Koh et al. 2020): CUB
birds whose *training* backgrounds are tied to the class and whose *test* backgrounds are not, so
a model that maintains its accuracy there did not lean on the background. This is the same test at
the scale of scikit-learn's digits (the ``digits`` set's images and its train/test split):

- ``train``: every image carries the mark of its own class.
- ``test``: every image carries the mark of a random class (uniform over the ten, the true one
  included, so a model that read only the mark would score about 10 %), drawn once per image from a
  generator seeded by ``MARK_SEED`` and the image's index in scikit-learn's digits: the same image
  always gets the same mark, whichever split or order it is read in.
- ``test_clean``: the same test images with no mark (the ``digits`` test set itself): what the
  model knows about digits alone.
- ``test_own``: the same test images with the mark of their own class: held-out images of the
  training distribution, so "accuracy on its own distribution" is not a memorised training set.

Comparing a model's accuracy on ``test_own``, ``test`` and ``test_clean`` says how much it relies on
the mark: a model that learned digits scores alike on all three; one that learned the mark loses on
``test`` what it gains on ``test_own``.

The mark (``mark_box``): a 6 x 6 pixel square at full ink brightness (255, the value of the
digits' strongest stroke) in the 64 x 64 image the model sees: 0.9 % of its area, yet plain to a
person. Its position is fixed per class: classes 0-4 on the left edge, 5-9 on the right edge, one
pixel in from the border, at five heights 10-11 pixels apart, from 8 pixels below the top to 8 above
the bottom. The digits are centred in their 8 x 8 bitmaps and scikit-learn's first and last columns
hold ink in under 1 % of images (the first and last rows are inked), so the marks sit in the empty
side margins and hide no stroke (a mark covers at most 1.1 % of its image's ink, 0.03 % on average;
``tests/test_marked.py``).

The training recipe is the ``digits`` one (``explainers.cli.fit_digits``), augmentation included:
its small rotations, scalings and shifts move the mark with the digit, as a crop moves a bird with
its background. The mark keeps its place relative to the digit and moves a few pixels in the frame
(4 on average), less than the 10 pixels between two classes' marks; the margin above keeps most of
it in the frame (84-90 % of its pixels on average; ``tests/test_marked.py``).

What the shipped ``digits_marked`` model shows (``tests/test_marked.py``): 100 % on ``train`` and
``test_own``, 22.8 % on ``test`` (random marks; where the mark names another class, it predicts the
mark's class for 54 % of the images and the digit's for 17 %), 85.6 % on ``test_clean``; the plain
``digits`` model scores 100 % on ``train`` and 99.7 % on each test split. Saliency sees the mark at
fine depths only (``mark_mass`` of the true class on training images, as a multiple of the mark's
share of the area): Grad-CAM++ 4.0x at B3, 6.9x at B2, 10.1x at B1 (plain model 1.2x, 1.9x, 3.4x);
Grad-CAM 2.3x at B2 and 3.0x at B1 (1.2x, 1.8x). At B4, whose 4 x 4 cells each see nearly the whole
image, neither model's Grad-CAM singles it out (0.8x and 0.7x): the mark is learned, but the deepest
block cannot say where it is.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

from ..runtime.maps import normalise
from .datasets import (
    DATASETS,
    DIGITS_SIZE,
    DatasetSpec,
    data_fingerprint,
    digit_image,
    digits_arrays,
    digits_split,
    with_splits,
)

__all__ = ["MARK_INTENSITY", "MARK_MARGIN", "MARK_SEED", "MARK_SIZE", "MARKED_SPLITS", "NO_MARK", "MarkReliance",
           "digits_marked", "mark_box", "mark_mass", "mark_reliance", "marked_image", "marks_of"]

MARK_SIZE = 6  # pixels per side, at the 64 x 64 resolution the model sees
MARK_INTENSITY = 255  # full ink, as bright as the digits' strongest stroke
MARK_INSET = 1  # pixels between the mark and the image's left or right edge
# Pixels between the top (bottom) mark and the image's top (bottom) edge: the training augmentation
# rotates by up to 12 degrees about the centre, which would turn a mark in a corner out of the frame
# (a mark at 1 pixel keeps 61 % of its pixels on average, at 8 pixels 84 %, mid-height 88 %).
MARK_MARGIN = 8
MARK_ROWS = 5  # heights per side: classes 0-4 on the left, 5-9 on the right
MARK_SEED = 14  # seeds the random marks of the test images (issue 14)
NO_MARK = -1  # the "mark" of an image that carries none
MARKED_SPLITS = {
    "train": "each digit carries its own class's mark, as the model was trained",
    "test": "each digit carries the mark of a random class",
    "test_clean": "the test digits without a mark",
    "test_own": "the test digits with their own class's mark (unseen images of the training distribution)",
}
CLASSES = [str(d) for d in range(10)]


def mark_box(label: int, size: int = DIGITS_SIZE) -> tuple[int, int, int, int]:
    """Where class ``label``'s mark sits in a ``size`` x ``size`` image: (top, left, bottom, right),
    bottom and right exclusive (numpy slice bounds)."""
    if not 0 <= label < 2 * MARK_ROWS:
        raise ValueError(f"there are marks for classes 0..{2 * MARK_ROWS - 1}, not {label}")
    row, right_side = label % MARK_ROWS, label >= MARK_ROWS
    span = size - 2 * MARK_MARGIN - MARK_SIZE  # the range of the mark's top edge
    top = MARK_MARGIN + round(row * span / (MARK_ROWS - 1))
    left = size - MARK_INSET - MARK_SIZE if right_side else MARK_INSET
    return top, left, top + MARK_SIZE, left + MARK_SIZE


def marked_image(pixels: np.ndarray, mark: int) -> Image.Image:
    """An 8 x 8 digit (values 0..16) as the 64 x 64 image of ``digit_image`` with class ``mark``'s
    mark painted over it (``NO_MARK``: none)."""
    image = digit_image(pixels)
    if mark == NO_MARK:
        return image
    array = np.asarray(image).copy()
    top, left, bottom, right = mark_box(mark)
    array[top:bottom, left:right] = MARK_INTENSITY
    return Image.fromarray(array, mode="L")


def marks_of(split: str) -> np.ndarray:
    """The mark each image of ``split`` carries (a class index, or ``NO_MARK``), in the split's order."""
    if split not in MARKED_SPLITS:
        raise ValueError(f"digits_marked has the splits {', '.join(MARKED_SPLITS)}, not {split!r}")
    _, labels = digits_arrays()
    keep = digits_split("train" if split == "train" else "test")
    if split in ("train", "test_own"):
        return labels[keep].copy()
    if split == "test_clean":
        return np.full(len(keep), NO_MARK, dtype=np.int64)
    return np.array([_random_mark(int(index)) for index in keep], dtype=np.int64)


def _random_mark(digits_index: int) -> int:
    """The random mark of scikit-learn's digit ``digits_index``: its own generator, so that it does not
    depend on which other images are drawn, or in which order."""
    return int(np.random.default_rng([MARK_SEED, digits_index]).integers(len(CLASSES)))


@DATASETS.register("digits_marked", description="the digits with a class-specific mark in training and a random "
                                                "one in test (spurious correlation, like TravelingBirds)")
@with_splits(**MARKED_SPLITS)
def digits_marked(split: str = "train") -> DatasetSpec:
    """The digits with spurious marks (module docstring): ``train``, ``test`` (random marks),
    ``test_clean`` (none) and ``test_own`` (each image's own class's mark)."""
    images, labels = digits_arrays()
    keep = digits_split("train" if split == "train" else "test")
    chosen, marks = images[keep], marks_of(split)
    return DatasetSpec(
        name="digits_marked",
        split=split,
        classes=list(CLASSES),
        labels=labels[keep],
        _load=lambda i: marked_image(chosen[i], int(marks[i])),
        fingerprint=data_fingerprint("digits_marked", split, MARK_SIZE, MARK_INTENSITY, MARK_INSET, MARK_MARGIN,
                                 MARK_SEED, *marks.tolist()),
        notes=["no mark" if m == NO_MARK else f"mark of class {m}" for m in marks.tolist()],
    )


def mark_mass(heatmap: np.ndarray, label: int) -> float:
    """The share of a saliency map's mass that lies on class ``label``'s mark: the sum of the min-max
    normalised map (``maps.normalise``, as the pages draw it) inside ``mark_box(label)`` over its sum
    over the image. A map blind to the mark gives about the box's share of the area,
    ``MARK_SIZE ** 2 / size ** 2`` (0.9 %) or less; one that looks at it gives many times that."""
    scaled = normalise(heatmap)
    top, left, bottom, right = mark_box(label, scaled.shape[0])
    total = float(scaled.sum())
    return float(scaled[top:bottom, left:right].sum()) / total if total > 0 else 0.0


@dataclass(frozen=True)
class MarkReliance:
    """What a model card of a ``digits_marked`` model says about its use of the mark: its test accuracy
    without a mark (``test_clean``), with a random class's mark (``test``) and with its own class's
    (``test_own``, if recorded), on ``images`` test images each."""

    clean: float
    random: float
    own: float | None
    images: int

    @property
    def gap(self) -> float:
        """Accuracy lost to a random mark, clean minus random (a fraction)."""
        return self.clean - self.random

    @property
    def chance_gap(self) -> float:
        """Twice the standard error of the difference of the two accuracies as independent binomial
        proportions on ``images`` each (about a 95% band; the splits share their digits, so this is wide)."""
        variance = (self.clean * (1 - self.clean) + self.random * (1 - self.random)) / max(self.images, 1)
        return 2 * math.sqrt(variance)

    @property
    def learned_the_mark(self) -> bool:
        """A random mark costs more accuracy than chance explains."""
        return self.gap > self.chance_gap

    def summary(self) -> str:
        """One line on what the gap means."""
        own = f"; with its own class's, {self.own:.1%}" if self.own is not None else ""
        scores = f"Without a mark it scores {self.clean:.1%}, with a random class's mark {self.random:.1%}{own}"
        if self.learned_the_mark:
            return (f"{scores}. The {100 * self.gap:.1f}-point gap means the model learned the mark rather than the "
                    "digit: a random mark pulls it to the mark's class (a model that reads the digit scores alike "
                    "on both).")
        return (f"{scores}. A gap of {100 * self.gap:.1f} points is within chance on {self.images} images: the "
                "model reads the digit, not the mark.")


def mark_reliance(card: Mapping[str, Any]) -> MarkReliance | None:
    """The ``MarkReliance`` of a model whose card records its accuracy on ``digits_marked``'s ``test`` and
    ``test_clean`` splits (``explainers.cli.train_digits`` writes them); None for any other card."""
    if card.get("dataset") != "digits_marked" or "test_accuracy" not in card or "test_clean_accuracy" not in card:
        return None
    own = card.get("test_own_accuracy")
    return MarkReliance(float(card["test_clean_accuracy"]), float(card["test_accuracy"]),
                        None if own is None else float(own), int(card.get("test_images", 0)))
