"""Feature diversity: diversity@5 (eq. 6) of a layer on images, and the SLDD-Model's Feature Diversity Loss (eq. 2)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

TOP_K = 5  # diversity@5


# --- eq. 6: diversity@5 ---------------------------------------------------------------------------

def _spatial_softmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(2).float()
    return flat.softmax(dim=2)


def _top_features(weights: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of the k highest-weighted features of each image's class; ties in weight (every
    feature of a ternary row weighs alpha) go to the feature more active on that image (its mean map)."""
    activation = maps.flatten(2).mean(dim=2)  # (N, F)
    by_activation = activation.argsort(dim=1, descending=True, stable=True)
    rows = weights[classes]  # (N, F)
    weight_in_that_order = rows.gather(1, by_activation)
    by_weight = weight_in_that_order.argsort(dim=1, descending=True, stable=True)
    return by_activation.gather(1, by_weight)[:, :k]


def diversity_per_image(feature_maps: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray,
                        classes: torch.Tensor | np.ndarray | Sequence[int], k: int = TOP_K) -> np.ndarray:
    """Eq. 6 for each image: the k feature maps M^k with the highest weight for the image's class
    (``classes``: the predicted ones), each turned into S^k by a softmax over its pixels, then
    sum over pixels of max(S^1, ..., S^k) / k. In [1/k, 1]: 1/k when the k maps are one map,
    1 when they peak in k different places.

    Images whose class has fewer than k non-zero weights get NaN (the paper's code leaves them out).
    ``feature_maps``: (N, F, H, W); ``weights``: (C, F), the layer reading those F features.
    """
    maps = torch.as_tensor(np.asarray(feature_maps) if not isinstance(feature_maps, torch.Tensor) else feature_maps)
    layer = (weights if isinstance(weights, torch.Tensor) else torch.tensor(np.asarray(weights))).float()
    chosen = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    if maps.dim() != 4 or layer.shape[1] != maps.shape[1]:
        raise ValueError(f"feature maps (N, F, H, W) and weights (C, F) must share F: {tuple(maps.shape)}, "
                         f"{tuple(layer.shape)}")
    top = _top_features(layer, maps, chosen, k)  # (N, k)
    softmaxed = _spatial_softmax(maps)  # (N, F, HW)
    picked = softmaxed.gather(1, top[:, :, None].expand(-1, -1, softmaxed.shape[2]))
    values = picked.amax(dim=1).sum(dim=1) / k
    enough = (layer != 0).sum(dim=1)[chosen] >= k
    return torch.where(enough, values, torch.full_like(values, float("nan"))).numpy()


def diversity_at_5(feature_maps: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray,
                   classes: torch.Tensor | np.ndarray | Sequence[int], k: int = TOP_K) -> float:
    """diversity@5 (eq. 6) of a layer on a batch: the mean of ``diversity_per_image`` over the images whose
    class has at least k non-zero weights (NaN if none has)."""
    values = diversity_per_image(feature_maps, weights, classes, k)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


# --- eq. 2: the Feature Diversity Loss -------------------------------------------------------------

def feature_diversity_loss(maps: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """L_div of the SLDD-Model (used in eq. 2 with weight beta): minus the batch mean of
    sum over pixels of max over features of S_k * (avg_k / max avg) * |w_c,k| / ||w_c||,
    with S_k the spatial softmax of map k, avg_k its mean and c the predicted class. It rewards the
    features a class uses for being active in different places (high where eq. 6 is high), while the
    average-preserving scale keeps a feature that is off from counting as a peak."""
    relevant = weights.abs()[logits.argmax(dim=1)]
    relevant = relevant / (relevant.norm(dim=1, keepdim=True) + 1e-5)
    averages = maps.mean(dim=(2, 3))
    scale = averages / averages.amax(dim=1, keepdim=True).clamp_min(1e-6)
    softmaxed = maps.flatten(2).softmax(dim=2) * scale[..., None]
    weighted = softmaxed * relevant[..., None]
    return -weighted.amax(dim=1).sum() / maps.shape[0]
