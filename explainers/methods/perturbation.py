"""Perturbation CAMs: a channel is weighed by what happens to the target score when the input
or the block's output is perturbed. No gradient is used.

- Score-CAM (Wang et al. 2020): mask the input with each upsampled, min-max scaled channel.
- Ablation-CAM (Desai & Ramaswamy 2020): zero each channel of the block's output.
- Cluster-CAM (Feng et al. 2023, seed 002, eq. 17-22): mask the input with the Q means of
  k-means clusters of the channels; the best mask is the cognition-base, the worst the
  cognition-scissors.

Fast paths, each equal to the plain definition (``*_plain`` below; the tests compare them):
masked inputs run in batches (of the size measured fastest for the network, ``explainers.batching``)
under ``torch.inference_mode()`` through ``model.inference_net``,
a copy with batch norms folded into the convolutions and channels-last memory (both only
change the order of floating-point sums; ``explainers.inference``); channels whose map is
constant have no Score-CAM mask (0/0) and contribute nothing, and channels with the same
scaled map share one mask and one pass; an ablation runs only the network after the block, and at the last
block of a GAP + linear head it is closed-form (no pass at all).

Forward passes are counted in images, per explained image, beyond the shared trace: a
batch of 32 masked inputs counts 32, and a block output pushed through the network after
the block (the "tail") counts as one forward too, an upper bound of its cost.

Each batch is one job of the shared compute thread (``explainers.compute``): a Score-CAM of
one session yields to other sessions' passes between its batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import torch
from sklearn.cluster import KMeans, SpectralClustering

from .. import batching, compute
from ..hooks import tapped
from ..maps import upsample
from ..progress import Progress, report
from . import MethodOutput, register_method
from .cam import weighted_sum

if TYPE_CHECKING:
    from ..api import Explanation
    from ..models import ModelSpec
    from ..trace import Trace

CLUSTERS = 6  # Q: the paper's Table 2 setting ("Here Q = 6 in Cluster-CAM")
# alpha of eq. 22. The paper prints no value; its figures fix a range. In Fig. 3 the base
# holds both dogs and the scissors only the spaniel, yet the final map keeps only the
# elkhound: where both maps are high (~1) the result must vanish, alpha - (1 - alpha) <= 0,
# so alpha <= 0.5; where only the base is high the map must stay, alpha > 0. The largest
# alpha that still cuts what the scissors select keeps the base's weight highest: 0.5.
ALPHA = 0.5
CLUSTERINGS = ("kmeans", "spectral")


class _Steps:
    """Counts work done and reports it as a fraction (one call per batch)."""

    def __init__(self, total: int, text: str, listener: Progress | None) -> None:
        self.total, self.text, self.listener, self.done = total, text, listener, 0

    def advance(self, count: int) -> None:
        self.done += count
        report(self.done, self.total, self.text, self.listener)


def _batches(total: int, size: int) -> Iterator[slice]:
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


# --- masked inputs (Score-CAM, Cluster-CAM) -----------------------------------------------------

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
                  steps: _Steps | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Softmax probability of ``target`` for ``image`` (C, H, W) masked by s(Up(F)) of each of the
    (M, h, w) ``maps``: the Hadamard product X * H of Score-CAM (eq. 3-4) and Cluster-CAM (eq. 19).

    Masks are made batch by batch, so memory does not grow with the block's channel count.
    """
    network = model.inference_net
    batch_size = batch_size or batching.batch_size(model)
    scores = []
    for part in _batches(maps.shape[0], batch_size):
        scores.append(compute.run_batch(_masked_batch, network, image, maps[part], target))
        if steps:
            steps.advance(part.stop - part.start)
    return torch.cat(scores) if scores else torch.zeros(0)


@torch.inference_mode()
def _masked_batch(network: torch.nn.Module, image: torch.Tensor, maps: torch.Tensor, target: int) -> torch.Tensor:
    masks, _ = scaled_masks(maps, image.shape[-2:])
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
    _, group = torch.unique(scaled, dim=0, return_inverse=True)
    return varying, group


