"""The public API: ``explain`` one method, ``explain_many`` methods from one shared trace.

Methods with settings of their own take them through ``method_settings``, a mapping
method name -> {setting: value} checked against each method's declaration (``method_info(name).settings``;
an unknown name or a value out of range raises a ``SettingError``, a ``UserInputError``):

    explain(model, image, "clustercam", method_settings={"clustercam": {"q": 4, "alpha": 0.3}})
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from . import compute
from .errors import MethodUnavailableError
from .images import ImageError, load_image
from .maps import upsample
from .methods import Method, MethodOutput, method_info
from .models import ModelSpec
from .settings import UnknownSettingError
from .trace import Trace, trace

MethodSettings = Mapping[str, Mapping[str, Any]]  # method name -> {setting name: value}


BATCHED_FAMILIES = ("perturbation", "prototype")  # methods whose own passes are submitted batch by batch


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


ImageLike = Image.Image | str | Path | np.ndarray | torch.Tensor
ACCEPTED = ("a PIL image, the path of an image file, a numpy array (H,W) or (H,W,C) of uint8 or of floats in [0, 1], "
            "a tensor (C,H,W) or (N,C,H,W) already transformed by model.transform, or a list of these")


def as_batch(model: ModelSpec, images: ImageLike | Sequence[ImageLike]) -> torch.Tensor:
    """Anything that holds images -> the model's input batch (N,C,H,W).

    Accepted: a PIL image; a path (str or Path, read with ``load_image``); a numpy array
    (H,W) or (H,W,C) with C in 1, 3, 4, of uint8 (or other integers in 0..255) or of floats
    in [0, 1]; a float tensor (C,H,W) or (N,C,H,W) taken as already transformed (a uint8
    tensor, as ``torchvision.io.read_image`` gives, is taken as pixels and transformed); or a
    list or tuple of these. Anything else raises a ``TypeError``, and a wrong shape or range
    an ``ImageError``, naming what was given and what is accepted.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4 and images.dtype != torch.uint8:
        return _checked_tensor(model, images)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError(f"no images were given (an empty {type(images).__name__}): give {ACCEPTED}.")
        return _stack([_one_input(model, item, f"item {i}") for i, item in enumerate(images)])
    if isinstance(images, torch.Tensor) and images.dim() == 4:  # uint8 pixels: one image at a time
        return _stack([_one_input(model, item, f"image {i}") for i, item in enumerate(images)])
    return _one_input(model, images, "the image").unsqueeze(0)


def _one_input(model: ModelSpec, item: Any, what: str) -> torch.Tensor:
    """One image of any accepted kind -> the model's input (C,H,W)."""
    if isinstance(item, Image.Image):
        return model.transform(item)
    if isinstance(item, (str, Path)):
        return model.transform(load_image(item))
    if isinstance(item, np.ndarray):
        return model.transform(_array_image(item, what))
    if isinstance(item, torch.Tensor) and item.dtype == torch.uint8 and item.dim() == 3:
        return model.transform(_array_image(item.permute(1, 2, 0).numpy(), what))  # (C,H,W) pixels
    if isinstance(item, torch.Tensor) and item.dim() == 3:
        return _checked_tensor(model, item.unsqueeze(0))[0]
    if isinstance(item, torch.Tensor):
        raise ImageError(f"{what} is a tensor of shape {tuple(item.shape)}: give (C,H,W) or (N,C,H,W).")
    hint = " (a dataset item is (image, label): pass dataset[i][0])" if isinstance(item, (int, np.integer)) else ""
    raise TypeError(f"{what} is {_describe(item)}, which cannot be explained{hint}: give {ACCEPTED}.")


def _array_image(array: np.ndarray, what: str) -> Image.Image:
    """A numpy image (H,W) or (H,W,C) -> PIL, refusing shapes and ranges that would be silently misread."""
    if array.size == 0:
        raise ImageError(f"{what} is an empty array of shape {array.shape}.")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[2] not in (3, 4):
        raise ImageError(f"{what} is an array of shape {array.shape}, channels first: give (H,W,C) "
                         "(array.transpose(1, 2, 0)) or a torch tensor.")
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{what} is an array of shape {array.shape}: give (H,W) greyscale or (H,W,C) "
                         "with 3 (RGB) or 4 (RGBA) channels.")
    return Image.fromarray(_as_uint8(array, what))


def _as_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if np.issubdtype(array.dtype, np.floating):
        low, high = float(np.min(array)), float(np.max(array))
        if not (0.0 <= low and high <= 1.0):  # also catches NaN
            raise ImageError(f"{what} is a float array with values in [{low:.3g}, {high:.3g}]: float images must be "
                             "in [0, 1] (divide 0-255 values by 255), or give uint8.")
        return np.round(array * 255).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer) and array.size and 0 <= array.min() and array.max() <= 255:
        return array.astype(np.uint8)
    raise ImageError(f"{what} is an array of {array.dtype}" + (
        f" with values in [{array.min()}, {array.max()}]" if array.size and array.dtype != bool else "")
        + ": give uint8 (0-255) or floats in [0, 1].")


