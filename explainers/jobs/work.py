"""The work of one batch of a job, the same whichever engine runs it: in this process, or in a Ray actor
that holds one model (``ModelWorker``).

- ``explain``: one shared trace for the batch's images (``explain_batch``'s pass: one forward, at most one
  backward), every method from it (``explain_trace``); per image, the overlay sheet as PNG bytes, the raw
  maps (block resolution) and one row per map.
- ``evaluate``: ``explainers.evaluation.evaluate`` on the batch's images (an ``Evaluation`` of them).
- ``features``: the block outputs and logits of images ``first:stop`` of a dataset, as the feature cache
  stores them (float16 blocks, float32 logits), from the same pass the cache's own writer runs.

An image that cannot be read is reported (name, reason) and left out; the rest of the batch is done.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..data import load_dataset
from ..display import grid, overlay
from ..engine import trace
from ..evaluation import Evaluation, EvaluationSettings, evaluate
from ..fitted.features import LOGITS, stored_dtype
from ..methods import explain_trace, method_info
from ..models import as_batch, load_model
from ..runtime import ImageError
from .sources import ImageRef, load_ref

__all__ = ["EvaluationPart", "ExplainedImage", "ModelWorker", "PANEL", "explain_images"]

PANEL = 160  # pixels a side of each panel of an overlay sheet (the Saliency page's download)
# zlib level of the sheets' PNGs: level 1 encodes a 640x182 sheet of 4 panels 5.7x faster than PIL's
# default 6 (16 ms against 91 ms, measured) for a file 1.3x larger (60 KB against 45 KB); same pixels.
SHEET_COMPRESSION = 1
FAULT_VARIABLE = "PROTOSCOPE_JOBS_FAULT"  # a test hook: see ModelWorker


@dataclass
class ExplainedImage:
    """One image's results: the overlay sheet (PNG bytes; ``None`` until ``png`` draws it from ``drawing``),
    the raw maps (method -> block-resolution map) and one CSV row per map."""

    name: str
    sheet: bytes | None
    maps: dict[str, np.ndarray]
    rows: list[dict[str, Any]]
    drawing: tuple[Image.Image, list[tuple[str, np.ndarray, bool]], str] | None = None

    def png(self) -> bytes:
        """The overlay sheet's PNG bytes, drawn now if the worker left it to the caller (``render=False``)."""
        if self.sheet is None:
            assert self.drawing is not None
            self.sheet, self.drawing = sheet_png(*self.drawing), None
        return self.sheet


def sheet_png(image: Image.Image, maps: Sequence[tuple[str, np.ndarray, bool]], cmap: str) -> bytes:
    """The overlay sheet of one image: the image, then each (title, heatmap, signed) over it, PNG-encoded."""
    panels = [("image", image.convert("RGB").resize((PANEL, PANEL), Image.Resampling.BILINEAR))]
    panels += [(title, overlay(image, heatmap, signed, cmap, size=PANEL)) for title, heatmap, signed in maps]
    buffer = io.BytesIO()
    grid(panels, columns=min(len(panels), 5)).save(buffer, format="PNG", compress_level=SHEET_COMPRESSION)
    return buffer.getvalue()


@dataclass
class EvaluationPart:
    """An ``Evaluation`` of some images of a job (``names``, in order), and the images left out (name, why)."""

    names: list[str]
    evaluation: Evaluation | None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def loaded(refs: Sequence[ImageRef]) -> tuple[list[ImageRef], list[Image.Image], list[tuple[str, str]]]:
    """The images of ``refs`` that can be read, and (name, why) of those that cannot."""
    kept, images, skipped = [], [], []
    for ref in refs:
        try:
            images.append(load_ref(ref))
            kept.append(ref)
        except ImageError as error:
            skipped.append((ref.name, str(error)))
    return kept, images, skipped


