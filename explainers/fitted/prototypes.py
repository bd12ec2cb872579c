"""k-means prototypes of a frozen CNN: KMEx and the multi-depth explainer of seed 000.

"Post-hoc Self-explanation of CNNs" (Boubekki & Clemmensen, 2026):
- KMEx (sec. 3.2): per class, K/C prototypes by k-means on the pooled embeddings z of the
  training set; an image gets the class of its nearest prototype (the argmax of
  exp(-||z - p_k||^2)).
- Multi-depth explainer (sec. 3.3, eq. 6-10): the outputs x^(b) of the blocks used are
  upsampled (bilinear) to the resolution R' of the shallowest one (eq. 7), each pixel
  vector is divided by D_b times its norm and the blocks are concatenated into h-check
  (eq. 8); per class, K/C prototypes by k-means on the rows of h-check of that class's
  images; every pixel goes to its nearest prototype (eq. 9: the explanation map) and the
  class whose prototypes own the most pixels is the prediction (eq. 10).
- Gradient-free attribution (eq. 11 and the three steps after it): at the last block
  att(h_wh, c_j) = h_wh . c_j / ||c_j||^2; one block shallower, upsample the map and give
  each pixel the mean over its segment of the explanation map at that depth.

``fit_prototypes`` returns a fitted ``PrototypeExplainer`` (scikit-learn style: ``__init__``
only stores the settings, ``fit`` validates them and the model and data, learned attributes end
with ``_``), cached on disk by model and dataset fingerprints and settings. Two tiers are read
(``explainers.fitted.store``): ``.cache/prototypes/`` (written by fits on this machine), then
``assets/prototypes/`` (read-only: the built-in digits model's fits at the pages' default
settings, shipped so that the prototype pages open in seconds on a fresh machine;
``python -m explainers.cli prototypes digits`` reproduces them). Both are keyed by the same
fingerprints, so a shipped file is simply never found once the weights, the data or the fitting
code (``CACHE_VERSION``) change. ``PrototypeRecipe`` is how the store keeps one fitted explainer
in memory for every session and page (``explainers.methods.kmeans_attribution.fitted``).

A dataset's classes are matched to the model's by name (``class_map``): a folder with
sub-folders "3" and "7" fits the digits model's classes 3 and 7; a folder whose class names
the model does not have is refused, naming both lists.
"""
from __future__ import annotations

import hashlib
import json
import numbers
import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from ..data.datasets import DatasetSpec, plural
from ..engine.trace import trace
from ..models import BLOCK_NAMES, ModelSpec
from ..models.inputs import as_batch
from ..runtime.errors import DatasetError, UserInputError
from ..runtime.maps import upsample
from ..runtime.progress import Progress, report_fraction, scaled
from .features import LOGITS, FeatureCache, memory_budget
from .store import ASSETS, Key, made, write_atomically

DEPTHS = ("pooled", "B4", "B34", "B234", "B1234")
CACHE_VERSION = 4  # 3: features streamed from a float16 cache, rows drawn per image; 4: one k-means++ start
# k-means++ starts per class: scikit-learn's own default for k-means++ ("auto" = 1). Three cost 4.5x the time
# (3.35 s against 0.74 s for one CUB-shaped class at B234: 20,000 rows of 896 dims, K = 10) for an inertia
# 0.16% lower; at CUB's 200 classes that is 11 minutes of a refit against 2.5.
KMEANS_INITS = 1
EPSILON = 1e-12
KMEANS_WORKERS = max(1, min(2, os.cpu_count() or 1))  # classes clustered at once, one thread each
PATCH_BYTES = 400  # a Patch in memory (a dataclass of 7 fields and a tuple), for the store's bound
KIND = "prototypes"  # the store's kind, and the folder of the disk tiers: .cache/prototypes/, assets/prototypes/
# Read-only second tier of the disk cache: fitted files shipped with Protoscope (see the module docstring).
SHIPPED = ASSETS / KIND


class NotFittedError(RuntimeError):
    """``predict`` or ``explain`` called before ``fit``."""


# --- classes ------------------------------------------------------------------------------------

def quoted(names: Sequence[str], limit: int = 12) -> str:
    """'a', 'b', 'c' ... (N in all): class names for a message."""
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _nameless(model: ModelSpec) -> bool:
    """A model whose class names are only its indices ("0", "1", ...) and that has no known
    training set: a checkpoint saved without names. Its classes are the folder's in sorted order."""
    return model.dataset is None and list(model.classes) == [str(i) for i in range(model.num_classes)]


