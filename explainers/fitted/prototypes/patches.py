"""The training patch nearest each prototype (stage 3 of a fit): an exact scan of the feature cache.

Two projections (``PrototypeExplainer``'s ``projection``): ``"class"``, ProtoPNet's, searches only the
training images of the prototype's own class (each prototype was clustered from those rows, so it is
shown with one of them: a C-th of the work); ``"all"`` searches every pixel of every training image
(the files shipped in ``assets/prototypes/`` were fitted so).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np
import torch

from ...models import ModelSpec
from ...runtime.progress import Progress, report_fraction
from ..features import FeatureCache
from .depths import depth_blocks, depth_features
from .kmeans import KMEANS_WORKERS, one_thread

if TYPE_CHECKING:
    from .explainer import Level

PATCH_BYTES = 400  # a Patch in memory (a dataclass of 7 fields and a tuple), for the store's bound


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


PROJECTIONS = ("class", "all")


def nearest_patches(model: ModelSpec, levels: Mapping[str, Level], cache: FeatureCache, budget: int,
                    progress: Progress | None, labels: np.ndarray | None = None,
                    projection: str = "all") -> dict[str, list[Patch]]:
    """For every prototype of every level, the training pixel closest to it (exact), from the feature cache,
    a chunk of images at a time so that the rows and their distances to the prototypes fit the budget.

    ``projection="all"`` scans every image for every prototype; ``"class"`` scans, for each prototype, only
    the images whose label (``labels``: the dataset's labels as the model's) is the prototype's class.
    Either way ``Patch.segment`` is the prototype (of any class) that pixel is assigned to (eq. 9).
    """
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {PROJECTIONS}, not {projection!r}")
    depths = list(levels)
    blocks = sorted({b for d in depths for b in depth_blocks(d)})
    # per depth and prototype: distance, image index, pixel index, segment of that pixel
    best = {d: np.zeros((len(levels[d].labels), 4)) for d in depths}
    for table in best.values():
        table[:, 0] = np.inf
    total = len(cache.dataset)
    # The scan is the fit's largest computation (images x pixels x prototypes x dimensions): it runs on the
    # model's device, a GPU when there is one; only each chunk's nearest rows come back.
    device = model.device
    prototypes = {d: torch.from_numpy(levels[d].prototypes).to(device) for d in depths}
    if projection == "all":
        groups = [(np.arange(total), {d: np.arange(len(levels[d].labels)) for d in depths})]
    else:
        if labels is None:
            raise ValueError("projection='class' needs the dataset's labels")
        groups = [(np.flatnonzero(labels == label), {d: np.flatnonzero(levels[d].labels == label) for d in depths})
                  for label in np.unique(np.concatenate([levels[d].labels for d in depths]))]
    workers = 1 if projection == "all" or device.type != "cpu" else KMEANS_WORKERS
    chunk = scan_chunk_bytes(cache, blocks, levels, budget // workers)
    scanned = [0]
    lock = threading.Lock()

    def scan(images: np.ndarray, owned: dict[str, np.ndarray]) -> None:
        for chosen, arrays in cache.chunks(blocks, images, chunk):
            activations = {b: torch.from_numpy(a).to(device) for b, a in arrays.items()}
            for depth in depths:
                if len(owned[depth]):  # the classes' prototypes are disjoint: each worker writes its own rows
                    scan_chunk(depth_features(activations, depth), chosen, prototypes[depth], owned[depth],
                               best[depth])
            with lock:
                scanned[0] += len(chosen)
                report_fraction(scanned[0] / total, f"stage 3 of 3, finding the nearest training patches: "
                                f"{scanned[0]:,} / {total:,} images", progress)

    if workers == 1:
        for images, owned in groups:
            scan(images, owned)
    else:  # one class per thread, on one core each, as k-means (``kmeans.one_thread``)
        def scan_class(images: np.ndarray, owned: dict[str, np.ndarray]) -> None:
            with one_thread():
                scan(images, owned)

        with ThreadPoolExecutor(workers, thread_name_prefix="protoscope-patches") as pool:
            futures = [pool.submit(scan_class, images, owned) for images, owned in groups]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    return {depth: level_patches(model, levels[depth], best[depth]) for depth in depths}


def scan_chunk(features: torch.Tensor, chosen: np.ndarray, prototypes: torch.Tensor, owned: np.ndarray,
               best: np.ndarray) -> None:
    """Update ``best`` (distance, image, pixel, segment per prototype) for the prototypes ``owned`` with
    the rows of one chunk of images (``features``: (images, ..., D), the images ``chosen``)."""
    pixels = features[0].numel() // features.shape[-1]
    flat = features.reshape(-1, features.shape[-1])
    candidates = prototypes if len(owned) == len(prototypes) else prototypes[torch.from_numpy(owned).to(flat.device)]
    distances = torch.cdist(flat, candidates)
    rows = distances.argmin(dim=0)  # the first of equal minima, as numpy's: 4x faster down columns
    nearest = distances[rows, torch.arange(len(rows), device=flat.device)].cpu().numpy()
    if len(owned) == len(prototypes):
        segments = distances[rows].argmin(dim=1).cpu().numpy()
    else:  # eq. 9 for the few rows found: their distances to every prototype
        segments = torch.cdist(flat[rows], prototypes).argmin(dim=1).cpu().numpy()
    row_indices = rows.cpu().numpy()
    found = np.stack([nearest, chosen[row_indices // pixels], row_indices % pixels, segments], axis=1)
    closer = found[:, 0] < best[owned, 0]
    best[owned[closer]] = found[closer]


def scan_chunk_bytes(cache: FeatureCache, blocks: list[str], levels: Mapping[str, Level], budget: int) -> int:
    """The ``max_bytes`` of a scan chunk's block arrays such that they, their rows of h-check and the
    rows' distances to every prototype take at most a quarter of the budget."""
    per_image = cache.image_bytes(blocks)
    extra = 0
    for level in levels.values():
        h, w = level.resolution
        extra += 4 * h * w * (level.prototypes.shape[1] + 2 * len(level.labels))
    images = max(1, budget // 4 // (per_image + extra))
    return images * per_image


def level_patches(model: ModelSpec, level: Level, best: np.ndarray) -> list[Patch]:
    """The ``Patch`` of each prototype of ``level`` from its row of ``best`` (distance, image, pixel, segment)."""
    h, w = level.resolution
    patches = []
    for k, (distance, image, pixel, segment) in enumerate(best):
        row, col = divmod(int(pixel), w)
        box = receptive_box(row, col, (h, w), model.input_size)
        patches.append(Patch(k, int(image), row, col, float(distance), int(segment), box))
    return patches
