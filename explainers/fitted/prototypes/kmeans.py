"""Stage 2 of a prototype fit: class-wise k-means on rows read from the feature cache.

Two k-means (``PrototypeExplainer``'s ``kmeans``): ``"torch"`` (``lloyd.lloyd_kmeans``: matrix products and
Hamerly's bounds) and ``"sklearn"`` (scikit-learn's, the shipped files'). Either runs ``KMEANS_WORKERS``
classes at once, each on one thread: measured on this 2-core machine shared with other work, torch on
two threads per class took 3-4x as long as on one (its threads wait for each other when the cores are
busy), and one thread per class gives the same prototypes whatever the machine's thread count.
"""
from __future__ import annotations

import os
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from ...models import ModelSpec
from ...runtime.errors import DatasetError
from ...runtime.progress import Progress, report_fraction
from ..features import FeatureCache
from .depths import depth_blocks, depth_features
from .lloyd import lloyd_kmeans

KMEANS_CHOICES = ("torch", "sklearn")

# k-means++ starts per class: scikit-learn's own default for k-means++ ("auto" = 1). Three cost 4.5x the time
# (3.35 s against 0.74 s for one CUB-shaped class at B234: 20,000 rows of 896 dims, K = 10) for an inertia
# 0.16% lower; at CUB's 200 classes that is 11 minutes of a refit against 2.5.
KMEANS_INITS = 1
KMEANS_WORKERS = max(1, min(2, os.cpu_count() or 1))  # classes clustered at once, one thread each


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


def rows_per_image(pixels: int, images_in_class: int, max_pixels_per_class: int) -> int:
    """Rows k-means gets from each image of a class: all its ``pixels``, or an equal share of the class's bound."""
    return max(1, min(pixels, max_pixels_per_class // max(1, images_in_class)))


def class_rows(cache: FeatureCache, indices: np.ndarray, depth: str, budget: int, seed: int,
               max_pixels_per_class: int) -> np.ndarray:
    """The rows k-means gets for one class (its images ``indices``) at ``depth``: every row of
    h-check (or z) of each image, or, when the class has more than ``max_pixels_per_class``, the
    same number from every image, drawn by a generator seeded with (seed, image, depth). The draw
    depends on nothing else (not the order, chunking or other classes), so a fit streamed in any
    order, or resumed, clusters the same rows."""
    blocks = list(depth_blocks(depth))
    rows = []
    for chosen, arrays in cache.chunks(blocks, indices, budget // 8):
        features = depth_features({b: torch.from_numpy(a) for b, a in arrays.items()}, depth)
        flat = features.reshape(len(chosen), -1, features.shape[-1]).numpy()
        for image_rows, index in zip(flat, chosen):
            keep = rows_per_image(len(image_rows), len(indices), max_pixels_per_class)
            if keep < len(image_rows):
                image_rows = image_rows[_row_sample(seed, int(index), depth, len(image_rows), keep)]
            rows.append(image_rows)
    return np.concatenate(rows)


def class_prototypes(model: ModelSpec, cache: FeatureCache, labels: np.ndarray, depth: str, budget: int,
                     per_class: int, seed: int, max_pixels_per_class: int,
                     progress: Progress | None = None, algorithm: str = "sklearn") -> tuple[np.ndarray, np.ndarray]:
    """Class-wise k-means, K/C prototypes per class, ordered by class; each class's rows read from the
    cache when its turn comes (``labels``: the dataset's labels as the model's).

    ``algorithm``: ``"torch"`` (``lloyd_kmeans``, 1.5-2.5x as fast as scikit-learn's on a CUB-shaped class:
    20,000 rows of 896 dims, K = 10) or ``"sklearn"``.

    Classes with no images (a folder with some of the model's classes) get no prototypes. Classes
    are clustered ``KMEANS_WORKERS`` at a time, each on one thread: scikit-learn's k-means sums its
    chunks in an order that depends on its thread count, so one thread per class gives the same
    prototypes on any machine (the shipped files are checked to be a fresh fit's, bit for bit), and
    since every class has its own seeded k-means, the number of workers changes nothing either.
    """
    present = [label for label in range(model.num_classes) if (labels == label).any()]
    if algorithm not in KMEANS_CHOICES:
        raise ValueError(f"kmeans must be one of {KMEANS_CHOICES}, not {algorithm!r}")
    results: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def read(label: int) -> np.ndarray:
        return class_rows(cache, np.flatnonzero(labels == label), depth, budget, seed, max_pixels_per_class)

    def checked(label: int, members: np.ndarray) -> int:
        k = distinct_rows(members, per_class)
        if k < per_class:
            raise DatasetError(
                f"Class '{model.class_name(label)}' has only {k} distinct feature vectors at {depth} "
                f"for the {per_class} prototypes per class asked: choose at most {max(k, 1)} prototypes "
                f"per class (K/C), or add images to that class.")
        return k

    def cluster(label: int) -> tuple[np.ndarray, np.ndarray]:
        with one_thread():  # the rows are read on this thread too (torch's interpolation): no oversubscription
            members = read(label)
            k = checked(label, members)
            if algorithm == "torch":
                return lloyd_kmeans(members, k, seed)[0], np.full(k, label)
            fitted = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit(members)
        return fitted.cluster_centers_.astype(np.float32), np.full(k, label)

    report_fraction(0.0, f"stage 2 of 3, k-means at {depth}: class 1 of {len(present):,}", progress)
    with ThreadPoolExecutor(KMEANS_WORKERS, thread_name_prefix="protoscope-kmeans") as pool:
        futures = {pool.submit(cluster, label): label for label in present}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                report_fraction(len(results) / len(present),
                                f"stage 2 of 3, k-means at {depth}: {len(results):,} of {len(present):,} classes",
                                progress)
        except BaseException:
            for future in futures:
                future.cancel()  # a cancel or an error stops the classes not started yet
            raise
    return (np.concatenate([results[label][0] for label in present]),
            np.concatenate([results[label][1] for label in present]))

