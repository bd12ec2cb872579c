"""The public API: ``explain`` one method, ``explain_many`` methods from one shared trace.

Methods with settings of their own take them through ``method_settings``, a mapping
method name -> {setting: value} checked against each method's declaration (``method_info(name).settings``;
an unknown name or a value out of range raises a ``SettingError``, a ``UserInputError``):

    explain(model, image, "clustercam", method_settings={"clustercam": {"q": 4, "alpha": 0.3}})
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..engine.trace import Trace, ranked, trace
from ..fitted.store import TrainingData
from ..models import ModelSpec
from ..models.inputs import as_batch
from ..runtime import compute
from ..runtime.devices import describe_device, is_out_of_memory, release_memory
from ..runtime.errors import MethodUnavailableError
from ..runtime.maps import upsample
from ..runtime.settings import UnknownSettingError
from .base import Method, MethodOutput, method_info

MethodSettings = Mapping[str, Mapping[str, Any]]  # method name -> {setting name: value}


@dataclass
class Explanation:
    """One saliency map and how it was made.

    ``raw`` is at the block's resolution, ``heatmap`` at the input's (bilinear upsampling).
    ``forwards``/``backwards`` count the passes this map needed (shared ones included);
    ``seconds`` is the method's own time, ``trace_seconds`` the shared pass it used.
    ``settings`` are the values of the method's declared settings it was made with (defaults included).
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
    settings: dict[str, Any] = field(default_factory=dict)


def explain_batch(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
                  target: int | Sequence[int] | None = None,
                  method_settings: MethodSettings | None = None,
                  training: TrainingData | None = None) -> list[dict[str, Explanation]]:
    """Explain N images with several methods from ONE forward (and at most one backward) pass.

    ``training``: the labelled training images of the methods fitted on them (the k-means attribution):
    a dataset name, an ImageFolder path or a ``DatasetSpec``; None: the model's own training set."""
    chosen = _available(model, methods, block, training)
    _resolved(chosen, method_settings)  # refused before the pass, not after
    batch = as_batch(model, images)
    blocks = list(model.blocks) if any(m.needs_all_blocks for m in chosen) else [block]
    attention = sorted({need for m in chosen for need in m.attention})
    shared = trace(model, batch, target, gradients=any(m.needs_gradients for m in chosen), blocks=blocks,
                   attention=attention)
    return explain_trace(model, shared, methods, block, method_settings, training)


def _available(model: ModelSpec, methods: Sequence[str], block: str,
               training: TrainingData | None = None) -> list[Method]:
    chosen = [method_info(name) for name in methods]
    if block not in model.blocks:
        raise ValueError(f"block {block!r} not in this model; it has {', '.join(model.blocks)}")
    for method in chosen:
        reason = method.available(model, block, training)
        if reason:
            raise MethodUnavailableError(reason)
    return chosen


def _resolved(chosen: Sequence[Method], method_settings: MethodSettings | None) -> dict[str, dict[str, Any]]:
    """Each chosen method's settings, validated against its declaration, defaults filled in."""
    given = dict(method_settings or {})
    names = [m.name for m in chosen]
    stray = [name for name in given if name not in names]
    if stray:
        raise UnknownSettingError(f"settings were given for {', '.join(repr(n) for n in stray)}, which "
                                  f"{'is' if len(stray) == 1 else 'are'} not among the methods explained "
                                  f"({', '.join(names)})")
    return {method.name: method.resolve(given.get(method.name)) for method in chosen}


def explain_trace(model: ModelSpec, shared: Trace, methods: Sequence[str], block: str = "B4",
                  method_settings: MethodSettings | None = None,
                  training: TrainingData | None = None) -> list[dict[str, Explanation]]:
    """Several methods for the images of a trace already taken, one dict per image: no pass of its
    own beyond those a method runs itself (perturbation, LRP), which its counts include.

    ``shared`` comes from ``trace(model, inputs, targets, gradients=..., blocks=...)``: it must hold
    ``block`` (every block for the prototype attribution) and, for gradient methods, its gradients.
    One trace of every block with gradients serves every depth and method of its images and targets.
    ``method_settings`` (method name -> {setting: value}) go to the methods that declare them;
    ``training`` to the methods fitted on training images (``explain_batch``).
    """
    chosen = _available(model, methods, block, training)
    settings = _resolved(chosen, method_settings)
    needed = list(model.blocks) if any(m.needs_all_blocks for m in chosen) else [block]
    absent = [name for name in needed if name not in shared.activations]
    if absent:
        raise ValueError(f"the trace did not record {', '.join(absent)}: trace with blocks={needed}")
    if any(m.needs_gradients for m in chosen) and (shared.gradients is None or block not in shared.gradients):
        raise ValueError(f"gradient methods need the trace's gradients at {block}: trace with gradients=True")
    results: list[dict[str, Explanation]] = [{} for _ in range(shared.inputs.shape[0])]
    for method in chosen:
        started = time.perf_counter()
        own = {**settings[method.name], **({"training": training} if method.needs_training else {})}
        output = _compute(method, shared, block, model, own)
        if not isinstance(output, MethodOutput):
            output = MethodOutput(maps=output)
        _check_finite(method, output.maps, model, block)
        maps = output.maps.detach().float().cpu()
        heatmaps = upsample(maps, model.input_size)
        seconds = time.perf_counter() - started
        for i, result in enumerate(results):
            result[method.name] = Explanation(
                method=method.name, block=block, target=int(shared.targets[i]),
                raw=maps[i].numpy(), heatmap=heatmaps[i].numpy(), signed=method.signed,
                forwards=shared.forwards + output.forwards,
                backwards=(shared.backwards if method.needs_gradients else 0) + output.backwards,
                seconds=seconds / len(results), trace_seconds=shared.seconds / len(results),
                extras=output.extras_of(i), settings=dict(settings[method.name]),
            )
    return results


