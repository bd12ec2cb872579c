"""The public API: ``explain`` one method, ``explain_many`` methods from one shared trace."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from . import compute
from .maps import upsample
from .methods import Method, MethodOutput, method_info
from .models import ModelSpec
from .trace import Trace, trace


BATCHED_FAMILIES = ("perturbation", "prototype")  # methods whose own passes are submitted batch by batch


class MethodUnavailableError(ValueError):
    """A method that does not apply to this model or block (the message says why)."""


@dataclass
class Explanation:
    """One saliency map and how it was made.

    ``raw`` is at the block's resolution, ``heatmap`` at the input's (bilinear upsampling).
    ``forwards``/``backwards`` count the passes this map needed (shared ones included);
    ``seconds`` is the method's own time, ``trace_seconds`` the shared pass it used.
    """

    method: str
    block: str
    target: int
    raw: np.ndarray
    heatmap: np.ndarray
    signed: bool
    forwards: int
    backwards: int
    seconds: float
    trace_seconds: float
    extras: dict[str, Any] = field(default_factory=dict)


def as_batch(model: ModelSpec, images: Image.Image | torch.Tensor | Sequence[Image.Image]) -> torch.Tensor:
    """A PIL image, a list of them, or an already transformed (C,H,W)/(N,C,H,W) tensor -> (N,C,H,W)."""
    if isinstance(images, Image.Image):
        return model.transform(images).unsqueeze(0)
    if isinstance(images, torch.Tensor):
        return images.unsqueeze(0) if images.dim() == 3 else images
    return torch.stack([model.transform(image) for image in images])


def explain_batch(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
                  target: int | Sequence[int] | None = None) -> list[dict[str, Explanation]]:
    """Explain N images with several methods from ONE forward (and at most one backward) pass."""
    chosen = [method_info(name) for name in methods]
    if block not in model.blocks:
        raise ValueError(f"block {block!r} not in this model; it has {', '.join(model.blocks)}")
    for method in chosen:
        reason = method.available(model, block)
        if reason:
            raise MethodUnavailableError(reason)
    batch = as_batch(model, images)
    blocks = list(model.blocks) if any(m.needs_all_blocks for m in chosen) else [block]
    shared = trace(model, batch, target, gradients=any(m.needs_gradients for m in chosen), blocks=blocks)
    results: list[dict[str, Explanation]] = [{} for _ in range(batch.shape[0])]
    for method in chosen:
        started = time.perf_counter()
        output = _compute(method, shared, block, model)
        if not isinstance(output, MethodOutput):
            output = MethodOutput(maps=output)
        heatmaps = upsample(output.maps, model.input_size)
        seconds = time.perf_counter() - started
        for i, result in enumerate(results):
            result[method.name] = Explanation(
                method=method.name, block=block, target=int(shared.targets[i]),
                raw=output.maps[i].float().numpy(), heatmap=heatmaps[i].numpy(), signed=method.signed,
                forwards=shared.forwards + output.forwards,
                backwards=(shared.backwards if method.needs_gradients else 0) + output.backwards,
                seconds=seconds / len(results), trace_seconds=shared.seconds / len(results),
                extras=output.extras_of(i),
            )
    return results


def _compute(method: Method, shared: Trace, block: str, model: ModelSpec) -> MethodOutput | torch.Tensor:
    """A method's computation: one job of the compute thread (``explainers.compute``), except for the
    methods that run many passes of their own, which submit one job per batch so that other sessions'
    passes run between them (and report their progress from the caller's thread)."""
    if method.family in BATCHED_FAMILIES:
        return method.compute(shared, block, model)
    return compute.run(method.compute, shared, block, model)


def explain_many(model: ModelSpec, image: Any, methods: Sequence[str], block: str = "B4",
                 target: int | None = None) -> dict[str, Explanation]:
    """Several methods for one image, all from one shared trace."""
    return explain_batch(model, image, methods, block, target)[0]


def explain(model: ModelSpec, image: Any, method: str, block: str = "B4", target: int | None = None) -> Explanation:
    """One method for one image (``image``: PIL image or transformed tensor)."""
    return explain_many(model, image, [method], block, target)[method]


def predict(model: ModelSpec, image: Any, top: int = 5) -> list[tuple[int, float]]:
    """The ``top`` classes and their probabilities for one image (one forward pass, no hooks)."""
    probabilities = compute.run(_probabilities, model, as_batch(model, image))[0]
    values, indices = probabilities.topk(min(top, probabilities.numel()))
    return [(int(i), float(v)) for i, v in zip(indices, values)]


@torch.inference_mode()
def _probabilities(model: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    return model.net(inputs).softmax(dim=1)


__all__ = ["Explanation", "MethodUnavailableError", "Trace", "explain", "explain_batch", "explain_many", "predict"]
