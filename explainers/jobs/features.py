"""A prototype fit's feature pass on Ray: Ray Data ``map_batches`` over model actors, written to the same
feature cache (``.cache/features/``) the local fit writes and reads, so the fit that follows (and the
Prototypes page) finds every image's features there and runs no network pass.

The files are the cache's own (``explainers.fitted.features``): per block (and the logits) one flat file of
float16 rows (float32 for the logits), preallocated, and a JSON record of how many images, from the first,
are written and synced to disk. Batches are the local pass's (the same images, the same size, from the same
first image), so every row is the one the local pass would write, bit for bit. They finish in any order;
the record only ever moves over a whole prefix, after its data are synced, so a job stopped at any point
(Ctrl-C, a lost worker) leaves a cache that the next run, local or on Ray, resumes from.
"""
from __future__ import annotations

import fcntl
import json
import os
from typing import Any, Sequence

from ..fitted.features import FEATURES_VERSION, LOGITS, FeatureCache, stored_dtype
from ..runtime.progress import Progress, report
from .engines import EngineOptions, JobInterrupted, actor_shape, connect
from .outputs import write_text
from .work import FAULT_VARIABLE, ModelWorker

__all__ = ["FEATURE_BATCH", "feature_names", "ray_feature_pass"]

FEATURE_BATCH = 128  # images per pass: the local fit's (PrototypeExplainer's batch_size)


def feature_names(model: Any, depth: str) -> list[str]:
    """What a fit of ``depth`` reads from the cache: the blocks of the depth, B2-B4 whatever the depth (one
    pass serves B4, B34, B234 and KMEx, as the local fit records), and the logits."""
    blocks = {f"B{digit}" for digit in depth[1:]} if depth != "pooled" else {"B4"}
    usual = {name for name in ("B2", "B3", "B4") if name in model.blocks}
    return sorted((blocks & set(model.blocks)) | usual) + [LOGITS]


class _Writer:
    """The cache's files for ``names``, written at any image's place, the record moved over whole prefixes."""

    def __init__(self, cache: FeatureCache, names: Sequence[str]) -> None:
        self.cache, self.names = cache, list(names)
        self.total = len(cache.dataset)
        self.done = {name: cache.done(name) for name in self.names}
        self.finished: dict[int, int] = {}  # first image of a batch written -> its stop
        cache.folder.mkdir(parents=True, exist_ok=True)
        self.lock = open(cache.folder / ".lock", "w")
        fcntl.flock(self.lock, fcntl.LOCK_EX)  # one writer per folder, as the cache's own pass
        self.files = {}
        for name in self.names:
            if self.done[name] == 0:
                self._record(name, 0)
            handle = os.open(cache.folder / f"{name}.bin", os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(handle, self.total * cache.image_bytes([name], stored=True))
            self.files[name] = handle

    def _record(self, name: str, done: int) -> None:
        meta = {"version": FEATURES_VERSION, "images": self.total, "shape": list(self.cache.shape(name)),
                "dtype": stored_dtype(name).name, "done": done, "model": self.cache.model.name,
                "data": self.cache.dataset.name, "split": self.cache.dataset.split}
        write_text(self.cache.folder / f"{name}.json", json.dumps(meta))

    def write(self, first: int, stop: int, arrays: dict[str, bytes]) -> int:
        """Write images ``first:stop``; returns how many images, from the first, are now whole on disk."""
        for name in self.names:
            if self.done[name] < stop:
                os.pwrite(self.files[name], arrays[name], first * self.cache.image_bytes([name], stored=True))
        self.finished[first] = stop
        prefix = min(self.done.values())
        while prefix in self.finished:
            prefix = self.finished.pop(prefix)
        for name in self.names:
            if self.done[name] < prefix:
                os.fsync(self.files[name])  # the data are on disk before the record that says so
                self._record(name, prefix)
                self.done[name] = prefix
        return prefix

    def close(self) -> None:
        for handle in self.files.values():
            os.close(handle)
        self.files = {}
        fcntl.flock(self.lock, fcntl.LOCK_UN)
        self.lock.close()


class _FeatureActor:
    """A Ray Data actor: one model; each call gets one batch's (first, stop) and returns its features."""

    def __init__(self, model: str, device: str | None, dataset: str, split: str, names: list[str],
                 fault: str | None) -> None:
        self.worker = ModelWorker(model, device, fault)
        self.dataset, self.split, self.names = dataset, split, names

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        first, stop = int(batch["first"][0]), int(batch["stop"][0])
        found = self.worker.features(self.dataset, self.split, first, stop, self.names)
        return {"first": [first], "stop": [stop], **{name: [found[name]] for name in self.names}}


def ray_feature_pass(model_source: str, dataset_source: str, split: str, cache: FeatureCache, names: Sequence[str],
                     options: EngineOptions, progress: Progress | None = None) -> int:
    """Compute on Ray what ``cache`` lacks of ``names``, from the first image any of them lacks; returns the
    number of images computed (0 when the cache was complete)."""
    names = list(names)
    total = len(cache.dataset)
    start = min(cache.done(name) for name in names)
    if start >= total:
        report(total, total, f"features of {total:,} images already in the cache", progress)
        return 0
    started = connect(options.address, options.timeout)
    import ray

    writer = _Writer(cache, names)
    try:
        workers, resources, device = actor_shape(options)
        batches = [{"first": first, "stop": min(first + FEATURE_BATCH, total)}
                   for first in range(start, total, FEATURE_BATCH)]
        fault = os.environ.get(FAULT_VARIABLE)
        computed = ray.data.from_items(batches, override_num_blocks=len(batches)).map_batches(
            _FeatureActor, batch_size=1, concurrency=workers, batch_format="numpy",
            fn_constructor_args=(model_source, device, dataset_source, split, names, fault),
            num_cpus=resources.get("num_cpus"), num_gpus=resources.get("num_gpus"),
            max_restarts=options.retries, max_task_retries=options.retries)
        try:
            for out in computed.iter_batches(batch_size=None, batch_format="numpy"):
                for row in range(len(out["first"])):
                    first, stop = int(out["first"][row]), int(out["stop"][row])
                    prefix = writer.write(first, stop, {name: bytes(out[name][row]) for name in names})
                    report(prefix, total, f"{prefix:,} / {total:,} images", progress)
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as error:
            raise JobInterrupted(f"the feature pass on Ray stopped ({type(error).__name__}): the images written are "
                                 "kept in the feature cache; run the same command again to resume") from None
    finally:
        writer.close()
        if started:
            ray.shutdown()
    return total - start
