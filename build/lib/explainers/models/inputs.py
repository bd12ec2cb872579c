"""Anything that holds images, turned into a model's input batch: ``as_batch``.

Below the API (``explainers.methods.explanation``) and the prototype explainers
(``explainers.fitted.prototypes``), which both take images in every form a user has them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.images import ImageError, load_image
from .spec import ModelSpec

__all__ = ["ACCEPTED", "ImageLike", "as_batch"]

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
        return model.transform(_array_image(item.permute(1, 2, 0).cpu().numpy(), what))  # (C,H,W) pixels, any device
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
    if len({x.device for x in inputs}) > 1:  # a PIL image beside a GPU tensor: the trace moves the batch
        inputs = [x.cpu() for x in inputs]
    return torch.stack(inputs)


def _describe(item: Any) -> str:
    text = repr(item)
    return f"{type(item).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
