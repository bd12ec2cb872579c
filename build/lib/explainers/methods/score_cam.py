"""Score-CAM (Wang et al. 2020): each channel of the block, upsampled and min-max scaled, masks the
input; its weight is the target's probability for that masked input. No gradient is used.

The fast path (``score_cam``) equals the plain definition (``score_cam_plain``, the authors' code:
one forward per channel, one image at a time; the tests compare them): masked inputs in batches
on the inference copy (``masking``); channels whose map is constant have no mask (0/0) and
contribute nothing, and channels with the same scaled map share one mask and one pass.

Forward passes are counted in images, per explained image, beyond the shared trace: a batch of
32 masked inputs counts 32.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..engine.trace import trace as take_trace
from ..runtime.maps import upsample
from ..runtime.progress import current_listener, report
from ..runtime.settings import Setting
from .base import MethodOutput, register_method
from .cam import weighted_sum
from .masking import distinct_maps, masked_scores

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

SCORE_CAM_BATCH = Setting(
    "batch_size", int, None, "Masked inputs per network pass; empty: the size measured fastest for this network "
    "(the maps do not depend on it, only the time does).", low=1, high=1024, label="Batch size")


@register_method(
    "scorecam", label="Score-CAM", family="perturbation",
    description="Each channel, upsampled and scaled to [0, 1], masks the input; its weight is the target's "
                "probability for that masked input. One batched forward per distinct non-constant channel map.",
    reference="Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations for CNNs, eq. 3-6",
    settings=(SCORE_CAM_BATCH,),
)
def score_cam(trace: "Trace", block: str, model: "ModelSpec", *, batch_size: int | None = None) -> MethodOutput:
    """Score-CAM (Wang et al. 2020, eq. 3-6, as in the authors' code): for each channel k with a
    non-constant map, H_k = s(Up(A_k)) (eq. 4), alpha_k = softmax(f(X * H_k))_c, the target's
    probability for the masked input; L = ReLU(sum_k alpha_k A_k) (eq. 5). Constant maps have no
    mask and get alpha_k = 0, as the authors' code skips them.

    One masked forward per distinct mask (a forward per channel at most), in batches of
    ``batch_size`` (None: measured per network, ``explainers.engine.batching``).
    """
    activations = trace.activations[block]
    weights = torch.zeros(activations.shape[:2], device=activations.device)
    plan = [distinct_maps(a) for a in activations]
    counts = [int(group.max()) + 1 if group.numel() else 0 for _, group in plan]
    listener, total, done = current_listener(), sum(counts), 0
    for i, (channels, group) in enumerate(plan):
        if channels.numel() == 0:
            continue
        first = torch.full((counts[i],), len(group), device=group.device).scatter_reduce_(
            0, group, torch.arange(len(group), device=group.device), reduce="amin")  # each group's first channel
        scores = []
        for part in masked_scores(model, trace.inputs[i], activations[i, channels[first]], int(trace.targets[i]),
                                  batch_size):
            scores.append(part)
            done += len(part)
            report(done, total, "Score-CAM: masked inputs", listener)
        weights[i, channels] = torch.cat(scores)[group]
    return MethodOutput(maps=weighted_sum(activations, weights), forwards=max(counts, default=0))


@torch.no_grad()
def score_cam_plain(model: "ModelSpec", image: torch.Tensor, block: str, target: int,
                    channels: int | None = None) -> tuple[torch.Tensor, int]:
    """Score-CAM as its authors' code runs it: one forward per channel, one image at a time.

    Returns the (h, w) map and the forward passes it used (the first one records the block).
    ``channels`` stops after the first channels (the benchmark times a part and scales up).
    """
    recorded = take_trace(model, image.unsqueeze(0), target, blocks=[block])
    activations = recorded.activations[block][0]
    weights = torch.zeros(activations.shape[0], device=activations.device)
    image = image.to(activations.device)
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