def _check_finite(method: Method, maps: torch.Tensor, model: ModelSpec, block: str) -> None:
    """A map with an infinite or undefined value is never handed on to be drawn: no scaling can make
    it honest, and every other value of it is suspect (an overflow or 0/0 somewhere in the method)."""
    bad = ~torch.isfinite(maps)
    if bad.any():
        raise MethodUnavailableError(
            f"{method.label} gave {int(bad.sum())} non-finite values (inf or NaN) of {maps.numel()} on "
            f"{model.name} at {block}, so its map is not shown: its computation overflowed or divided by zero here")


def _compute(method: Method, shared: Trace, block: str, model: ModelSpec,
             settings: Mapping[str, Any]) -> MethodOutput | torch.Tensor:
    """A method's computation, in the caller's thread. Its passes through the network are jobs of the
    compute thread (``explainers.runtime.compute``): the shared trace already ran; LRP's pass, the masked and
    ablated batches of the perturbation methods and a prototype fit's passes submit their own, batch by
    batch. What is left here (weighted sums of the trace's tensors, a small eigendecomposition) is too
    small to run in parallel, so it needs no job: a CAM view then waits for at most one batch of
    another session's Score-CAM, once, for its trace."""
    try:
        return method.compute(shared, block, model, **settings)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        release_memory(model.device)  # a GPU's memory is the user's to size (batch size), not a bug
        batch = "; lower its batch size in its settings" if "batch_size" in settings else ""
        raise MethodUnavailableError(
            f"{method.label} ran out of memory on {describe_device(model.device)} for {model.name} at {block}, "
            f"so its map is not shown{batch}") from error


def recombine(model: ModelSpec, explanation: Explanation, settings: Mapping[str, Any]) -> Explanation:
    """``explanation`` with its method's display-only ``settings`` applied (Cluster-CAM's alpha): no pass.

    Equal to explaining with those settings from the start; the other settings must be given to
    ``explain`` (``SettingError`` otherwise). A cache of explanations keys on the other settings only
    and recombines for these.
    """
    method = method_info(explanation.method)
    display = method.display_only()
    others = [name for name in settings if name not in display]
    if others:
        raise UnknownSettingError(f"{method.label}: only {', '.join(display) or 'no setting'} can be changed "
                                  f"without recomputing, not {', '.join(others)}")
    values = {name: value for name, value in method.resolve({**explanation.settings, **settings}).items()
              if name in settings}
    if not values:
        return explanation
    assert method.recombine is not None  # checked when the method was registered
    raw, extras = method.recombine(explanation.extras, **values)
    heatmap = upsample(torch.from_numpy(raw).unsqueeze(0), model.input_size)[0].numpy()
    return replace(explanation, raw=raw, heatmap=heatmap, extras=extras, settings={**explanation.settings, **values})


def explain_many(model: ModelSpec, image: Any, methods: Sequence[str], block: str = "B4",
                 target: int | None = None, method_settings: MethodSettings | None = None,
                 training: TrainingData | None = None) -> dict[str, Explanation]:
    """Several methods for one image, all from one shared trace (``training``: as for ``explain_batch``)."""
    return explain_batch(model, image, methods, block, target, method_settings, training)[0]


def explain(model: ModelSpec, image: Any, method: str, block: str = "B4", target: int | None = None,
            method_settings: MethodSettings | None = None, training: TrainingData | None = None) -> Explanation:
    """One method for one image (``image``: PIL image or transformed tensor). ``method_settings``:
    ``{method: {setting: value}}``, and ``training``, as for ``explain_many``."""
    return explain_many(model, image, [method], block, target, method_settings, training)[method]


def predict(model: ModelSpec, image: Any, top: int = 5) -> list[tuple[int, float]]:
    """The ``top`` classes and their probabilities for one image (one forward pass, no hooks)."""
    return ranked(compute.run(_logits, model, as_batch(model, image))[0], top)


@torch.inference_mode()
def _logits(model: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    return model.net(inputs.to(model.device)).cpu()


__all__ = ["Explanation", "MethodUnavailableError", "Trace", "explain", "explain_batch", "explain_many",
           "explain_trace", "predict", "recombine"]