# --- Score-CAM ----------------------------------------------------------------------------------

def score_cam(trace: "Trace", block: str, model: "ModelSpec", batch_size: int | None = None,
              listener: Progress | None = None) -> MethodOutput:
    """Score-CAM (Wang et al. 2020, eq. 3-6, as in the authors' code): for each channel k with a
    non-constant map, H_k = s(Up(A_k)) (eq. 4), alpha_k = softmax(f(X * H_k))_c, the target's
    probability for the masked input; L = ReLU(sum_k alpha_k A_k) (eq. 5). Constant maps have no
    mask and get alpha_k = 0, as the authors' code skips them.

    One masked forward per distinct mask (a forward per channel at most), in batches.
    """
    activations = trace.activations[block]
    weights = torch.zeros(activations.shape[:2])
    plan = [distinct_maps(a) for a in activations]
    steps = _Steps(sum(int(group.max()) + 1 for _, group in plan if group.numel()), "Score-CAM: masked inputs",
                   listener)
    for i, (channels, group) in enumerate(plan):
        if channels.numel() == 0:
            continue
        first = torch.full((int(group.max()) + 1,), len(group)).scatter_reduce_(
            0, group, torch.arange(len(group)), reduce="amin")  # each group's first channel
        scores = masked_scores(model, trace.inputs[i], activations[i, channels[first]], int(trace.targets[i]),
                               steps, batch_size)
        weights[i, channels] = scores[group]
    passes = max((int(group.max()) + 1 for _, group in plan if group.numel()), default=0)
    return MethodOutput(maps=weighted_sum(activations, weights), forwards=passes)


@torch.no_grad()
def score_cam_plain(model: "ModelSpec", image: torch.Tensor, block: str, target: int,
                    channels: int | None = None) -> tuple[torch.Tensor, int]:
    """Score-CAM as its authors' code runs it: one forward per channel, one image at a time.

    Returns the (h, w) map and the forward passes it used (the first one records the block).
    ``channels`` stops after the first channels (the benchmark times a part and scales up).
    """
    from ..trace import trace

    recorded = trace(model, image.unsqueeze(0), target, blocks=[block])
    activations = recorded.activations[block][0]
    weights = torch.zeros(activations.shape[0])
    passes = 1
    for k, channel in enumerate(activations[:channels]):
        upsampled = upsample(channel.unsqueeze(0), model.input_size)[0]
        low, high = upsampled.min(), upsampled.max()
        if high == low:
            continue  # no mask (0/0): contributes nothing
        mask = (upsampled - low) / (high - low)
        weights[k] = model.net((image * mask).unsqueeze(0)).softmax(dim=1)[0, target]
        passes += 1
    return weighted_sum(activations.unsqueeze(0), weights.unsqueeze(0))[0], passes


# --- Ablation-CAM -------------------------------------------------------------------------------

