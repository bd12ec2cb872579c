"""The CAM family. Each method only computes what its paper adds (channel weights or a
pixel-wise product); the shared trace supplies activations A and gradients g = dy_c/dA.

Maps are (N, h, w) tensors at the block's resolution.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .base import register_method

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec


def weighted_sum(activations: torch.Tensor, weights: torch.Tensor, relu: bool = True) -> torch.Tensor:
    """sum_k w_k A^k for (N, K, h, w) activations and (N, K) weights, ReLU'd unless ``relu=False``."""
    maps = torch.einsum("nk,nkhw->nhw", weights, activations)
    return maps.clamp_min(0) if relu else maps


def _grads(trace: "Trace", block: str) -> torch.Tensor:
    if trace.gradients is None or block not in trace.gradients:
        raise ValueError("this method needs gradients: trace the model with gradients=True")
    return trace.gradients[block]


@register_method(
    "cam", label="CAM", family="gradient-free", signed=True, last_block_only=True, requires_gap_head=True,
    description="Last-block features weighted by the classifier column of the target class.",
    reference="Zhou et al. 2016, Learning Deep Features for Discriminative Localization, eq. M_c = sum_k w_k^c f_k",
)
def cam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """CAM: M_c(x, y) = sum_k w^c_k f_k(x, y), signed (Zhou et al. 2016).

    With a GAP + linear head this is R times the per-pixel term of seed 000's Theorem 1
    (eq. 4-5): the logit is the mean of this map plus the bias.
    """
    weights = model.classifier.weight.detach()[trace.targets]
    return weighted_sum(trace.activations[block], weights, relu=False)


@register_method(
    "gradcam", label="Grad-CAM", family="gradient", needs_gradients=True,
    description="Features weighted by their spatially averaged gradient, positive part.",
    reference="Selvaraju et al. 2017, Grad-CAM, eq. 1-2",
)
def gradcam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """alpha_k = mean_ij dy_c/dA^k_ij (eq. 1); L = ReLU(sum_k alpha_k A^k) (eq. 2)."""
    return weighted_sum(trace.activations[block], _grads(trace, block).mean(dim=(2, 3)))


@register_method(
    "gradcampp", label="Grad-CAM++", family="gradient", needs_gradients=True,
    description="Grad-CAM with pixel-wise weights on positive gradients, for several object instances.",
    reference="Chattopadhay et al. 2018, Grad-CAM++, eq. 19 (closed form with the exponential score)",
)
def gradcampp(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """w_k = sum_ij a^k_ij ReLU(g^k_ij), a^k_ij = g^2 / (2 g^2 + sum_ab A^k_ab g^3) (eq. 19)."""
    activations, grads = trace.activations[block], _grads(trace, block)
    squared, cubed = grads.pow(2), grads.pow(3)
    denominator = 2 * squared + activations.sum(dim=(2, 3), keepdim=True) * cubed
    alpha = torch.where(denominator != 0, squared / torch.where(denominator != 0, denominator, 1), 0)
    return weighted_sum(activations, (alpha * grads.clamp_min(0)).sum(dim=(2, 3)))


@register_method(
    "xgradcam", label="XGrad-CAM", family="gradient", needs_gradients=True,
    description="Gradients weighted by the normalised activations (sensitivity + conservation axioms).",
    reference="Fu et al. 2020, Axiom-based Grad-CAM (XGrad-CAM), eq. 13",
)
def xgradcam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """alpha_k = sum_ij (A^k_ij / sum_ab A^k_ab) dy_c/dA^k_ij; map = ReLU(sum_k alpha_k A^k)."""
    activations, grads = trace.activations[block], _grads(trace, block)
    total = activations.sum(dim=(2, 3), keepdim=True)
    share = activations / torch.where(total != 0, total, 1)
    return weighted_sum(activations, (share * grads).sum(dim=(2, 3)))


@register_method(
    "layercam", label="LayerCAM", family="gradient", needs_gradients=True,
    description="Each activation weighted by its own positive gradient: finer maps at shallow blocks.",
    reference="Jiang et al. 2021, LayerCAM, eq. 5-6",
)
def layercam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """M = ReLU(sum_k ReLU(g^k) * A^k), pixel-wise weights (eq. 5-6)."""
    product = _grads(trace, block).clamp_min(0) * trace.activations[block]
    return product.sum(dim=1).clamp_min(0)


@register_method(
    "hirescam", label="HiResCAM", family="gradient", needs_gradients=True, signed=True,
    description="Gradient times activation summed over channels: faithful to the model's computation.",
    reference="Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM, eq. 6",
)
def hirescam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """sum_k g^k * A^k, signed; equals CAM / R at the last block of a GAP + linear model."""
    return (_grads(trace, block) * trace.activations[block]).sum(dim=1)


def first_component(matrix: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Projection of the (N, K, h, w) maps on their first right singular vector, as (N, h, w).

    The SVD fixes a direction only up to sign; the sign is chosen so that the projection
    correlates positively with ``reference`` (N, h, w).

    With A the (h*w, K) rows of one map, A V_1 = sigma_1 U_1, and U_1, V_1 are the leading
    eigenvectors of the smaller of A A^T (h*w square) and A^T A (K square): one symmetric
    eigendecomposition of a 49 x 49 matrix at B4 of a 224 x 224 network instead of the SVD of
    a 49 x 1280 one (12 ms -> under 1 ms on Lite0). The Gram matrix is formed in float64,
    since it squares the condition number, on the CPU (Apple's MPS has no float64; the
    decomposition is too small to gain from a GPU).
    """
    n, k, h, w = matrix.shape
    rows = matrix.permute(0, 2, 3, 1).reshape(n, h * w, k).cpu().double()
    if h * w <= k:
        values, vectors = torch.linalg.eigh(rows @ rows.transpose(1, 2))
        projection = vectors[:, :, -1] * values[:, -1].clamp_min(0).sqrt()[:, None]
    else:
        _, vectors = torch.linalg.eigh(rows.transpose(1, 2) @ rows)
        projection = (rows @ vectors[:, :, -1:]).squeeze(2)
    projection = projection.to(device=matrix.device, dtype=matrix.dtype).reshape(n, h, w)
    agreement = (projection * (reference - reference.mean(dim=(1, 2), keepdim=True))).sum(dim=(1, 2))
    flip = torch.where(agreement < 0, -1.0, 1.0)
    total = projection.sum(dim=(1, 2))
    flip = torch.where(agreement == 0, torch.where(total < 0, -1.0, 1.0), flip)
    return projection * flip[:, None, None]


@register_method(
    "eigencam", label="Eigen-CAM", family="gradient-free",
    description="First principal component of the block's features; class-agnostic.",
    reference="Muhammad & Yeasin 2020, Eigen-CAM, eq. 4 (projection on V_1)",
)
def eigencam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """L = A V_1: activations projected on their first right singular vector (no gradient, no target)."""
    activations = trace.activations[block]
    return first_component(activations, activations.sum(dim=1))


@register_method(
    "eigengradcam", label="EigenGrad-CAM", family="gradient", needs_gradients=True, signed=True,
    description="First principal component of gradient x activation: Eigen-CAM made class-specific.",
    reference="Muhammad & Yeasin 2020 (Eigen-CAM) applied to g*A, as in the lecture (seed 001)",
)
def eigengradcam(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """Projection of g*A on its first right singular vector, signed to agree with sum_k g^k A^k."""
    product = _grads(trace, block) * trace.activations[block]
    return first_component(product, product.sum(dim=1))
