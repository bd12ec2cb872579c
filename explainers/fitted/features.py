"""Block activations of a whole dataset, computed once per model and data, kept on disk.

A prototype fit at the scale of seed 000's own experiment (CUB-200: 5,994 training images at
224x224, a ResNet34, ten prototypes per class) cannot hold every class's features in memory,
and should not run the network over the folder again when only K/C, the seed or the depth
changes. ``FeatureCache`` is what makes both true:

- every image's outputs of the blocks asked for (and its logits) are written once, as float16
  rows of one flat file per block, under ``.cache/features/<model>-<data>/``; B4, B34 and B234
  fits read the same files, and a fit of B234 after B4 computes only B2 and B3;
- everything downstream reads the images it needs (one class for k-means, a chunk for the
  nearest-patch scan) and never all of them: memory is bounded by a budget, not by the number
  of classes or images;
- the pass over the images is resumable: a block's file is preallocated, batches are written in
  order, and the count of images written is published (atomically, after the data are synced to
  disk) only once they are whole. A fit stopped at any point (a cancel, a crash, a killed server)
  resumes from the images already written and never reads back a half-written batch;
- images are decoded and transformed by a pool of threads one batch ahead of the network, so the
  network does not wait for the disk (PIL's decoders and resizers release the GIL).

Files are read with ``os.pread`` rather than a memory map: a map's pages count in the process's
resident size, which is exactly what the budget is measured on, whereas the kernel's page cache
of a read file does not (and is given back under memory pressure).

float16, because a B234 cache of CUB at 224x224 is 2.1 GB in it (4.2 GB in float32) and post-ReLU
activations lose nothing that k-means or a nearest-patch search can see: rows are normalised per
pixel (eq. 8) and float16 keeps three significant digits. Everything computed from the rows is
float32.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from ..data.datasets import DatasetSpec
from ..engine.trace import trace
from ..runtime.errors import FitCancelled
from ..runtime.progress import Progress, report_fraction
from .store import cache_dir, write_atomically

if TYPE_CHECKING:
    from ..models import ModelSpec

FEATURES_VERSION = 1
FEATURES_KIND = "features"  # .cache/features/
LOGITS = "logits"  # the name under which the logits of every image are kept beside the blocks
DEFAULT_BUDGET_MB = 4096
STORED = np.dtype(np.float16)  # block outputs
EXACT = np.dtype(np.float32)  # the logits: few, and a float16 rounding could flip a near-tie of the argmax
LOADER_THREADS = 2

_FOLDER_LOCKS: dict[str, threading.Lock] = {}
_FOLDER_LOCKS_GUARD = threading.Lock()


def memory_budget() -> int:
    """Bytes a fit may hold beyond the model: ``$PROTOSCOPE_FIT_BUDGET_MB`` (default 4096)."""
    return int(float(os.environ.get("PROTOSCOPE_FIT_BUDGET_MB", DEFAULT_BUDGET_MB)) * 2 ** 20)


class FeatureFiles:
    """The reading side of a feature cache: its folder, the shapes of what it holds and how many images.
    Small and picklable, so that a worker of another process (a Ray task's) reads the same files."""

    def __init__(self, folder: Path, shapes: dict[str, tuple[int, ...]], images: int) -> None:
        self.folder, self.shapes, self.images = folder, shapes, images

    # ---- shapes and files ----
    def shape(self, name: str) -> tuple[int, ...]:
        """One image's array of ``name``: (channels, height, width) of a block, (classes,) of the logits."""
        return self.shapes[name]

    def image_bytes(self, names: Sequence[str], stored: bool = False) -> int:
        """Bytes of one image's arrays of ``names``: in memory (float32), or on disk (``stored``)."""
        return int(sum(np.prod(self.shape(n)) * (stored_dtype(n) if stored else EXACT).itemsize for n in names))

    def _data(self, name: str) -> Path:
        return self.folder / f"{name}.bin"

    def _meta(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def done(self, name: str) -> int:
        """How many images (from the first, in order) have ``name`` written and synced to disk."""
        try:
            meta = json.loads(self._meta(name).read_text())
        except (OSError, ValueError):
            return 0
        fits = (meta.get("version") == FEATURES_VERSION and meta.get("images") == self.images
                and tuple(meta.get("shape", ())) == self.shape(name) and meta.get("dtype") == stored_dtype(name).name
                and self._data(name).is_file()
                and self._data(name).stat().st_size == self.images * self.image_bytes([name], stored=True))
        return int(meta.get("done", 0)) if fits else 0

    def complete(self, names: Sequence[str]) -> bool:
        return all(self.done(name) == self.images for name in names)

    # ---- reading ----
    def read(self, name: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 array (len(indices), *shape) of images already written (``ensure`` first)."""
        indices = np.asarray(indices, dtype=np.int64)
        written = self.done(name)
        if len(indices) and (indices.min() < 0 or indices.max() >= written):
            raise RuntimeError(f"{name} of image {int(indices.max())} is not in the feature cache yet "
                               f"({written} of {self.images} written): call ensure first")
        size = self.image_bytes([name], stored=True)
        out = np.empty((len(indices), *self.shape(name)), dtype=np.float32)
        handle = os.open(self._data(name), os.O_RDONLY)
        try:
            for i, index in enumerate(indices):
                raw = os.pread(handle, size, int(index) * size)
                out[i] = np.frombuffer(raw, dtype=stored_dtype(name)).reshape(self.shape(name))
        finally:
            os.close(handle)
        return out

    def chunks(self, names: Sequence[str], indices: Sequence[int] | np.ndarray,
               max_bytes: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """The arrays of ``names`` for ``indices``, a chunk of images at a time (at most ``max_bytes`` of
        float32 per chunk, at least one image): (indices of the chunk, name -> array)."""
        indices = np.asarray(indices, dtype=np.int64)
        step = max(1, max_bytes // max(self.image_bytes(names), 1))
        for first in range(0, len(indices), step):
            chosen = indices[first:first + step]
            yield chosen, {name: self.read(name, chosen) for name in names}


class FeatureCache(FeatureFiles):
    """The outputs of a model's blocks (and its logits) for every image of a dataset, on disk.

    ``ensure(names)`` computes what is missing in one pass over the images (resuming where an
    earlier pass stopped); ``read(name, indices)`` and ``chunks(...)`` give float32 arrays of the
    images asked for. ``folder=None`` keys the folder by the model's and data's fingerprints in the
    machine's cache; a dataset without a fingerprint, or ``persistent=False``, gets a temporary
    folder, deleted with the cache object.
    """

    def __init__(self, model: "ModelSpec", dataset: DatasetSpec, folder: Path | None = None,
                 persistent: bool = True) -> None:
        self.model, self.dataset = model, dataset
        self._temporary: tempfile.TemporaryDirectory | None = None
        if folder is None and persistent and dataset.fingerprint:
            folder = cache_dir() / FEATURES_KIND / cache_name(model, dataset)
        if folder is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="protoscope-features-")
            folder = Path(self._temporary.name)
        super().__init__(folder, {}, len(dataset))
        self.network_batches = 0  # passes this object ran (tests count them: a resumed fit recomputes nothing)

    def shape(self, name: str) -> tuple[int, ...]:
        """One image's array of ``name``: (channels, height, width) of a block, (classes,) of the logits."""
        if name == LOGITS:
            return (self.model.num_classes,)
        return tuple(self.model.block_shapes[name])

    def files(self, names: Sequence[str]) -> FeatureFiles:
        """The reading side of ``names`` alone (``FeatureFiles``), for a worker of another process."""
        return FeatureFiles(self.folder, {name: self.shape(name) for name in names}, self.images)

    # ---- computing ----
    def ensure(self, names: Sequence[str], progress: Progress | None = None, batch_size: int = 128,
               budget: int | None = None) -> None:
        """Compute whatever of ``names`` (block names, or ``LOGITS``) is not on disk yet, in one pass over
        the images from the first one any of them lacks; ``progress`` gets (fraction, "n / N images")."""
        names = list(dict.fromkeys(names))
        with self._locked():
            start = min(self.done(name) for name in names)
            total = len(self.dataset)
            if start >= total:
                report_fraction(1.0, f"features of {total:,} images read from the cache", progress)
                return
            missing = [name for name in names if self.done(name) < total]
            files = {name: self._open(name, fresh=self.done(name) == 0) for name in missing}
            try:
                self._pass(missing, files, start, self._batch(missing, batch_size, budget), progress)
            finally:
                for handle in files.values():
                    os.close(handle)

    def _batch(self, names: Sequence[str], batch_size: int, budget: int | None) -> int:
        """Images per pass: ``batch_size``, fewer when a batch's activations (three times what is recorded:
        the network's own intermediate tensors are of the same order) would not fit a quarter of the budget."""
        per_image = 3 * self.image_bytes(list(self.model.blocks) + [LOGITS])
        return max(1, min(batch_size, (budget or memory_budget()) // 4 // max(per_image, 1)))

    def _open(self, name: str, fresh: bool) -> int:
        self.folder.mkdir(parents=True, exist_ok=True)
        if fresh:
            self._write_meta(name, 0)
        handle = os.open(self._data(name), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(handle, len(self.dataset) * self.image_bytes([name], stored=True))  # preallocated, sparse
        return handle

    def _write_meta(self, name: str, done: int) -> None:
        meta = {"version": FEATURES_VERSION, "images": len(self.dataset), "shape": list(self.shape(name)),
                "dtype": stored_dtype(name).name, "done": done, "model": self.model.name, "data": self.dataset.name,
                "split": self.dataset.split}
        write_atomically(self._meta(name), lambda temporary: temporary.write_text(json.dumps(meta)))

    def _pass(self, names: list[str], files: dict[str, int], start: int, batch: int,
              progress: Progress | None) -> None:
        total = len(self.dataset)
        blocks = [name for name in names if name != LOGITS]
        done = {name: self.done(name) for name in names}
        for first, inputs in prefetched(self.model, self.dataset, start, batch):
            recorded = _record(self.model, inputs, blocks)
            self.network_batches += 1
            stop = first + len(inputs)
            for name in names:
                if done[name] >= stop:
                    continue  # already written by an earlier pass (a block cached further than the others)
                values = recorded[name].cpu().numpy().astype(stored_dtype(name), copy=False)
                os.pwrite(files[name], np.ascontiguousarray(values).tobytes(),
                          first * self.image_bytes([name], stored=True))
            for name in names:
                if done[name] < stop:
                    os.fsync(files[name])  # the data are on disk before the count that says so
                    self._write_meta(name, stop)
                    done[name] = stop
            report_fraction(stop / total, f"{stop:,} / {total:,} images", progress)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer per folder: threads of this process (a lock) and other processes (``flock``)."""
        key = str(self.folder.resolve())
        with _FOLDER_LOCKS_GUARD:
            lock = _FOLDER_LOCKS.setdefault(key, threading.Lock())
        self.folder.mkdir(parents=True, exist_ok=True)
        with lock, open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()
            self._temporary = None

    def __enter__(self) -> "FeatureCache":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def stored_dtype(name: str) -> np.dtype:
    return EXACT if name == LOGITS else STORED


def cache_name(model: "ModelSpec", dataset: DatasetSpec) -> str:
    """The folder of one model's features of one dataset (split included in its fingerprint)."""
    text = f"{FEATURES_VERSION}|{model.fingerprint}|{dataset.fingerprint}"
    return f"{model.name.replace('/', '_')}-{dataset.split}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _record(model: "ModelSpec", inputs: torch.Tensor, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
    """One pass (a job of the compute thread): the blocks' outputs and the logits."""
    with torch.inference_mode():
        result = trace(model, inputs, blocks=list(blocks))
    return {**result.activations, LOGITS: result.logits}


def prefetched(model: "ModelSpec", dataset: DatasetSpec, start: int, batch: int,
               stop: int | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """(first index, transformed batch) from ``start`` to ``stop``, decoded by a thread pool one batch
    ahead of the caller: while the network runs on one batch, the next is read and transformed."""
    stop = len(dataset) if stop is None else stop
    firsts = list(range(start, stop, batch))
    if not firsts:
        return

    def load(first: int) -> torch.Tensor:
        indices = range(first, min(first + batch, stop))
        return torch.stack(list(pool.map(lambda i: model.transform(dataset[i][0]), indices)))

    with ThreadPoolExecutor(max_workers=LOADER_THREADS, thread_name_prefix="protoscope-loader") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="protoscope-batches") as ahead:
        pending = ahead.submit(load, firsts[0])
        for i, first in enumerate(firsts):
            inputs = pending.result()
            if i + 1 < len(firsts):
                pending = ahead.submit(load, firsts[i + 1])
            yield first, inputs


__all__ = ["DEFAULT_BUDGET_MB", "FeatureCache", "FitCancelled", "LOGITS", "cache_name", "memory_budget", "prefetched"]