def tail_after(model: "ModelSpec", block: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The network after ``block`` as a function of the block's output, as the model's family adapter
    gives it (``explainers.families``: the forward traced with torch.fx and cut at the block's output,
    on the BN-folded channels-last inference copy). None when the network has no such cut; callers
    then use ``substituted_forward``. ``after_block`` checks the result against the whole network,
    so a tail that does not reproduce the model is never used.
    """
    from ..families import family_of

    return family_of(model).tail(model, block)


def substituted_forward(model: "ModelSpec", block: str, image: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """Logits of the whole network on ``image`` (C, H, W) with ``block``'s output replaced by each of
    ``outputs`` (M, D, h, w): correct for any model, at the price of re-running the layers before the block.
    """
    def replace(_output: object) -> torch.Tensor:
        return outputs.clone()  # later in-place operations must not change the caller's tensor

    with tapped({model.blocks[block]: replace}):  # this call's passes only, not another session's
        return model.net(image.unsqueeze(0).expand(outputs.shape[0], *image.shape))


def after_block(model: "ModelSpec", block: str, image: torch.Tensor, outputs: torch.Tensor, reference: torch.Tensor,
                steps: _Steps | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Logits for modified outputs (M, D, h, w) of ``block``; ``outputs[0]`` must be the unmodified
    output, whose logits ``reference`` the whole network gave for ``image`` (C, H, W).

    Runs the tail (``tail_after``) when there is one and checks that row 0 reproduces
    ``reference`` (a model whose forward is not the plain layer sequence fails the check);
    otherwise every row goes through the whole network with the block's output substituted.
    """
    tail = tail_after(model, block)
    batch_size = batch_size or batching.batch_size(model)
    if tail is not None:
        logits = torch.cat([compute.run_batch(torch.inference_mode()(tail), outputs[part])
                            for part in _batches(outputs.shape[0], batch_size)])
        tolerance = 1e-4 * float(reference.abs().max().clamp_min(1))
        if torch.allclose(logits[0], reference, rtol=1e-4, atol=tolerance):
            if steps:
                steps.advance(outputs.shape[0])
            return logits
    parts = []
    for part in _batches(outputs.shape[0], batch_size):
        parts.append(compute.run_batch(torch.inference_mode()(substituted_forward), model, block, image,
                                      outputs[part]))
        if steps:
            steps.advance(part.stop - part.start)
    return torch.cat(parts)


def ablation_drops(trace: "Trace", block: str, model: "ModelSpec", batch_size: int | None = None,
                   listener: Progress | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """S_c - S_c,k for every channel k (N, K), the scores S_c (N,) and the forwards used per image.

    Closed form at the last block of a GAP + linear head: zeroing channel k removes exactly
    w_ck * mean(A_k) from the logit. Elsewhere one tail row per channel that is not already
    all zero (zeroing those changes nothing: S_c,k = S_c), plus the unmodified row.
    """
    activations, targets = trace.activations[block], trace.targets
    if block == list(model.blocks)[-1] and model.gap_head:
        weights = model.classifier.weight.detach()[targets]
        return weights * activations.mean(dim=(2, 3)), trace.logits.gather(1, targets[:, None])[:, 0], 0
    drops = torch.zeros(activations.shape[:2])
    scores = torch.zeros(activations.shape[0])
    active = [a.flatten(1).ne(0).any(dim=1).nonzero().squeeze(1) for a in activations]
    steps = _Steps(sum(len(c) + 1 for c in active), "Ablation-CAM: channels zeroed", listener)
    for i, channels in enumerate(active):
        rows = activations[i].unsqueeze(0).repeat(len(channels) + 1, 1, 1, 1)
        rows[torch.arange(1, len(channels) + 1), channels] = 0
        logits = after_block(model, block, trace.inputs[i], rows, trace.logits[i], steps, batch_size)
        logits = logits[:, int(targets[i])]
        scores[i] = logits[0]
        drops[i, channels] = logits[0] - logits[1:]
    return drops, scores, max(len(c) + 1 for c in active)


def ablation_cam(trace: "Trace", block: str, model: "ModelSpec", batch_size: int | None = None,
                 listener: Progress | None = None) -> MethodOutput:
    """Ablation-CAM (Desai & Ramaswamy 2020, eq. 3-4): w_k = (S_c - S_c,k) / S_c with S_c the target
    logit and S_c,k the logit with channel k of the block's output zeroed; L = ReLU(sum_k w_k A_k).

    A zero S_c (the weights' common scale) is replaced by 1: the map's shape is unchanged.
    """
    drops, scores, passes = ablation_drops(trace, block, model, batch_size, listener)
    scale = torch.where(scores != 0, scores, 1)
    return MethodOutput(maps=weighted_sum(trace.activations[block], drops / scale[:, None]), forwards=passes)


@torch.no_grad()
def ablation_cam_plain(model: "ModelSpec", image: torch.Tensor, block: str, target: int,
                       channels: int | None = None) -> tuple[torch.Tensor, int]:
    """Ablation-CAM by brute force: for each channel, the whole model with that channel zeroed.

    Returns the (h, w) map and the forward passes it used (one plain pass, then one per channel).
    ``channels`` stops after the first channels (the benchmark times a part and scales up).
    """
    from ..trace import trace

    recorded = trace(model, image.unsqueeze(0), target, blocks=[block])
    activations = recorded.activations[block]
    score = recorded.logits[0, target]
    drops = torch.zeros(activations.shape[1])
    ablated = range(activations.shape[1])[:channels]
    for k in ablated:
        def zero(output: torch.Tensor, k: int = k) -> torch.Tensor:
            output = output.clone()
            output[:, k] = 0
            return output

        with tapped({model.blocks[block]: zero}):
            drops[k] = score - model.net(image.unsqueeze(0))[0, target]
    weights = drops / (score if score != 0 else 1)
    return weighted_sum(activations, weights.unsqueeze(0))[0], 1 + len(ablated)


# --- Cluster-CAM --------------------------------------------------------------------------------

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
    features = maps.flatten(1).double().numpy()
    distinct = len(np.unique(features, axis=0))
    q = min(q, distinct)
    if q <= 1:
        return np.zeros(len(features), dtype=np.int64)
    if clustering == "kmeans":
        labels = KMeans(n_clusters=q, n_init=10, random_state=seed).fit_predict(features)
    else:
        from scipy.spatial.distance import cdist

        distances = cdist(features, features)
        scale = np.median(distances[distances > 0])
        affinity = np.exp(-distances / scale)
        labels = SpectralClustering(n_clusters=q, affinity="precomputed", random_state=seed).fit_predict(affinity)
    _, labels = np.unique(labels, return_inverse=True)  # drop any empty cluster, keep 0..q'-1
    return labels.astype(np.int64)


def cluster_cam_parts(trace: "Trace", block: str, model: "ModelSpec", q: int = CLUSTERS, alpha: float = ALPHA,
                      clustering: str = "kmeans", seed: int = 0, batch_size: int | None = None,
                      listener: Progress | None = None) -> list[ClusterCAM]:
    """Cluster-CAM's steps for every image of the trace (seed 002, eq. 18-21): clusters, their
    means, the masked inputs and their scores, base and scissors. Q masked forwards per image.
    """
    if int(q) < 1:
        raise ValueError(f"Cluster-CAM needs at least one cluster (Q >= 1), not Q = {q}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1] (eq. 22), not {alpha}")
    activations = trace.activations[block]
    found = []
    for i, maps in enumerate(activations):
        labels = cluster_channels(maps, int(q), clustering, seed)
        representatives = torch.stack([maps[torch.from_numpy(labels == j)].mean(dim=0)
                                       for j in range(labels.max() + 1)])
        masks, scaled = scaled_masks(representatives, model.input_size)
        found.append((labels, representatives, masks, scaled))
    steps = _Steps(sum(len(r) for _, r, _, _ in found), "Cluster-CAM: masked inputs", listener)
    parts = []
    for i, (labels, representatives, masks, scaled) in enumerate(found):
        target = int(trace.targets[i])
        scores = masked_scores(model, trace.inputs[i], representatives, target, steps, batch_size)
        parts.append(ClusterCAM(
            representatives=representatives.numpy(), scaled=scaled.numpy(), masks=masks.numpy(),
            scores=scores.numpy(), labels=labels, base=int(scores.argmax()), scissors=int(scores.argmin()),
            alpha=float(alpha), clustering=clustering, target=target))
    return parts


def cluster_cam(trace: "Trace", block: str, model: "ModelSpec", q: int = CLUSTERS, alpha: float = ALPHA,
                clustering: str = "kmeans", seed: int = 0, batch_size: int | None = None,
                listener: Progress | None = None) -> MethodOutput:
    """Cluster-CAM (Feng et al. 2023, seed 002, eq. 17-22): H = alpha * base - (1 - alpha) * scissors.

    Signed: positive where the cognition-base map dominates, negative where the scissors cut.
    With the shared trace that makes Q + 1 forward passes. Each image's ``extras["cluster_cam"]``
    is its ``ClusterCAM``, from which H is recomputed for any alpha.

    alpha = 0.5 by default. The paper prints no value, but its Figure 3 bounds it: the base holds
    both dogs, the scissors only the spaniel, and the final map keeps the elkhound alone, so
    where both masks are ~1 the map must vanish (alpha - (1 - alpha) <= 0, alpha <= 0.5) while
    where only the base is high it must stay (alpha > 0); 0.5 is the largest such alpha, the
    one that gives the base the most weight. Q = 6 is the paper's Table 2 setting.
    """
    parts = cluster_cam_parts(trace, block, model, q, alpha, clustering, seed, batch_size, listener)
    maps = torch.stack([torch.from_numpy(p.raw()).float() for p in parts])
    return MethodOutput(maps=maps, forwards=max(p.q for p in parts), per_image=[{"cluster_cam": p} for p in parts])


def explain_cluster_cam(model: "ModelSpec", image: object, block: str = "B4", target: int | None = None,
                        q: int = CLUSTERS, alpha: float = ALPHA, clustering: str = "kmeans",
                        seed: int = 0) -> "Explanation":
    """Cluster-CAM for one image with any Q and clustering (the registry entry uses the defaults).

    ``extras["cluster_cam"]`` is the image's ``ClusterCAM``; ``forwards`` = Q + 1.
    """
    import time

    from ..api import Explanation, as_batch
    from ..trace import trace

    shared = trace(model, as_batch(model, image), target, blocks=[block])
    started = time.perf_counter()
    output = cluster_cam(shared, block, model, q, alpha, clustering, seed)
    return Explanation(
        method="clustercam", block=block, target=int(shared.targets[0]), raw=output.maps[0].numpy(),
        heatmap=upsample(output.maps, model.input_size)[0].numpy(), signed=True,
        forwards=shared.forwards + output.forwards, backwards=0, seconds=time.perf_counter() - started,
        trace_seconds=shared.seconds, extras=output.extras_of(0))


def masked_pictures(model: "ModelSpec", image: torch.Tensor, masks: np.ndarray) -> np.ndarray:
    """What the network saw for each mask: the normalised ``image`` (C, H, W) times the mask, with the
    normalisation undone, as (M, H, W, C) uint8. Masked-out pixels become the normalisation mean
    (x = 0 after normalising), not black."""
    seen = model.transform.pixel_values(image.unsqueeze(0) * torch.from_numpy(masks).unsqueeze(1))
    return (seen.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


# --- registry -----------------------------------------------------------------------------------

@register_method(
    "scorecam", label="Score-CAM", family="perturbation",
    description="Each channel, upsampled and scaled to [0, 1], masks the input; its weight is the target's "
                "probability for that masked input. One batched forward per distinct non-constant channel map.",
    reference="Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for CNNs, eq. 3-6",
)
def scorecam(trace: "Trace", block: str, model: "ModelSpec") -> MethodOutput:
    return score_cam(trace, block, model)


@register_method(
    "ablationcam", label="Ablation-CAM", family="perturbation",
    description="Each channel weighted by the relative drop of the target logit when it is zeroed; only the "
                "network after the block runs (closed form at B4 of a GAP + linear head).",
    reference="Desai & Ramaswamy 2020, Ablation-CAM, WACV, eq. 3-4",
)
def ablationcam(trace: "Trace", block: str, model: "ModelSpec") -> MethodOutput:
    return ablation_cam(trace, block, model)


@register_method(
    "clustercam", label="Cluster-CAM", family="perturbation", signed=True,
    description=f"k-means of the channels into Q = {CLUSTERS} clusters; their means mask the input; "
                f"H = {ALPHA} x best (cognition-base) - {1 - ALPHA} x worst (cognition-scissors). Q + 1 passes.",
    reference="Feng et al. 2023, Cluster-CAM, eq. 17-22 (seed 002)",
)
def clustercam(trace: "Trace", block: str, model: "ModelSpec") -> MethodOutput:
    return cluster_cam(trace, block, model)
