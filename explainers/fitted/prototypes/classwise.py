"""Stages 2 and 3 of a prototype fit, one class at a time: k-means on the class's rows and, with ProtoPNet's
own-class projection, each prototype's nearest training pixel among the same rows while they are in memory.

A class's rows at a depth (h-check, eq. 7-8) are formed once from the feature cache: a seeded sample of them
goes to k-means (``kmeans``), and all of them are then searched for each new prototype's nearest pixel (the
projection searches the prototype's own class only, so those rows are all it needs). Forming the rows is
half of a refit's work at CUB's shape (the upsampling of B3 and B4 to B2's grid), so doing it once instead of
twice is most of what keeps a B234 refit of 200 classes under a minute. A class whose rows exceed its share of
the memory budget is read again, a chunk at a time, for the search: memory is bounded whatever the class size.

Each class is one ``ClassTask`` (picklable: its images, the depths, the settings) run by ``fit_class`` on one
thread. ``threads`` runs ``KMEANS_WORKERS`` of them at once in this process; the ``class_runner`` argument of
``PrototypeExplainer.fit`` takes another runner, such as ``explainers.jobs``' Ray tasks, with the same results:
every class's work depends on its own rows and seed only.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ...runtime.progress import Progress, report_fraction
from ..features import FeatureFiles
from .kmeans import (
    CHUNK_BYTES,
    KMEANS_WORKERS,
    RowBuffers,
    cluster,
    distinct_check,
    formed_rows,
    level_shape,
    one_thread,
    rows_per_image,
    sample_into,
)


@dataclass(frozen=True)
class ClassTask:
    """One class's share of a fit: its images (``indices`` in the dataset), the depths to cluster it at, and
    the fit's settings; ``budget``: bytes its work may hold; ``project``: also find each prototype's nearest
    pixel among the class's own rows (the own-class projection)."""

    label: int
    name: str
    indices: np.ndarray
    depths: tuple[str, ...]
    per_class: int
    seed: int
    max_pixels_per_class: int
    algorithm: str
    budget: int
    project: bool


@dataclass
class ClassLevel:
    """What one class contributes at one depth: its prototypes and, with the own-class projection, each one's
    nearest training pixel (distance, image, pixel) and that pixel's row, whose segment (eq. 9: the nearest
    prototype of any class) is found once every class is in."""

    centres: np.ndarray                  # (k, D) float32
    nearest: np.ndarray | None = None    # (k, 3) distance, image index, pixel index
    rows: np.ndarray | None = None       # (k, D) the nearest pixels' rows


ClassRunner = Callable[[FeatureFiles, Sequence[ClassTask]], Iterator[tuple[ClassTask, dict[str, ClassLevel]]]]


def fit_class(files: FeatureFiles, task: ClassTask, buffers: RowBuffers | None = None) -> dict[str, ClassLevel]:
    """k-means (and the own-class projection) of one class at each of its depths, on one thread; ``buffers``:
    the thread's buffers, reused from class to class (default: new ones)."""
    buffers = buffers or RowBuffers()
    with one_thread():
        return {depth: _fit_level(files, task, depth, buffers) for depth in task.depths}


