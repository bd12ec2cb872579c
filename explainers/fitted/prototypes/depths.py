"""The depths of a prototype explainer and what it reads at each: the blocks, z (eq. 2) and h-check (eq. 7-8)."""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from ...data.datasets import DatasetSpec
from ...engine.trace import trace
from ...models import BLOCK_NAMES, ModelSpec
from ...runtime.errors import UserInputError
from ...runtime.maps import upsample
from ...runtime.progress import Progress, scaled
from ..features import LOGITS, FeatureCache

DEPTHS = ("pooled", "B4", "B34", "B234", "B1234")
HCHECK_FLOOR = 1e-12  # the smallest pixel-vector norm h-check divides by: an all-zero pixel stays zero


def depth_blocks(depth: str, model: ModelSpec | None = None) -> tuple[str, ...]:
    """``"B234"`` -> ``("B2", "B3", "B4")``; ``"pooled"`` -> ``("B4",)`` (z is B4 averaged)."""
    if depth == "pooled":
        return (BLOCK_NAMES[-1],)
    if (not isinstance(depth, str) or not depth.startswith("B") or not depth[1:].isdigit()
            or depth[1:] != "".join(sorted(set(depth[1:])))):
        raise UserInputError(f"depth must be 'pooled' or blocks in increasing order such as {', '.join(DEPTHS[1:])}, "
                             f"not {depth!r}")
    blocks = tuple(f"B{digit}" for digit in depth[1:])
    if model is not None:
        missing = [b for b in blocks if b not in model.blocks]
        if missing:
            raise UserInputError(f"{model.name} has no block {', '.join(missing)} (it has {', '.join(model.blocks)}): "
                                 f"choose a depth of its blocks, such as {', '.join(DEPTHS)}")
    return blocks


def suffix_depths(depth: str) -> list[str]:
    """The chain of explainers the attribution walks through, deepest first: B234 -> [B34, B234].

    The last block itself needs none (eq. 11 is evaluated there directly), so B4 -> [B4]
    keeps the B4 segments for display only.
    """
    digits = depth[1:]
    return ["B" + digits[i:] for i in range(len(digits) - 1, -1, -1) if len(digits) - i >= 2] or [depth]


def hcheck(activations: dict[str, torch.Tensor], blocks: Sequence[str], out: torch.Tensor | None = None
           ) -> torch.Tensor:
    """Eq. 7-8: upsample each block to the shallowest block's resolution, divide every pixel
    vector by D_b * ||u_r^(b)||, concatenate. Returns (N, h', w', sum_b D_b): ``out`` when given
    (a buffer of that shape, written in place: a fit reuses one instead of faulting in new pages).

    An all-zero pixel (every channel switched off by ReLU) stays zero rather than dividing by 0.
    """
    first = activations[blocks[0]]
    size = (int(first.shape[-2]), int(first.shape[-1]))
    if out is None:
        out = torch.empty((first.shape[0], *size, sum(int(activations[b].shape[1]) for b in blocks)))
    offset = 0
    for block in blocks:
        u = upsample(activations[block], size)
        norm = u.norm(dim=1, keepdim=True).clamp_min(HCHECK_FLOOR)
        channels = u.shape[1]
        # written straight into its columns of the (N, h', w', D) rows: no concatenation, the same values
        torch.div(u, channels * norm, out=out[..., offset:offset + channels].permute(0, 3, 1, 2))
        offset += channels
    return out


def pooled(activations: dict[str, torch.Tensor]) -> torch.Tensor:
    """z = avg.pool(h) (eq. 2): the embedding the linear classifier reads."""
    return activations[BLOCK_NAMES[-1]].mean(dim=(2, 3))


def depth_features(activations: dict[str, torch.Tensor], depth: str, out: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """What the explainer of ``depth`` clusters and assigns: z for KMEx, h-check of the depth's blocks otherwise
    (into ``out`` when given: (N, D) for z, (N, h', w', D) for h-check)."""
    if depth == "pooled":
        return pooled(activations) if out is None else out.copy_(pooled(activations))
    return hcheck(activations, depth_blocks(depth), out)


def image_batches(model: ModelSpec, dataset: DatasetSpec,
                  batch_size: int = 128) -> Iterator[tuple[int, torch.Tensor]]:
    """(start index, transformed image batch) over a dataset, in order."""
    for start in range(0, len(dataset), batch_size):
        stop = min(start + batch_size, len(dataset))
        yield start, torch.stack([model.transform(dataset[i][0]) for i in range(start, stop)])


def block_activations(model: ModelSpec, inputs: torch.Tensor, blocks: Sequence[str]) -> dict[str, torch.Tensor]:
    """The blocks' outputs for ``inputs``, on the CPU, where the prototypes are."""
    with torch.inference_mode():
        return on_cpu(trace(model, inputs, blocks=list(blocks)).activations)


def on_cpu(activations: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Block outputs moved to the CPU: the fitted prototypes live there as numpy arrays (k-means is
    scikit-learn's), and one image's activations are small beside the network's pass on its device."""
    return {name: values.cpu() for name, values in activations.items()}


def recorded_blocks(model: ModelSpec, blocks: Sequence[str]) -> list[str]:
    """What a fit's pass over the images writes to the feature cache: the blocks it needs, and B2-B4 and the
    logits whatever it needs (one pass then serves B4, B34, B234, KMEx and Table 2: the pages' defaults,
    at 350 KB per image of a ResNet34 at 224x224; only B1234 needs B1, twice that again)."""
    usual = [name for name in ("B2", "B3", "B4") if name in model.blocks]
    return sorted(set(blocks) | set(usual)) + [LOGITS]


def fit_stage(progress: Progress | None, low: float, high: float, number: int, what: str) -> Progress | None:
    """Stage ``number`` of a fit as [low, high] of ``progress``, its messages prefixed with what it is."""
    inner = scaled(progress, low, high)
    if inner is None:
        return None
    return lambda fraction, text: inner(fraction, f"stage {number} of 3, {what}: {text}")


def embeddings(model: ModelSpec, dataset: DatasetSpec, batch_size: int = 128,
               progress: Progress | None = None, features: FeatureCache | None = None) -> np.ndarray:
    """Pooled embeddings z (N, D) of a whole dataset (eq. 2), from the feature cache of B4 (computed
    once per model and data, shared with the prototype fits; ``features``: another cache to use)."""
    cache = features if features is not None else FeatureCache(model, dataset)
    try:
        cache.ensure([BLOCK_NAMES[-1], LOGITS], fit_stage(progress, 0.0, 1.0, 1, "embedding images"), batch_size)
        out = [block.mean(axis=(2, 3))
               for _, arrays in cache.chunks([BLOCK_NAMES[-1]], np.arange(len(dataset)), 2 ** 26)
               for block in arrays.values()]
    finally:
        if features is None:
            cache.close()
    return np.concatenate(out).astype(np.float32)