def explain_images(model: Any, refs: Sequence[ImageRef], methods: Sequence[str], block: str,
                   target: int | None = None, cmap: str = "jet", render: bool = True
                   ) -> tuple[list[ExplainedImage], list[tuple[str, str]]]:
    """Every method for every readable image of ``refs``, from one shared trace (as ``explain_batch``).

    ``render=False`` leaves each sheet to be drawn by ``ExplainedImage.png`` (in this process: by the
    threads that write the files while the next batch is explained)."""
    kept, images, skipped = loaded(refs)
    if not kept:
        return [], skipped
    infos = [method_info(name) for name in methods]
    blocks = list(model.blocks) if any(m.needs_all_blocks for m in infos) else [block]
    shared = trace(model, as_batch(model, images), target, gradients=any(m.needs_gradients for m in infos),
                   blocks=blocks)
    found = explain_trace(model, shared, list(methods), block)
    probabilities = shared.probabilities.detach().float().cpu().numpy()
    results = []
    for i, (ref, image, maps) in enumerate(zip(kept, images, found)):
        target_class = int(shared.targets[i])
        drawn = []
        rows = []
        for info in infos:
            one = maps[info.name]
            drawn.append((f"{info.label} ({one.block})", one.heatmap, one.signed))
            rows.append({"image": ref.name, "class": target_class, "class_name": model.class_name(target_class),
                         "score": float(probabilities[i, target_class]), "method": info.name, "block": one.block,
                         "forwards": one.forwards, "backwards": one.backwards, "passes": one.forwards + one.backwards,
                         "seconds": one.seconds + one.trace_seconds})
        explained = ExplainedImage(ref.name, None, {n: maps[n].raw for n in methods}, rows, (image, drawn, cmap))
        if render:
            explained.png()
        results.append(explained)
    return results, skipped


class ModelWorker:
    """One model, loaded once, and the work of a job's batches on it (``explain``, ``evaluate``, ``features``).

    The engines run it in this process or as a Ray actor. ``fault`` is a test hook (a file path): the
    worker's second call, while that file does not exist, creates it and ends the process at once, as a
    machine that dies mid-job would (after a restart the file exists and the work goes on).
    """

    def __init__(self, model: str, device: str | None = None, fault: str | None = None) -> None:
        self.model = load_model(model, device=device)
        self.fault = fault
        self.calls = 0
        self.datasets: dict[tuple[str, str], Any] = {}

    def _tick(self) -> None:
        self.calls += 1
        if self.fault and self.calls == 2 and not Path(self.fault).exists():
            Path(self.fault).write_text("crashed once\n")
            os._exit(1)

    def ready(self) -> str:
        """The model's name, once it is loaded (an engine waits for this before the first batch)."""
        return self.model.name

    def explain(self, refs: Sequence[ImageRef], methods: Sequence[str], block: str, target: int | None,
                cmap: str, render: bool = True) -> tuple[list[ExplainedImage], list[tuple[str, str]]]:
        self._tick()
        return explain_images(self.model, refs, methods, block, target, cmap, render)

    def evaluate(self, refs: Sequence[ImageRef], methods: Sequence[str], block: str, metrics: Sequence[str],
                 settings: EvaluationSettings) -> EvaluationPart:
        self._tick()
        kept, images, skipped = loaded(refs)
        if not kept:
            return EvaluationPart([], None, skipped)
        found = evaluate(self.model, images, list(methods), block, metrics=metrics, settings=settings)
        return EvaluationPart([ref.name for ref in kept], found, skipped)

    def features(self, dataset: str, split: str, first: int, stop: int, names: Sequence[str]) -> dict[str, bytes]:
        """Images ``first:stop`` of ``dataset`` (a name or folder; ``split``): each of ``names`` (blocks and
        ``LOGITS``) as the bytes the feature cache stores, one image after another."""
        self._tick()
        key = (dataset, split)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(dataset, split)
        data = self.datasets[key]
        inputs = torch.stack([self.model.transform(data[i][0]) for i in range(first, stop)])
        blocks = [name for name in names if name != LOGITS]
        with torch.inference_mode():
            found = trace(self.model, inputs, blocks=blocks)
        arrays = {**found.activations, LOGITS: found.logits}
        return {name: np.ascontiguousarray(arrays[name].cpu().numpy().astype(stored_dtype(name), copy=False)).tobytes()
                for name in names}

