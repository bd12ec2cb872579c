"""The trace engine: ONE forward pass with hooks on every block, plus at most ONE backward.

Every explanation method is a function of a ``Trace``; side-by-side views compute the trace
once and derive every method from it (pytorch-grad-cam runs a pass per method instead).
"""
from __future__ import annotations

import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import torch
from torch import nn

from ..runtime import compute
from ..runtime.errors import BlockError, UserInputError
from ..runtime.hooks import Tap, tapped
from .attention import AttentionCapture, AttentionTrace

if TYPE_CHECKING:
    from ..models import ModelSpec


@dataclass
class Trace:
    """What one pass through the model recorded, for a batch of N images.

    ``activations[b]`` and ``gradients[b]`` are (N, D_b, H_b, W_b); gradients are of the
    target logit of each image with respect to the block's output (None when not asked).
    """

    inputs: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    activations: dict[str, torch.Tensor]
    gradients: dict[str, torch.Tensor] | None
    forwards: int
    backwards: int
    seconds: float
    attention: AttentionTrace | None = None  # a transformer's attention maps, when a method asked for them

    @property
    def probabilities(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)

    def top(self, count: int = 5, image: int = 0) -> list[tuple[int, float]]:
        """The ``count`` most likely classes of one image with their probabilities (``ranked``)."""
        return ranked(self.logits[image], count)


def ranked(logits: torch.Tensor, count: int = 5) -> list[tuple[int, float]]:
    """The ``count`` highest classes of one image's ``logits`` (C,) and their softmax probabilities, ordered by
    the logits: where float32 rounds probabilities to a tie (an untrained network's near-zero logits), the
    first is still the argmax that "the predicted class" explains."""
    _, indices = logits.detach().float().topk(min(count, logits.numel()))
    probabilities = logits.detach().float().softmax(dim=0)[indices]
    return [(int(i), float(p)) for i, p in zip(indices.cpu(), probabilities.cpu())]


@contextmanager
def block_hooks(blocks: dict[str, nn.Module], layouts: Mapping[str, Any] | None = None,
                also: Mapping[nn.Module, Tap] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record each block's output during the ``with`` body, for the passes of this request only.

    The recording is a tap (``explainers.runtime.hooks``): another session's pass through the same
    shared modules at the same time records nothing here. The tap hands the network a clone
    of the block's output and keeps the original, so an in-place operation downstream
    (``ReLU(inplace=True)``, ``out += identity``) changes the clone and never what was
    recorded; gradients still flow through the clone.

    ``layouts`` (a transformer's ``TokenGrid`` per block name): the block's patch tokens are recorded on their
    grid (N, C, h, w), and the network gets the output rebuilt from that grid (equal values), so gradients with
    respect to the grid flow. ``also``: further taps (module -> tap returning None) run before a block's own.
    """
    layouts = layouts or {}
    captured: dict[str, torch.Tensor] = {}

    def recorder(name: str):
        def record(output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor):
                raise BlockError(f"Block {name} returns {type(output).__name__}, not a tensor: choose another module.")
            layout = layouts.get(name)
            if layout is None:
                captured[name] = output
                return output.clone()
            grid = layout.to_grid(output)
            captured[name] = grid
            return layout.from_grid(grid, output)

        return record

    taps: dict[nn.Module, Tap] = dict(also or {})
    for name, module in blocks.items():
        taps[module] = _both(taps[module], recorder(name)) if module in taps else recorder(name)
    with tapped(taps):
        yield captured


def _both(first: Tap, second: Tap) -> Tap:
    def both(output: torch.Tensor) -> torch.Tensor | None:
        first(output)
        return second(output)

    return both


def trace(model: "ModelSpec", inputs: torch.Tensor, targets: int | Sequence[int] | torch.Tensor | None = None,
          gradients: bool = False, blocks: Sequence[str] | None = None, attention: Sequence[str] = ()) -> Trace:
    """Run the model once on ``inputs`` (N, C, H, W) and record every block. The inputs go to the model's
    device; what the trace holds is on that device.

    ``targets``: one class for all images, one per image, or None for the predicted class.
    ``gradients``: also run ONE backward pass of the sum of the target logits, giving the
    gradient at every block; parameters' ``.grad`` are left untouched.
    ``attention``: for a transformer, what of its attention to record (``explainers.engine.attention``): "maps",
    "gradients" (dy_c/dA in the same backward pass) and/or "layers" (LeGrad's per-layer gradients).

    The pass is one job of the shared compute thread (``explainers.runtime.compute``); what it records
    belongs to this call alone, whatever other sessions run on the same model meanwhile.
    """
    if inputs.dim() == 3:
        inputs = inputs.unsqueeze(0)
    chosen = {name: model.blocks[name] for name in (blocks or model.blocks)}
    if ("gradients" in attention or "layers" in attention) and not gradients:
        raise ValueError("attention gradients need the trace's backward pass: trace with gradients=True")
    return compute.run(_trace_job, model, inputs, targets, gradients, chosen, tuple(attention))


def _trace_job(model: "ModelSpec", inputs: torch.Tensor, targets: int | Sequence[int] | torch.Tensor | None,
               gradients: bool, chosen: dict[str, nn.Module], attention: tuple[str, ...] = ()) -> Trace:
    started = time.perf_counter()
    inputs = inputs.to(model.device)
    capture = AttentionCapture.of(model, attention)
    layouts = model.transformer.layouts if getattr(model, "transformer", None) is not None else None
    recorded = None
    with block_hooks(chosen, layouts, capture.taps() if capture else None) as captured, \
            torch.set_grad_enabled(gradients):
        if gradients:
            inputs = inputs.detach().requires_grad_(True)
        with capture.exposing() if capture else nullcontext():
            logits = model.net(inputs)
        chosen_targets = _resolve_targets(model, logits, targets)
        grads = None
        if gradients:
            layer_grads = capture.layer_gradients(chosen_targets) if capture and "layers" in attention else None
            score = logits.gather(1, chosen_targets[:, None]).sum()
            names = list(captured)
            maps = [m.weights for m in capture.maps] if capture and "gradients" in attention else []
            values = torch.autograd.grad(score, [captured[n] for n in names] + maps)
            grads = {name: value.detach() for name, value in zip(names, values)}
            if capture:
                recorded = capture.result(values[len(names):] if maps else None, layer_grads)
        elif capture:
            recorded = capture.result(None, None)
    missing = [name for name in chosen if name not in captured]
    if missing:
        raise RuntimeError(f"block {', '.join(missing)} did not run in the forward pass of {model.name}")
    activations = {name: captured[name].detach() for name in chosen}
    return Trace(inputs=inputs.detach(), logits=logits.detach(), targets=chosen_targets,
                 activations=activations, gradients=grads, forwards=1, backwards=int(gradients),
                 seconds=time.perf_counter() - started, attention=recorded)


def _resolve_targets(model: "ModelSpec", logits: torch.Tensor,
                     targets: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    """The class to explain for each image: the predicted one, or those given (checked against the model's
    classes: ``UserInputError`` for a count that does not fit or a class out of range)."""
    n = logits.shape[0]
    if targets is None:
        return logits.detach().argmax(dim=1)
    values = torch.as_tensor(targets, dtype=torch.long).reshape(-1).to(logits.device)
    if values.numel() == 1:
        values = values.expand(n)
    if values.numel() != n:
        raise UserInputError(f"{values.numel()} target classes were given for {n} images: give one class for all "
                             "of them, one per image, or None for each image's predicted class.")
    for value in values.unique().tolist():
        model.check_target(value)
    return values.clone()
