"""Cluster-CAM (Feng et al. 2023, seed 002, eq. 17-22): the block's channels in Q clusters (k-means,
or spectral clustering); each cluster's mean map masks the input (``masking``); the mask the
network scores highest is the cognition-base, the lowest the cognition-scissors, and
H = alpha * base - (1 - alpha) * scissors. With the shared trace, Q + 1 forward passes.

Settings: Q and the clustering decide the passes; alpha only recombines the stored base and
scissors maps (``ClusterCAM.raw``), so it is declared display-only and ``recombine`` applies it to
a computed result without running the network.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from scipy.spatial.distance import cdist
from sklearn.cluster import KMeans, SpectralClustering

from ..runtime import compute
from ..runtime.maps import upsample
from ..runtime.progress import current_listener, report
from ..runtime.settings import Setting
from .base import MethodOutput, register_method
from .masking import masked_scores, scaled_masks

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

CLUSTERS = 6  # Q: the paper's Table 2 setting ("Here Q = 6 in Cluster-CAM")
# alpha of eq. 22. The paper prints no value; its figures fix a range. In Fig. 3 the base
# holds both dogs and the scissors only the spaniel, yet the final map keeps only the
# elkhound: where both maps are high (~1) the result must vanish, alpha - (1 - alpha) <= 0,
# so alpha <= 0.5; where only the base is high the map must stay, alpha > 0. The largest
# alpha that still cuts what the scissors select keeps the base's weight highest: 0.5.
ALPHA = 0.5
CLUSTERINGS = ("kmeans", "spectral")

SETTINGS = (
    Setting("q", int, CLUSTERS, "Clusters of the block's channels. The paper uses Q = 6; too few clusters mix "
            "object and background, too many split the object. Q masked passes.", low=2, high=16, step=1,
            label="Clusters Q"),
    Setting("alpha", float, ALPHA, "H = alpha x base - (1 - alpha) x scissors (eq. 22). Changing alpha "
            "recombines the stored maps: no network pass.", low=0.0, high=1.0, step=0.05, display_only=True,
            label="alpha (balance of base and scissors)"),
    Setting("clustering", str, "kmeans", "k-means on the flattened maps, or spectral clustering on "
            "exp(-distance) similarities (eq. 17), as the paper discusses.", choices=CLUSTERINGS,
            choice_labels={"kmeans": "k-means", "spectral": "spectral"}, label="Clustering"),
)


@dataclass
class ClusterCAM:
    """Everything Cluster-CAM found for one image; ``raw``/``heatmap`` recombine it for any alpha
    without running the network again.

    ``representatives`` (Q, h, w): the cluster means (eq. 18); ``scaled`` (Q, h, w): the same
    maps under the affine scaling that makes ``upsample(scaled) == masks``; ``masks`` (Q, H, W):
    s(Up(mean)) in [0, 1], the masks of eq. 19; ``scores`` (Q,): the target's softmax
    probability for each masked input (eq. 19); ``labels`` (K,): each channel's cluster.
    """

    representatives: np.ndarray
    scaled: np.ndarray
    masks: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    base: int
    scissors: int
    alpha: float
    clustering: str
    target: int

    @property
    def q(self) -> int:
        return len(self.scores)

    def raw(self, alpha: float | None = None) -> np.ndarray:
        """H = alpha * base - (1 - alpha) * scissors (eq. 22) at the block's resolution, signed."""
        alpha = self.alpha if alpha is None else float(alpha)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1] (eq. 22), not {alpha}")
        return alpha * self.scaled[self.base] - (1 - alpha) * self.scaled[self.scissors]

    def heatmap(self, alpha: float | None = None) -> np.ndarray:
        """``raw(alpha)`` upsampled: alpha * mask_base - (1 - alpha) * mask_scissors at input resolution."""
        raw = torch.from_numpy(self.raw(alpha)).unsqueeze(0)
        return upsample(raw, self.masks.shape[1:])[0].numpy()


def cluster_channels(maps: torch.Tensor, q: int, clustering: str = "kmeans", seed: int = 0) -> np.ndarray:
    """Cluster the K feature maps (K, h, w) into at most ``q`` groups; labels 0..q'-1, each used.

    ``kmeans``: scikit-learn's k-means on the flattened maps, Euclidean distance (seed 002,
    sec. 3.1). ``spectral``: spectral clustering on the similarity S(i, j) = exp(-||F_i - F_j||)
    of eq. 17, with distances divided by their median so that the similarity does not depend
    on the block's scale (eq. 14 normalised Laplacian, eq. 16 eigenvectors, then k-means).
    """
    if clustering not in CLUSTERINGS:
        raise ValueError(f"clustering must be one of {', '.join(CLUSTERINGS)}, not {clustering!r}")
    return compute.run(_cluster_job, maps, q, clustering, seed)


