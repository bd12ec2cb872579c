"""Stage 2 of a prototype fit: class-wise k-means on rows read from the feature cache (``classwise`` runs it).

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
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from ...runtime.errors import DatasetError
from ..features import FeatureFiles
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


# Rows are formed a few images at a time: temporaries this small are served again from the heap, where glibc
# maps and unmaps every larger one on each call (at CUB's shape, page faults were 40% of a class's time).
CHUNK_BYTES = 16 * 2 ** 20


class RowBuffers:
    """float32 buffers that one worker thread reuses from class to class (grown when a class needs more), so
    that a class's rows land in memory already mapped; each thread of a pool gets its own."""

    def __init__(self) -> None:
        self._local = threading.local()

    def take(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A float32 tensor of ``shape`` (its values undefined), the thread's buffer ``name`` or part of it."""
        buffers: dict[str, torch.Tensor] = self._local.__dict__.setdefault("buffers", {})
        size = int(np.prod(shape))
        if name not in buffers or buffers[name].numel() < size:
            buffers.pop(name, None)  # the old one goes before the new one comes
            buffers[name] = torch.empty(size)
        return buffers[name][:size].view(shape)


def level_shape(files: FeatureFiles, depth: str) -> tuple[int, int]:
    """(pixels, dimensions) of one image's rows at ``depth``: R' = the shallowest block's cells (one for
    KMEx's pooled z), D = the sum of the blocks' channels (eq. 7)."""
    blocks = depth_blocks(depth)
    dims = sum(files.shape(b)[0] for b in blocks)
    if depth == "pooled":
        return 1, dims
    _, height, width = files.shape(blocks[0])
    return height * width, dims


def formed_rows(files: FeatureFiles, indices: np.ndarray, depth: str, max_bytes: int = CHUNK_BYTES,
                into: torch.Tensor | None = None, buffers: RowBuffers | None = None
                ) -> Iterator[tuple[int, np.ndarray, torch.Tensor]]:
    """(position of the chunk's first image in ``indices``, its image indices, their rows at ``depth``: h-check
    or z, as (images, pixels, D)) a chunk of images at a time, each chunk's rows at most ``max_bytes``. The
    rows are written into ``into`` ((len(indices), pixels, D): the class's rows, kept) when given, else into
    a chunk buffer of ``buffers`` (reused: valid until the next chunk) or a new tensor."""
    blocks = list(depth_blocks(depth))
    pixels, dims = level_shape(files, depth)
    shape = (dims,) if depth == "pooled" else (*files.shape(blocks[0])[1:], dims)
    step = max(1, max_bytes // (4 * pixels * dims))
    for first in range(0, len(indices), step):
        chosen = indices[first:first + step]
        arrays = {block: torch.from_numpy(files.read(block, chosen)) for block in blocks}
        if into is not None:
            target = into[first:first + len(chosen)]
        elif buffers is not None:
            target = buffers.take("chunk", (len(chosen), pixels, dims))
        else:
            target = torch.empty((len(chosen), pixels, dims))
        depth_features(arrays, depth, out=target.view(len(chosen), *shape))
        yield first, chosen, target


def sample_into(features: torch.Tensor, chosen: np.ndarray, depth: str, seed: int, keep: int,
                out: torch.Tensor) -> None:
    """Write the rows k-means gets from a chunk of one class's images (``features``: their rows, (images,
    pixels, D); ``chosen``: their indices) into ``out``: every row of each, or ``keep`` of each drawn by
    ``_row_sample``, in order (one gather for the chunk)."""
    flat = features.reshape(-1, features.shape[-1])
    pixels = features.shape[1]
    if keep >= pixels:
        out.copy_(flat)
        return
    picks = np.concatenate([i * pixels + _row_sample(seed, int(index), depth, pixels, keep)
                            for i, index in enumerate(chosen)])
    torch.index_select(flat, 0, torch.from_numpy(picks), out=out)


def class_rows(files: FeatureFiles, indices: np.ndarray, depth: str, budget: int, seed: int,
               max_pixels_per_class: int) -> np.ndarray:
    """The rows k-means gets for one class (its images ``indices``) at ``depth``: every row of
    h-check (or z) of each image, or, when the class has more than ``max_pixels_per_class``, the
    same number from every image, drawn by a generator seeded with (seed, image, depth). The draw
    depends on nothing else (not the order, chunking or other classes), so a fit streamed in any
    order, or resumed, clusters the same rows. (The fit forms them so too: ``classwise``.)"""
    pixels, dims = level_shape(files, depth)
    keep = rows_per_image(pixels, len(indices), max_pixels_per_class)
    rows = torch.empty((len(indices) * keep, dims))
    for first, chosen, features in formed_rows(files, indices, depth, min(CHUNK_BYTES, budget // 8)):
        sample_into(features, chosen, depth, seed, keep, rows[first * keep:(first + len(chosen)) * keep])
    return rows.numpy()


def distinct_check(rows: np.ndarray, per_class: int, class_name: str, depth: str) -> int:
    """The number of clusters for a class's rows: ``per_class``, or a ``DatasetError`` saying how many
    distinct rows there are and what to do (k-means needs K/C distinct points)."""
    k = distinct_rows(rows, per_class)
    if k < per_class:
        raise DatasetError(
            f"Class '{class_name}' has only {k} distinct feature vectors at {depth} for the {per_class} "
            f"prototypes per class asked: choose at most {max(k, 1)} prototypes per class (K/C), or add images "
            "to that class.")
    return k


def cluster(rows: np.ndarray, k: int, seed: int, algorithm: str, overwrite: bool = False) -> np.ndarray:
    """K centres (float32) of one class's ``rows`` by ``algorithm`` (``KMEANS_CHOICES``), seeded: ``"torch"``
    (``lloyd_kmeans``, 1.5-2.5x as fast as scikit-learn's on a CUB-shaped class: 20,000 rows of 896 dims,
    K = 10) or ``"sklearn"``. ``overwrite``: the torch k-means may change ``rows`` (it centres them in place).
    Call it within ``one_thread``: one class per core."""
    if algorithm == "torch":
        return lloyd_kmeans(rows, k, seed, overwrite=overwrite, inertia=False)[0]
    if algorithm != "sklearn":
        raise ValueError(f"kmeans must be one of {KMEANS_CHOICES}, not {algorithm!r}")
    fitted = KMeans(n_clusters=k, n_init=KMEANS_INITS, random_state=seed).fit(rows)
    return fitted.cluster_centers_.astype(np.float32)