def _checked_tensor(model: ModelSpec, batch: torch.Tensor) -> torch.Tensor:
    channels = len(model.transform.mean)
    if batch.shape[1] != channels:
        kind = "greyscale (1 channel)" if channels == 1 else f"{channels} channels"
        raise ImageError(f"the tensor has {batch.shape[1]} channels but {model.name} "
                         f"takes {kind}: give a PIL image or an array instead, and it is converted.")
    return batch


def _stack(inputs: list[torch.Tensor]) -> torch.Tensor:
    shapes = sorted({tuple(x.shape) for x in inputs})
    if len(shapes) > 1:
        raise ImageError(f"the images have different shapes after the model's transform ({shapes}): give "
                         "tensors of one size, or PIL images and arrays, which are resized.")
    return torch.stack(inputs)


def _describe(item: Any) -> str:
    text = repr(item)
    return f"{type(item).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def explain_batch(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
                  target: int | Sequence[int] | None = None,
                  method_settings: MethodSettings | None = None) -> list[dict[str, Explanation]]:
    """Explain N images with several methods from ONE forward (and at most one backward) pass."""
    chosen = _available(model, methods, block)
    _resolved(chosen, method_settings)  # refused before the pass, not after
    batch = as_batch(model, images)
    blocks = list(model.blocks) if any(m.needs_all_blocks for m in chosen) else [block]
    shared = trace(model, batch, target, gradients=any(m.needs_gradients for m in chosen), blocks=blocks)
    return explain_trace(model, shared, methods, block, method_settings)


def _available(model: ModelSpec, methods: Sequence[str], block: str) -> list[Method]:
    chosen = [method_info(name) for name in methods]
    if block not in model.blocks:
        raise ValueError(f"block {block!r} not in this model; it has {', '.join(model.blocks)}")
    for method in chosen:
        reason = method.available(model, block)
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
                  method_settings: MethodSettings | None = None) -> list[dict[str, Explanation]]:
    """Several methods for the images of a trace already taken, one dict per image: no pass of its
    own beyond those a method runs itself (perturbation, LRP), which its counts include.

    ``shared`` comes from ``trace(model, inputs, targets, gradients=..., blocks=...)``: it must hold
    ``block`` (every block for the prototype attribution) and, for gradient methods, its gradients.
    One trace of every block with gradients serves every depth and method of its images and targets.
    ``method_settings`` (method name -> {setting: value}) go to the methods that declare them.
    """
    chosen = _available(model, methods, block)
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
        output = _compute(method, shared, block, model, settings[method.name])
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
                extras=output.extras_of(i), settings=dict(settings[method.name]),
            )
    return results


def _compute(method: Method, shared: Trace, block: str, model: ModelSpec,
             settings: Mapping[str, Any]) -> MethodOutput | torch.Tensor:
    """A method's computation: one job of the compute thread (``explainers.compute``), except for the
    methods that run many passes of their own, which submit one job per batch so that other sessions'
    passes run between them (and report their progress from the caller's thread)."""
    if method.family in BATCHED_FAMILIES:
        return method.compute(shared, block, model, **settings)
    return compute.run(method.compute, shared, block, model, **settings)


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
                 target: int | None = None, method_settings: MethodSettings | None = None) -> dict[str, Explanation]:
    """Several methods for one image, all from one shared trace."""
    return explain_batch(model, image, methods, block, target, method_settings)[0]


def explain(model: ModelSpec, image: Any, method: str, block: str = "B4", target: int | None = None,
            method_settings: MethodSettings | None = None) -> Explanation:
    """One method for one image (``image``: PIL image or transformed tensor). ``method_settings``:
    ``{method: {setting: value}}``, as for ``explain_many``."""
    return explain_many(model, image, [method], block, target, method_settings)[method]


def predict(model: ModelSpec, image: Any, top: int = 5) -> list[tuple[int, float]]:
    """The ``top`` classes and their probabilities for one image (one forward pass, no hooks)."""
    probabilities = compute.run(_probabilities, model, as_batch(model, image))[0]
    values, indices = probabilities.topk(min(top, probabilities.numel()))
    return [(int(i), float(v)) for i, v in zip(indices, values)]


@torch.inference_mode()
def _probabilities(model: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    return model.net(inputs).softmax(dim=1)


__all__ = ["Explanation", "MethodUnavailableError", "Trace", "explain", "explain_batch", "explain_many",
           "explain_trace", "predict", "recombine"]