def _fit_level(files: FeatureFiles, task: ClassTask, depth: str, buffers: RowBuffers) -> ClassLevel:
    pixels, dims = level_shape(files, depth)
    images = len(task.indices)
    keep = rows_per_image(pixels, images, task.max_pixels_per_class)
    # the class's rows stay for the search when they fit a quarter of its budget (k-means' sample and its
    # distances take another); otherwise they are formed again, a chunk at a time
    hold = task.project and images * pixels * dims * 4 <= task.budget // 4
    held = buffers.take("held", (images, pixels, dims)) if hold else None
    sample = buffers.take("sample", (images * keep, dims))
    chunk = min(CHUNK_BYTES, task.budget // 8)
    for first, chosen, features in formed_rows(files, task.indices, depth, chunk, held, buffers):
        sample_into(features, chosen, depth, task.seed, keep, sample[first * keep:(first + len(chosen)) * keep])
    rows = sample.numpy()
    k = distinct_check(rows, task.per_class, task.name, depth)
    centres = cluster(rows, k, task.seed, task.algorithm, overwrite=True)  # the sample is ours: centred in place
    if not task.project:
        return ClassLevel(centres)
    if held is not None:
        return _nearest([(task.indices, held)], centres)
    return _nearest(((chosen, features) for _, chosen, features in formed_rows(files, task.indices, depth, chunk,
                                                                             buffers=buffers)), centres)


def _nearest(chunks: Iterable[tuple[np.ndarray, torch.Tensor]], centres: np.ndarray) -> ClassLevel:
    """Each centre's nearest row over ``chunks`` of (image indices, rows (images, pixels, D)), the first of
    equal minima in the order of the images. The rows are ranked by ||x||^2 - 2 x.c + ||c||^2 as one matrix
    product (``torch.cdist`` forms the same sums by copying the rows into a wider matrix first: 14x the time
    on 23,520 rows of 896 dims), and the winners' distances are then computed directly, ||x - c||."""
    prototypes = torch.from_numpy(centres)
    lengths = (prototypes * prototypes).sum(dim=1)
    k = len(centres)
    nearest = np.full((k, 3), np.inf)
    rows = np.zeros_like(centres)
    for chosen, features in chunks:
        pixels = features.shape[1]
        flat = features.reshape(-1, features.shape[-1])
        squared = torch.addmm(torch.linalg.vector_norm(flat, dim=1).square_()[:, None], flat, prototypes.T, alpha=-2.0)
        best = (squared + lengths).argmin(dim=0)
        found = torch.linalg.vector_norm(flat[best] - prototypes, dim=1).numpy()
        closer = found < nearest[:, 0]
        picked = best.numpy()
        nearest[closer] = np.stack([found, chosen[picked // pixels], picked % pixels], axis=1)[closer]
        rows[closer] = flat[best].numpy()[closer]
    return ClassLevel(centres, nearest, rows)


def threads(files: FeatureFiles, tasks: Sequence[ClassTask]) -> Iterator[tuple[ClassTask, dict[str, ClassLevel]]]:
    """Run ``tasks`` ``KMEANS_WORKERS`` at a time on threads of this process, yielding each as it finishes. An
    error, or the caller stopping (a cancel), stops the classes not started yet."""
    buffers = RowBuffers()  # one set per thread of the pool, gone with the pool
    with ThreadPoolExecutor(KMEANS_WORKERS, thread_name_prefix="protoscope-kmeans") as pool:
        futures = {pool.submit(fit_class, files, task, buffers): task for task in tasks}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            for future in futures:
                future.cancel()


def fit_classes(files: FeatureFiles, tasks: Sequence[ClassTask], progress: Progress | None = None,
                runner: ClassRunner | None = None) -> dict[int, dict[str, ClassLevel]]:
    """Every class's ``ClassLevel`` per depth, keyed by label, run by ``runner`` (default ``threads``);
    ``progress`` gets (fraction, "stage 2 of 3, ...: n of C classes")."""
    what = "k-means and the nearest patches in each class" if tasks and tasks[0].project else "k-means"
    depths = ", ".join(tasks[0].depths) if tasks else ""
    report_fraction(0.0, f"stage 2 of 3, {what} at {depths}: class 1 of {len(tasks):,}", progress)
    results: dict[int, dict[str, ClassLevel]] = {}
    for task, levels in (runner or threads)(files, tasks):
        results[task.label] = levels
        report_fraction(len(results) / len(tasks),
                        f"stage 2 of 3, {what} at {depths}: {len(results):,} of {len(tasks):,} classes", progress)
    return results


def own_class_best(levels: Sequence[ClassLevel], prototypes: np.ndarray) -> np.ndarray:
    """The (distance, image, pixel, segment) table of every prototype of a depth, class by class in the order
    of ``prototypes`` (all of them): each pixel's segment is its nearest prototype of any class (eq. 9)."""
    every = torch.from_numpy(np.ascontiguousarray(prototypes))
    tables = []
    for level in levels:
        assert level.nearest is not None and level.rows is not None
        segments = torch.cdist(torch.tensor(level.rows), every).argmin(dim=1).numpy()  # a copy: may be read-only
        tables.append(np.concatenate([level.nearest, segments[:, None]], axis=1))
    return np.concatenate(tables)
