"""Masked inputs, shared by Score-CAM and Cluster-CAM: the input times s(Up(F)), a block's map
upsampled to the input and min-max scaled to [0, 1], scored by the network.

Masked inputs run in batches (of the size measured fastest for the network, ``explainers.engine.batching``)
under ``torch.inference_mode()`` through ``model.inference_net``, a copy with batch norms folded
into the convolutions and channels-last memory (both only change the order of floating-point sums;
``explainers.models.inference``). Each batch is one job of the shared compute thread (``explainers.runtime.compute``):
a long method of one session yields to other sessions' passes between its batches. The scores come
batch by batch, so that the method reports its progress as it goes (``explainers.runtime.progress.report``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from ..engine import batching
from ..runtime import compute
from ..runtime.maps import upsample

if TYPE_CHECKING:
    from ..models import ModelSpec

__all__ = ["batches", "distinct_maps", "masked_scores", "scaled_masks"]


def batches(total: int, size: int) -> Iterator[slice]:
    """Slices of ``range(total)`` of at most ``size`` each."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def scaled_masks(maps: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """s(Up(F)) for (M, h, w) maps: bilinear upsampling to ``size``, then min-max scaling to [0, 1].

    Returns the (M, H, W) masks and the (M, h, w) maps scaled by the same affine map, so that
    ``upsample(scaled) == masks`` (upsampling is linear and preserves constants). A constant
    map has no scaling (0/0) and gives an all-zero mask.
    """
    upsampled = upsample(maps, size)
    low = upsampled.amin(dim=(1, 2), keepdim=True)
    span = upsampled.amax(dim=(1, 2), keepdim=True) - low
    safe = torch.where(span > 0, span, 1)
    masks = torch.where(span > 0, (upsampled - low) / safe, 0)
    scaled = torch.where(span > 0, (maps - low) / safe, 0)
    return masks, scaled


def masked_scores(model: "ModelSpec", image: torch.Tensor, maps: torch.Tensor, target: int,
                  batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """Softmax probability of ``target`` for ``image`` (C, H, W) masked by s(Up(F)) of each of the
    (M, h, w) ``maps``: the Hadamard product X * H of Score-CAM (eq. 3-4) and Cluster-CAM (eq. 19),
    yielded batch by batch (``torch.cat`` them for all M).

    Masks are made batch by batch, so memory does not grow with the block's channel count.
    ``batch_size`` None: the size measured for the network.
    """
    network = model.inference_net
    batch_size = batch_size or batching.batch_size(model)
    for part in batches(maps.shape[0], batch_size):
        yield compute.run_batch(_masked_batch, network, image, maps[part], target)


@torch.inference_mode()
def _masked_batch(network: torch.nn.Module, image: torch.Tensor, maps: torch.Tensor, target: int) -> torch.Tensor:
    masks, _ = scaled_masks(maps, (image.shape[-2], image.shape[-1]))
    batch = (image.unsqueeze(0) * masks.unsqueeze(1)).contiguous(memory_format=torch.channels_last)
    return network(batch).softmax(dim=1)[:, target]


def distinct_maps(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The channels with a defined Score-CAM mask, grouped by identical min-max scaled map.

    Returns the indices of the non-constant channels of (K, h, w) ``maps`` and, for each, the
    index of its group. Channels whose scaled maps are equal to the last bit are affine images
    of each other (a*F + b, a > 0), so s(Up(.)) gives them the same mask; in a ReLU network
    they are mostly maps with a single active cell.
    """
    flat = maps.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    varying = (high > low).squeeze(1).nonzero().squeeze(1)
    scaled = (flat[varying] - low[varying]) / (high[varying] - low[varying])
    # Grouped on the CPU: a (K, h*w) matrix is quick to copy, and torch.unique has had silent errors on Apple's
    # MPS (pytorch#104879, #111173), where a wrong group would score one channel's mask for another.
    _, group = torch.unique(scaled.cpu(), dim=0, return_inverse=True)
    return varying, group.to(maps.device)