def class_map(model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
    """The model's class of each of the dataset's classes (index: the dataset's label).

    By name when every class of the dataset is one of the model's (all of them or a subset:
    a folder "3", "7" for the digits model gives [3, 7]); by position when the model has no
    class names (a checkpoint saved without them) and the counts agree (torchvision's
    ImageFolder convention: classes are the sub-folders in sorted order). Anything else is
    refused with both class lists, as fitting would silently give the folder's classes the
    wrong labels.
    """
    names = list(dataset.classes)
    index = {name: i for i, name in enumerate(model.classes)}
    if all(name in index for name in names):
        return np.array([index[name] for name in names], dtype=np.int64)
    if _nameless(model) and len(names) == model.num_classes:
        return np.arange(len(names), dtype=np.int64)
    unknown = [name for name in names if name not in index]
    hint = (f"{len(names)} classes for {model.num_classes}" if _nameless(model) else
            f"{model.name} has no class {quoted(unknown, 5)}")
    raise DatasetError(
        f"The classes of {dataset.name} ({quoted(names)}) are not the classes of {model.name} "
        f"({quoted(list(model.classes))}): {hint}. Give a folder with one sub-folder per class named as the "
        f"model's classes (all of them, or some)" + ("; or the one the model was trained on." if _nameless(model) else ".")
    )


def model_labels(model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
    """The dataset's labels as the model's class indices (see ``class_map``)."""
    mapping = class_map(model, dataset)
    return mapping[dataset.labels] if len(dataset.labels) else dataset.labels.copy()


def check_classes(model: ModelSpec, dataset: DatasetSpec, per_class: int, pooled_embedding: bool) -> np.ndarray:
    """The dataset's labels in the model's classes, after checking that every class of the
    dataset has images, and (KMEx: one embedding per image) at least ``per_class`` of them."""
    labels = model_labels(model, dataset)
    images = np.bincount(dataset.labels, minlength=len(dataset.classes))
    empty = [dataset.classes[i] for i in np.flatnonzero(images == 0)]
    if empty:
        skipped = getattr(dataset, "skipped", None)
        why = f" ({len(skipped)} unreadable files were left out)" if skipped else ""
        raise DatasetError(
            f"{'Class' if len(empty) == 1 else 'Classes'} {quoted(empty)} of {dataset.name} "
            f"{'has' if len(empty) == 1 else 'have'} no {dataset.split} images{why}: add images to "
            f"{'its sub-folder' if len(empty) == 1 else 'their sub-folders'}, or remove "
            f"{'it' if len(empty) == 1 else 'them'} from the folder.")
    if pooled_embedding:
        few = [i for i in range(len(dataset.classes)) if images[i] < per_class]
        if few:
            listed = ", ".join(f"'{dataset.classes[i]}' ({plural(int(images[i]), 'image')})" for i in few[:8])
            most = int(min(images[i] for i in few))
            raise DatasetError(
                f"{'Class' if len(few) == 1 else 'Classes'} {listed}{', ...' if len(few) > 8 else ''} "
                f"{'has' if len(few) == 1 else 'have'} fewer training images than the {per_class} prototypes per "
                f"class asked (KMEx gives each prototype at least one image): choose at most {most} prototypes "
                f"per class (K/C), or add images to {'that class' if len(few) == 1 else 'those classes'}.")
    return labels


def depth_blocks(depth: str, model: ModelSpec | None = None) -> tuple[str, ...]:
    """``"B234"`` -> ``("B2", "B3", "B4")``; ``"pooled"`` -> ``("B4",)`` (z is B4 averaged)."""
    if depth == "pooled":
        return (BLOCK_NAMES[-1],)
    if (not isinstance(depth, str) or not depth.startswith("B") or not depth[1:].isdigit()
            or depth[1:] != "".join(sorted(set(depth[1:])))):
        raise UserInputError(f"depth must be 'pooled' or blocks in increasing order such as {', '.join(DEPTHS[1:])}, "
                             f"not {depth!r}")
    blocks = tuple(f"B{digit}" for digit in depth[1:])
    if model is not None:
        missing = [b for b in blocks if b not in model.blocks]
        if missing:
            raise UserInputError(f"{model.name} has no block {', '.join(missing)} (it has {', '.join(model.blocks)}): "
                                 f"choose a depth of its blocks, such as {', '.join(DEPTHS)}")
    return blocks


def suffix_depths(depth: str) -> list[str]:
    """The chain of explainers the attribution walks through, deepest first: B234 -> [B34, B234].

    The last block itself needs none (eq. 11 is evaluated there directly), so B4 -> [B4]
    keeps the B4 segments for display only.
    """
    digits = depth[1:]
    return ["B" + digits[i:] for i in range(len(digits) - 1, -1, -1) if len(digits) - i >= 2] or [depth]


# --- features -----------------------------------------------------------------------------------

def hcheck(activations: dict[str, torch.Tensor], blocks: Sequence[str]) -> torch.Tensor:
    """Eq. 7-8: upsample each block to the shallowest block's resolution, divide every pixel
    vector by D_b * ||u_r^(b)||, concatenate. Returns (N, h', w', sum_b D_b).

    An all-zero pixel (every channel switched off by ReLU) stays zero rather than dividing by 0.
    """
    size = tuple(activations[blocks[0]].shape[-2:])
    parts = []
    for block in blocks:
        u = upsample(activations[block], size)
        norm = u.norm(dim=1, keepdim=True).clamp_min(EPSILON)
        parts.append((u / (u.shape[1] * norm)).permute(0, 2, 3, 1))
    return torch.cat(parts, dim=-1)  # concatenated straight into (N, h', w', D) order: rows without a copy


def pooled(activations: dict[str, torch.Tensor]) -> torch.Tensor:
    """z = avg.pool(h) (eq. 2): the embedding the linear classifier reads."""
    return activations[BLOCK_NAMES[-1]].mean(dim=(2, 3))


def batches(model: ModelSpec, dataset: DatasetSpec, batch_size: int = 128) -> Iterator[tuple[int, torch.Tensor]]:
    """(start index, transformed image batch) over a dataset, in order."""
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield start, torch.stack([model.transform(dataset[i][0]) for i in range(start, stop)])


def block_activations(model: ModelSpec, inputs: torch.Tensor, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The blocks' outputs for ``inputs``, on the CPU, where the prototypes are."""
    with torch.inference_mode():
        return on_cpu(trace(model, inputs, blocks=list(blocks)).activations)


def on_cpu(activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Block outputs moved to the CPU: the fitted prototypes live there as numpy arrays (k-means is
    scikit-learn's), and one image's activations are small beside the network's pass on its device."""
    return {name: values.cpu() for name, values in activations.items()}


def embeddings(model: ModelSpec, dataset: DatasetSpec, batch_size: int = 128,
               progress: Progress | None = None, features: FeatureCache | None = None) -> np.ndarray:
    """Pooled embeddings z (N, D) of a whole dataset (eq. 2), from the feature cache of B4 (computed
    once per model and data, shared with the prototype fits; ``features``: another cache to use)."""
    cache = features if features is not None else FeatureCache(model, dataset)
    try:
        cache.ensure([BLOCK_NAMES[-1], LOGITS], _stage(progress, 0.0, 1.0, 1, "embedding images"), batch_size)
        out = [block.mean(axis=(2, 3)) for _, arrays in cache.chunks([BLOCK_NAMES[-1]], np.arange(len(dataset)), 2 ** 26)
               for block in arrays.values()]
    finally:
        if features is None:
            cache.close()
    return np.concatenate(out).astype(np.float32)


# --- fitted state -------------------------------------------------------------------------------

@dataclass
class Patch:
    """The training pixel (row of h-check) closest to one prototype, and where it is."""

    prototype: int
    image: int          # index in the training dataset
    row: int            # cell at R' (row-major); 0 for KMEx
    col: int
    distance: float
    segment: int        # the prototype that pixel is assigned to (eq. 9); usually ``prototype``
    box: tuple[int, int, int, int]  # left, top, right, bottom in input pixels


@dataclass
class Level:
    """One k-means explainer at one depth: its prototypes and their nearest training patches."""

    depth: str
    prototypes: np.ndarray      # (K, D)
    labels: np.ndarray          # (K,) class of each prototype, K/C consecutive per class
    resolution: tuple[int, int]  # R' as (h', w'); (1, 1) for KMEx
    patches: list[Patch]


@dataclass
class PrototypeExplanation:
    """What one image looks like to the prototype explainer at one depth."""

    depth: str
    segments: np.ndarray        # (h', w') prototype index of every pixel (eq. 9)
    class_counts: np.ndarray    # (C,) pixels owned by each class's prototypes (eq. 10)
    predicted: int
    target: int
    attribution: np.ndarray     # (h', w') eq. 11, propagated segment-wise to this depth
    attribution_levels: dict[str, np.ndarray]  # the attribution at every depth it passed through
    logits: np.ndarray


class PrototypeExplainer:
    """KMEx (``depth="pooled"``) or the multi-depth explainer (``"B4"``, ``"B34"``, ``"B234"``, ``"B1234"``).

    ``max_pixels_per_class`` bounds the rows given to k-means for one class: when a class
    has more pixels (images x R'), a seeded uniform sample is drawn, the same number from
    every image. Assignments, nearest patches and predictions always use every pixel.
    """

    def __init__(self, depth: str = "B234", per_class: int = 5, seed: int = 0,
                 max_pixels_per_class: int = 20_000, batch_size: int = 128) -> None:
        # Settings are only stored here (scikit-learn's contract): ``fit`` checks them, with the model and data.
        self.depth = depth
        self.per_class = per_class
        self.seed = seed
        self.max_pixels_per_class = max_pixels_per_class
        self.batch_size = batch_size

    # ---- fitting ----
    def fit(self, model: ModelSpec, dataset: DatasetSpec, progress: Progress | None = None,
            features: FeatureCache | None = None, budget: int | None = None) -> "PrototypeExplainer":
        """Fit on ``dataset``, whose classes are matched to the model's by name (``class_map``).

        Three stages, streamed so that memory stays within ``budget`` bytes (default
        ``features.memory_budget()``, 4 GB) whatever the number of classes and images:

        1. the blocks' outputs of every image, written once to ``features`` (a ``FeatureCache``;
           default: the machine's cache of this model and data, so that another K/C, seed or depth
           reuses them, and an interrupted fit resumes from the images already written);
        2. k-means, one class and one level at a time, on rows read from the cache;
        3. the nearest training patch of every prototype, scanning the cache a chunk at a time.

        ``progress`` gets (fraction, "stage i of 3, what: done / total"), the stages weighted by their
        expected share of the time, so that an ETA extrapolated from it is fair. A listener that raises
        (``features.FitCancelled``) stops the fit at once; what stage 1 wrote is whole and reused.
        """
        if self.__dict__.get("_frozen"):
            raise AttributeError("this explainer is shared (frozen) and cannot be refitted: fit a new PrototypeExplainer")
        labels = self._validate(model, dataset)
        self.model_ = model  # kept for predict/explain; not saved (the cache key holds its fingerprint)
        self.model_name_ = model.name
        self.num_classes_ = model.num_classes
        self.classifier_ = (model.classifier.weight.detach().cpu().numpy().copy(),
                            model.classifier.bias.detach().cpu().numpy().copy())
        depths = ["pooled"] if self.depth == "pooled" else suffix_depths(self.depth)
        blocks = sorted({b for d in depths for b in depth_blocks(d)})
        budget = budget or memory_budget()
        cache = features if features is not None else FeatureCache(model, dataset)
        try:
            shares = self._shares(cache, recorded_blocks(model, blocks), depths)
            cache.ensure(recorded_blocks(model, blocks), _stage(progress, 0.0, shares[0], 1, "extracting features"),
                         self.batch_size, budget)
            self.levels_: dict[str, Level] = {}
            work = np.array([self._level_work(cache, d) for d in depths], dtype=float)
            edges = shares[0] + (shares[1] - shares[0]) * np.concatenate([[0.0], np.cumsum(work) / work.sum()])
            for i, depth in enumerate(depths):
                stage = scaled(progress, edges[i], edges[i + 1])
                prototypes, owners = self._kmeans(cache, labels, depth, budget, stage)
                self.levels_[depth] = Level(depth, prototypes, owners, self._resolution(cache, depth), [])
            self._find_patches(cache, budget, scaled(progress, shares[1], 1.0))
        finally:
            if features is None:
                cache.close()
        _report(progress, 1.0, "done")
        return self

    @staticmethod
    def _shares(cache: FeatureCache, recorded: list[str], depths: list[str]) -> tuple[float, float]:
        """Where stages 1 and 2 end, as fractions of the fit (measured on digits; stage 1 is a
        few reads when the features are cached already)."""
        features, clustering = (0.45, 0.1) if len(depths) == 1 else (0.2, 0.65)
        if cache.complete(recorded):
            features = 0.02
        return features, features + clustering

    def _level_work(self, cache: FeatureCache, depth: str) -> float:
        """Rows x dimensions clustered at one level: a proxy for its share of k-means time."""
        h, w = self._resolution(cache, depth)
        dims = sum(cache.shape(b)[0] for b in depth_blocks(depth))
        return float(min(h * w * len(cache.dataset), self.max_pixels_per_class * self.num_classes_) * dims)

    @staticmethod
    def _resolution(cache: FeatureCache, depth: str) -> tuple[int, int]:
        """R' of a level: the shallowest block's (eq. 7); (1, 1) for KMEx's pooled embedding."""
        return (1, 1) if depth == "pooled" else tuple(cache.shape(depth_blocks(depth)[0])[1:])  # type: ignore[return-value]

    def _validate(self, model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
        """Check the settings, the model and the data at the door (a ``UserInputError`` or ``DatasetError``
        that says what was expected and what to do); return the data's labels as the model's classes."""
        for name, low in (("per_class", 1), ("seed", 0), ("max_pixels_per_class", 1), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= value < 2 ** 32:
                raise UserInputError(f"{name} must be a whole number of at least {low}, not {value!r}")
        if not isinstance(model, ModelSpec):
            raise UserInputError(f"model must be a ModelSpec (explainers.load_model gives one), not a {type(model).__name__}")
        depth_blocks(self.depth, model)
        if not isinstance(dataset, DatasetSpec):
            raise UserInputError(f"dataset must be a DatasetSpec (explainers.load_dataset(name or folder) gives one), "
                                 f"not a {type(dataset).__name__}")
        if len(dataset) == 0:
            raise DatasetError(f"{dataset.name} has no {dataset.split} images to fit prototypes on: give a folder with "
                               "one sub-folder of images per class")
        return check_classes(model, dataset, self.per_class, self.depth == "pooled")

    def class_rows(self, cache: FeatureCache, indices: np.ndarray, depth: str, budget: int) -> np.ndarray:
        """The rows k-means gets for one class (its images ``indices``) at ``depth``: every row of
        h-check (or z) of each image, or, when the class has more than ``max_pixels_per_class``, the
        same number from every image, drawn by a generator seeded with (seed, image, depth). The draw
        depends on nothing else (not the order, chunking or other classes), so a fit streamed in any
        order, or resumed, clusters the same rows."""
        blocks = list(depth_blocks(depth))
        rows = []
        for chosen, arrays in cache.chunks(blocks, indices, budget // 8):
            features = self._features({b: torch.from_numpy(a) for b, a in arrays.items()}, depth)
            flat = features.reshape(len(chosen), -1, features.shape[-1]).numpy()
            for image_rows, index in zip(flat, chosen):
                keep = self._rows_per_image(len(image_rows), len(indices))
                if keep < len(image_rows):
                    image_rows = image_rows[_row_sample(self.seed, int(index), depth, len(image_rows), keep)]
                rows.append(image_rows)
        return np.concatenate(rows)

    def _rows_per_image(self, pixels: int, images_in_class: int) -> int:
        return max(1, min(pixels, self.max_pixels_per_class // max(1, images_in_class)))

    @staticmethod
    def _features(activations: dict[str, torch.Tensor], depth: str) -> torch.Tensor:
        return pooled(activations) if depth == "pooled" else hcheck(activations, depth_blocks(depth))

    def _kmeans(self, cache: FeatureCache, labels: np.ndarray, depth: str, budget: int,
                progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Class-wise k-means (scikit-learn), K/C prototypes per class, ordered by class; each class's
        rows read from the cache when its turn comes (``labels``: the dataset's labels as the model's).

        Classes with no images (a folder with some of the model's classes) get no prototypes. Classes
        are clustered ``KMEANS_WORKERS`` at a time, each on one thread: scikit-learn's k-means sums its
        chunks in an order that depends on its thread count, so one thread per class gives the same
        prototypes on any machine (the shipped files are checked to be a fresh fit's, bit for bit), and
        since every class has its own seeded k-means, the number of workers changes nothing either.
        """
        present = [label for label in range(self.num_classes_) if (labels == label).any()]
        results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

        def cluster(label: int) -> tuple[np.ndarray, np.ndarray]:
            members = self.class_rows(cache, np.flatnonzero(labels == label), depth, budget)
            k = distinct_rows(members, self.per_class)
            if k < self.per_class:
                raise DatasetError(
                    f"Class '{self.model_.class_name(label)}' has only {k} distinct feature vectors at {depth} "
                    f"for the {self.per_class} prototypes per class asked: choose at most {max(k, 1)} prototypes "
                    f"per class (K/C), or add images to that class.")
            with one_thread():
                fitted = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=self.seed).fit(members)
            return fitted.cluster_centers_.astype(np.float32), np.full(k, label)

        _report(progress, 0.0, f"stage 2 of 3, k-means at {depth}: class 1 of {len(present):,}")
        with ThreadPoolExecutor(KMEANS_WORKERS, thread_name_prefix="protoscope-kmeans") as pool:
            futures = {pool.submit(cluster, label): label for label in present}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    _report(progress, len(results) / len(present),
                            f"stage 2 of 3, k-means at {depth}: {len(results):,} of {len(present):,} classes")
            except BaseException:
                for future in futures:
                    future.cancel()  # a cancel or an error stops the classes not started yet
                raise
        return (np.concatenate([results[label][0] for label in present]),
                np.concatenate([results[label][1] for label in present]))

    def _find_patches(self, cache: FeatureCache, budget: int, progress: Progress | None) -> None:
        """For every prototype, the training pixel closest to it (exact: every pixel is scanned, from the
        feature cache, a chunk of images at a time so that the rows and their distances to every
        prototype fit the budget)."""
        depths = list(self.levels_)
        blocks = sorted({b for d in depths for b in depth_blocks(d)})
        # per depth and prototype: distance, image index, pixel index, segment of that pixel
        best = {d: np.zeros((len(self.levels_[d].labels), 4)) for d in depths}
        for table in best.values():
            table[:, 0] = np.inf
        total = len(cache.dataset)
        scanned = 0
        # The scan is the fit's largest computation (images x pixels x prototypes x dimensions): it runs on the
        # model's device, a GPU when there is one; only each chunk's nearest rows come back.
        device = self.model_.device
        prototypes = {d: torch.from_numpy(self.levels_[d].prototypes).to(device) for d in depths}
        for chosen, arrays in cache.chunks(blocks, np.arange(total), self._scan_chunk_bytes(cache, blocks, budget)):
            activations = {b: torch.from_numpy(a).to(device) for b, a in arrays.items()}
            for depth in depths:
                features = self._features(activations, depth)
                pixels = features[0].numel() // features.shape[-1]
                flat = features.reshape(-1, features.shape[-1])
                distances = torch.cdist(flat, prototypes[depth])
                rows = distances.argmin(dim=0)  # the first of equal minima, as numpy's: 4x faster down columns
                nearest = distances[rows, torch.arange(len(rows), device=device)].cpu().numpy()
                segments = distances[rows].argmin(dim=1).cpu().numpy()
                rows = rows.cpu().numpy()
                found = np.stack([nearest, chosen[rows // pixels], rows % pixels, segments], axis=1)
                closer = found[:, 0] < best[depth][:, 0]
                best[depth][closer] = found[closer]
            scanned += len(chosen)
            _report(progress, scanned / total,
                    f"stage 3 of 3, finding the nearest training patches: {scanned:,} / {total:,} images")
        for depth in depths:
            self.levels_[depth].patches = self._patches(self.model_, self.levels_[depth], best[depth])

    def _scan_chunk_bytes(self, cache: FeatureCache, blocks: list[str], budget: int) -> int:
        """The ``max_bytes`` of a scan chunk's block arrays such that they, their rows of h-check and the
        rows' distances to every prototype take at most a quarter of the budget."""
        per_image = cache.image_bytes(blocks)
        extra = 0
        for depth, level in self.levels_.items():
            h, w = level.resolution
            extra += 4 * h * w * (level.prototypes.shape[1] + 2 * len(level.labels))
        images = max(1, budget // 4 // (per_image + extra))
        return images * per_image

    @staticmethod
    def _patches(model: ModelSpec, level: Level, best: np.ndarray) -> list[Patch]:
        h, w = level.resolution
        patches = []
        for k, (distance, image, pixel, segment) in enumerate(best):
            row, col = divmod(int(pixel), w)
            box = receptive_box(row, col, (h, w), model.input_size)
            patches.append(Patch(k, int(image), row, col, float(distance), int(segment), box))
        return patches

    # ---- using ----
    def _check_fitted(self) -> None:
        if not hasattr(self, "levels_"):
            raise NotFittedError("this PrototypeExplainer is not fitted yet: call fit(model, dataset) first")

    @property
    def level_(self) -> Level:
        """The level of the requested depth (the last of the chain)."""
        self._check_fitted()
        return self.levels_["pooled" if self.depth == "pooled" else self.depth]

    @property
    def prototypes_(self) -> np.ndarray:
        return self.level_.prototypes

    @property
    def prototype_labels_(self) -> np.ndarray:
        return self.level_.labels

    def _model(self, model: ModelSpec | None) -> ModelSpec:
        self._check_fitted()
        model = model or getattr(self, "model_", None)
        if model is None:
            raise NotFittedError("no model attached: pass model=, or use the explainer fit_prototypes returned")
        return model

    def predict(self, images: object, model: ModelSpec | None = None) -> np.ndarray:
        """Class ids of a PIL image, a list of them, or a transformed batch (eq. 10; nearest prototype for KMEx).

        ``model`` defaults to the one the explainer was fitted (or loaded) for.
        """
        model = self._model(model)
        inputs = as_batch(model, images)
        out = []
        for start in range(0, len(inputs), self.batch_size):
            activations = block_activations(model, inputs[start:start + self.batch_size], depth_blocks(self.depth))
            out.append(self.predict_activations(activations))
        return np.concatenate(out)

    def predict_activations(self, activations: dict[str, torch.Tensor]) -> np.ndarray:
        """``predict`` from block activations already recorded (one trace can serve several explainers)."""
        level = self.level_
        features = self._features(on_cpu(activations), level.depth)
        n = features.shape[0]
        nearest = self._assign(features.reshape(-1, features.shape[-1]), level).reshape(n, -1)
        if self.depth == "pooled":
            return level.labels[nearest[:, 0]]
        counts = np.stack([np.bincount(level.labels[row], minlength=self.num_classes_) for row in nearest])
        return counts.argmax(axis=1)

    @staticmethod
    def _assign(rows: torch.Tensor, level: Level) -> np.ndarray:
        """Eq. 9: the nearest prototype of every row."""
        return torch.cdist(rows, torch.tensor(level.prototypes)).argmin(dim=1).numpy()  # a copy: may be read-only

    def explain(self, image: object, target: int | None = None, model: ModelSpec | None = None) -> PrototypeExplanation:
        """Segments (eq. 9), class counts and prediction (eq. 10), and the attribution (eq. 11 + steps 1-3)."""
        model = self._model(model)
        if self.depth == "pooled":
            raise UserInputError("KMEx explains the pooled embedding, which has no pixels: use a block depth such as B4")
        inputs = as_batch(model, image)[:1]
        with torch.inference_mode():
            result = trace(model, inputs, blocks=list(model.blocks))
        logits = result.logits[0].cpu().numpy()
        level = self.level_
        activations = on_cpu(result.activations)
        features = self._features(activations, level.depth)[0]
        segments = self._assign(features.reshape(-1, features.shape[-1]), level).reshape(features.shape[:2])
        counts = np.bincount(level.labels[segments.ravel()], minlength=self.num_classes_)
        chosen = int(counts.argmax()) if target is None else model.check_target(target)
        levels = self.attribution(activations, chosen)
        return PrototypeExplanation(level.depth, segments, counts, int(counts.argmax()), chosen,
                                    levels[level.depth], levels, logits)

    def attribution(self, activations: dict[str, torch.Tensor], target: int) -> dict[str, np.ndarray]:
        """Eq. 11 at the last block, then upsample and average within each segment of every
        shallower explanation map of the chain (the three steps after eq. 11)."""
        weights, _bias = self.classifier_
        activations = on_cpu(activations)
        column = torch.tensor(weights[target])
        last = activations[BLOCK_NAMES[-1]][0]
        current = torch.einsum("dhw,d->hw", last, column) / column.dot(column)
        maps = {BLOCK_NAMES[-1]: current.numpy()}
        for depth, level in self.levels_.items():
            if len(depth) <= 2:  # B4 itself: eq. 11 is already at this resolution
                continue
            features = self._features({k: v[:1] for k, v in activations.items()}, depth)[0]
            segments = self._assign(features.reshape(-1, features.shape[-1]), level)
            lifted = upsample(current[None], level.resolution)[0].reshape(-1).numpy()
            current = torch.from_numpy(segment_means(lifted, segments).reshape(level.resolution))
            maps[depth] = current.numpy()
        return maps

    # ---- persistence (npz: arrays only, no pickle) ----
    def save(self, path: Path) -> None:
        self._check_fitted()
        arrays: dict[str, np.ndarray] = {"classifier_weight": self.classifier_[0], "classifier_bias": self.classifier_[1]}
        meta = {"settings": self.get_params(), "model_name": self.model_name_, "num_classes": self.num_classes_,
                "levels": {}}
        for depth, level in self.levels_.items():
            arrays[f"{depth}_prototypes"] = level.prototypes
            arrays[f"{depth}_labels"] = level.labels
            meta["levels"][depth] = {"resolution": list(level.resolution),
                                     "patches": [p.__dict__ | {"box": list(p.box)} for p in level.patches]}
        write_atomically(path, lambda temporary: np.savez(temporary, meta=np.array(json.dumps(meta)), **arrays))

    @classmethod
    def load(cls, path: Path) -> "PrototypeExplainer":
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            explainer = cls(**meta["settings"])
            explainer.model_name_ = meta["model_name"]
            explainer.num_classes_ = meta["num_classes"]
            explainer.classifier_ = (data["classifier_weight"], data["classifier_bias"])
            explainer.levels_ = {}
            for depth, info in meta["levels"].items():
                patches = [Patch(**(p | {"box": tuple(p["box"])})) for p in info["patches"]]
                explainer.levels_[depth] = Level(depth, data[f"{depth}_prototypes"], data[f"{depth}_labels"],
                                                 tuple(info["resolution"]), patches)
        return explainer

    @property
    def digest_(self) -> str:
        """A hash of what was fitted (settings, prototypes, their classes): keys anything computed from them."""
        self._check_fitted()
        digest = hashlib.sha256(json.dumps(self.get_params(), sort_keys=True).encode())
        for depth, level in self.levels_.items():
            digest.update(depth.encode())
            digest.update(np.ascontiguousarray(level.prototypes).tobytes())
            digest.update(np.ascontiguousarray(level.labels).tobytes())
        return digest.hexdigest()[:16]

    @property
    def nbytes_(self) -> int:
        """The memory its fitted state holds: prototypes, their labels, the classifier, the patches."""
        self._check_fitted()
        arrays = [*self.classifier_, *(a for level in self.levels_.values() for a in (level.prototypes, level.labels))]
        patches = sum(len(level.patches) for level in self.levels_.values())
        return int(sum(a.nbytes for a in arrays)) + PATCH_BYTES * patches

    def freeze(self) -> "PrototypeExplainer":
        """Make this fitted explainer read-only, for sharing between sessions and threads: its arrays
        cannot be written, its attributes not set, its patches are tuples, and ``fit`` refuses.
        Using it (``predict``, ``explain``, ``attribution``) is unaffected: none of them writes."""
        self._check_fitted()
        for level in self.levels_.values():
            level.prototypes.setflags(write=False)
            level.labels.setflags(write=False)
            level.patches = tuple(level.patches)  # type: ignore[assignment]
        for array in self.classifier_:
            array.setflags(write=False)
        object.__setattr__(self, "_frozen", True)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"this explainer is shared (frozen): {name} cannot be set; fit a new PrototypeExplainer")
        object.__setattr__(self, name, value)

    def get_params(self) -> dict[str, object]:
        return {"depth": self.depth, "per_class": self.per_class, "seed": self.seed,
                "max_pixels_per_class": self.max_pixels_per_class, "batch_size": self.batch_size}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"PrototypeExplainer({settings})"


@contextmanager
def one_thread() -> Iterator[None]:
    """scikit-learn's k-means on one thread: OpenMP for this thread only (its setting is per thread), and
    numpy's OpenBLAS, whose threads otherwise spin inside k-means' OpenMP loop (measured: 8.2 s instead
    of 0.6 s for 4,704 rows of 896 dims and K = 10). OpenBLAS's setting is the process's, so it is set
    once for the whole k-means stage by the first worker to need it and restored by the last; torch's
    own libraries are not affected."""
    with _BLAS_GUARD:
        global _BLAS_USERS, _BLAS_LIMIT
        if _BLAS_USERS == 0:
            _BLAS_LIMIT = threadpool_limits(limits=1, user_api="blas")
        _BLAS_USERS += 1
    try:
        with threadpool_limits(limits=1, user_api="openmp"):
            yield
    finally:
        with _BLAS_GUARD:
            _BLAS_USERS -= 1
            if _BLAS_USERS == 0 and _BLAS_LIMIT is not None:
                _BLAS_LIMIT.restore_original_limits()
                _BLAS_LIMIT = None


_BLAS_GUARD = threading.Lock()
_BLAS_USERS = 0
_BLAS_LIMIT: threadpool_limits | None = None


def recorded_blocks(model: ModelSpec, blocks: Sequence[str]) -> list[str]:
    """What a fit's pass over the images writes to the feature cache: the blocks it needs, and B2-B4 and the
    logits whatever it needs (one pass then serves B4, B34, B234, KMEx and Table 2: the pages' defaults,
    at 350 KB per image of a ResNet34 at 224x224; only B1234 needs B1, twice that again)."""
    usual = [name for name in ("B2", "B3", "B4") if name in model.blocks]
    return sorted(set(blocks) | set(usual)) + [LOGITS]


def distinct_rows(rows: np.ndarray, enough: int) -> int:
    """How many distinct rows ``rows`` has, counted up to ``enough`` (k-means needs K/C distinct points):
    usually the first few rows settle it, where ``np.unique`` sorts them all (0.77 s for a CUB class at B234)."""
    seen: set[bytes] = set()
    for row in np.ascontiguousarray(rows):
        seen.add(row.tobytes())
        if len(seen) >= enough:
            break
    return len(seen)


def _row_sample(seed: int, image: int, depth: str, pixels: int, keep: int) -> np.ndarray:
    """``keep`` of an image's ``pixels`` rows, drawn by a generator of its own (seed, image, depth)."""
    generator = np.random.default_rng([seed, image, zlib.crc32(depth.encode())])
    return np.sort(generator.choice(pixels, keep, replace=False))


def segment_means(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Every value replaced by the mean over its segment (step 3 after eq. 11)."""
    sums = np.bincount(segments, weights=values)
    sizes = np.bincount(segments)
    return (sums / np.maximum(sizes, 1))[segments].astype(np.float32)


def receptive_box(row: int, col: int, grid: tuple[int, int], image: tuple[int, int],
                  minimum_fraction: float = 1 / 8) -> tuple[int, int, int, int]:
    """The input pixels of one R' cell, widened to at least ``minimum_fraction`` of the image side."""
    (h, w), (height, width) = grid, image
    side_y = max(height / h, height * minimum_fraction)
    side_x = max(width / w, width * minimum_fraction)
    centre_y, centre_x = (row + 0.5) * height / h, (col + 0.5) * width / w
    top = int(round(min(max(centre_y - side_y / 2, 0), height - side_y)))
    left = int(round(min(max(centre_x - side_x / 2, 0), width - side_x)))
    return left, top, int(round(left + side_x)), int(round(top + side_y))


def fit_prototypes(model: ModelSpec, dataset: DatasetSpec, depth: str = "B234", per_class: int = 5, seed: int = 0,
                   progress: Progress | None = None, max_pixels_per_class: int = 20_000,
                   cache: bool = True) -> PrototypeExplainer:
    """Fit (or read from the disk cache) the prototype explainer of ``model`` on ``dataset``.

    The disk cache has two tiers (``explainers.fitted.store.tiers``): this machine's ``.cache/prototypes/``,
    then the files shipped in ``assets/prototypes/``; a fit is written to the first only. Nothing is
    kept in memory here: ``explainers.methods.kmeans_attribution.fitted`` is the shared, single-flight way.
    """
    return made(PrototypeRecipe(model, dataset, PrototypeExplainer(depth, per_class, seed, max_pixels_per_class),
                                keep_features=cache), progress, cache)


def _mapping_note(model: ModelSpec, dataset: DatasetSpec) -> str:
    """The classes of a dataset that are not the model's, in order, as a key part ("" in the usual case)."""
    mapping = class_map(model, dataset)
    return "" if np.array_equal(mapping, np.arange(model.num_classes)) else f"|classes={mapping.tolist()}"


def _plain(value: object) -> object:
    """A numpy scalar as the Python number it is, for a key (so that 5 and np.int64(5) key alike)."""
    return value.item() if isinstance(value, np.generic) else value


def cache_key(model: ModelSpec, dataset: DatasetSpec, explainer: PrototypeExplainer) -> str:
    settings = json.dumps(explainer.get_params(), sort_keys=True, default=_plain)
    text = f"{CACHE_VERSION}|{model.fingerprint}|{dataset.fingerprint}|{settings}" + _mapping_note(model, dataset)
    return f"{explainer.depth}-k{explainer.per_class}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class PrototypeRecipe:
    """A ``PrototypeExplainer`` with the settings of ``explainer``, fitted for ``model`` on ``dataset``: what
    ``explainers.fitted.store`` needs to find it (in memory, then in the disk tiers), fit it, keep and share it.

    The settings, the model and the data are checked here, before any key is computed from them, with
    the messages of ``PrototypeExplainer.fit``.
    """

    def __init__(self, model: ModelSpec, dataset: DatasetSpec, explainer: PrototypeExplainer,
                 keep_features: bool = True) -> None:
        explainer._validate(model, dataset)
        self.keep_features = keep_features  # False: the features go to a temporary folder, deleted after the fit
        self.model, self.dataset, self.settings = model, dataset, explainer.get_params()
        self.key = Key.of(KIND, model.fingerprint, dataset.fingerprint + _mapping_note(model, dataset),
                          version=CACHE_VERSION, **{name: _plain(value) for name, value in self.settings.items()})
        self.filename = f"{cache_key(model, dataset, explainer)}.npz"
        self.title = (f"Fitting the {explainer.depth} prototypes, K/C = {explainer.per_class} "
                      "(once; kept for every session)")

    def fit(self, progress: Progress | None) -> PrototypeExplainer:
        explainer = PrototypeExplainer(**self.settings)  # type: ignore[arg-type]
        if self.keep_features:
            return explainer.fit(self.model, self.dataset, progress)
        with FeatureCache(self.model, self.dataset, persistent=False) as features:
            return explainer.fit(self.model, self.dataset, progress, features=features)

    def load(self, path: Path) -> PrototypeExplainer:
        loaded = PrototypeExplainer.load(path)
        loaded.model_ = self.model  # a file holds no model: its key holds the model's fingerprint
        return loaded

    @staticmethod
    def save(value: PrototypeExplainer, path: Path) -> None:
        value.save(path)

    @staticmethod
    def share(value: PrototypeExplainer) -> PrototypeExplainer:
        return value.freeze()

    @staticmethod
    def nbytes(value: PrototypeExplainer) -> int:
        return value.nbytes_


def _report(progress: Progress | None, fraction: float, message: str) -> None:
    report_fraction(fraction, message, progress)



def _stage(progress: Progress | None, low: float, high: float, number: int, what: str) -> Progress | None:
    """Stage ``number`` of a fit as [low, high] of ``progress``, its messages prefixed with what it is."""
    inner = scaled(progress, low, high)
    if inner is None:
        return None
    return lambda fraction, text: inner(fraction, f"stage {number} of 3, {what}: {text}")