def _cluster_job(maps: torch.Tensor, q: int, clustering: str, seed: int) -> np.ndarray:
    features = maps.flatten(1).cpu().double().numpy()
    distinct = len(np.unique(features, axis=0))
    q = min(q, distinct)
    if q <= 1:
        return np.zeros(len(features), dtype=np.int64)
    if clustering == "kmeans":
        labels = KMeans(n_clusters=q, n_init=10, random_state=seed).fit_predict(features)
    else:
        distances = cdist(features, features)
        scale = np.median(distances[distances > 0])
        affinity = np.exp(-distances / scale)
        labels = SpectralClustering(n_clusters=q, affinity="precomputed", random_state=seed).fit_predict(affinity)
    _, labels = np.unique(labels, return_inverse=True)  # drop any empty cluster, keep 0..q'-1
    return labels.astype(np.int64)


def cluster_cam_parts(trace: "Trace", block: str, model: "ModelSpec", q: int = CLUSTERS, alpha: float = ALPHA,
                      clustering: str = "kmeans", seed: int = 0, batch_size: int | None = None) -> list[ClusterCAM]:
    """Cluster-CAM's steps for every image of the trace (seed 002, eq. 18-21): clusters, their
    means, the masked inputs and their scores, base and scissors. Q masked forwards per image.
    """
    if int(q) < 1:
        raise ValueError(f"Cluster-CAM needs at least one cluster (Q >= 1), not Q = {q}")
    activations = trace.activations[block]
    found = []
    for maps in activations:
        labels = cluster_channels(maps, int(q), clustering, seed)
        representatives = torch.stack([maps[torch.from_numpy(labels == j).to(maps.device)].mean(dim=0)
                                       for j in range(labels.max() + 1)])
        masks, scaled = scaled_masks(representatives, model.input_size)
        found.append((labels, representatives, masks, scaled))
    listener, total, done = current_listener(), sum(len(r) for _, r, _, _ in found), 0
    parts = []
    for i, (labels, representatives, masks, scaled) in enumerate(found):
        target = int(trace.targets[i])
        scores = []
        for part in masked_scores(model, trace.inputs[i], representatives, target, batch_size):
            scores.append(part)
            done += len(part)
            report(done, total, "Cluster-CAM: masked inputs", listener)
        score = torch.cat(scores)
        parts.append(ClusterCAM(
            representatives=representatives.cpu().numpy(), scaled=scaled.cpu().numpy(), masks=masks.cpu().numpy(),
            scores=score.cpu().numpy(), labels=labels, base=int(score.argmax()), scissors=int(score.argmin()),
            alpha=float(alpha), clustering=clustering, target=target))
    return parts


def with_alpha(extras: dict[str, Any], *, alpha: float) -> tuple[np.ndarray, dict[str, Any]]:
    """Cluster-CAM's ``recombine``: the map for another alpha from one image's stored parts, no pass."""
    parts = replace(extras["cluster_cam"], alpha=float(alpha))
    return parts.raw(), {**extras, "cluster_cam": parts}


@register_method(
    "clustercam", label="Cluster-CAM", family="perturbation", signed=True,
    description=f"k-means of the channels into Q clusters (Q = {CLUSTERS} by default); their means mask the input; "
                f"H = alpha x best (cognition-base) - (1 - alpha) x worst (cognition-scissors), alpha = {ALPHA} by "
                "default. Q + 1 passes.",
    reference="Feng et al. 2023, Cluster-CAM, eq. 17-22 (seed 002)",
    settings=SETTINGS, recombine=with_alpha,
)
def cluster_cam(trace: "Trace", block: str, model: "ModelSpec", *, q: int = CLUSTERS, alpha: float = ALPHA,
                clustering: str = "kmeans", seed: int = 0, batch_size: int | None = None) -> MethodOutput:
    """Cluster-CAM (Feng et al. 2023, seed 002, eq. 17-22): H = alpha * base - (1 - alpha) * scissors.

    Signed: positive where the cognition-base map dominates, negative where the scissors cut.
    With the shared trace that makes Q + 1 forward passes. Each image's ``extras["cluster_cam"]``
    is its ``ClusterCAM``, from which H is recomputed for any alpha (``with_alpha``).

    alpha = 0.5 by default. The paper prints no value, but its Figure 3 bounds it: the base holds
    both dogs, the scissors only the spaniel, and the final map keeps the elkhound alone, so
    where both masks are ~1 the map must vanish (alpha - (1 - alpha) <= 0, alpha <= 0.5) while
    where only the base is high it must stay (alpha > 0); 0.5 is the largest such alpha, the
    one that gives the base the most weight. Q = 6 is the paper's Table 2 setting.
    """
    parts = cluster_cam_parts(trace, block, model, q, alpha, clustering, seed, batch_size)
    maps = torch.stack([torch.from_numpy(p.raw()).float() for p in parts])
    return MethodOutput(maps=maps, forwards=max(p.q for p in parts), per_image=[{"cluster_cam": p} for p in parts])


def masked_pictures(model: "ModelSpec", image: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """What the network saw for each mask: the normalised ``image`` (C, H, W) times the mask, with the
    normalisation undone, as (M, H, W, C) uint8. Masked-out pixels become the normalisation mean
    (x = 0 after normalising), not black."""
    image = image.cpu()  # the pictures are for the page; the masks are on the CPU already
    seen = model.transform.pixel_values(image.unsqueeze(0) * torch.from_numpy(masks).unsqueeze(1))
    return (seen.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
