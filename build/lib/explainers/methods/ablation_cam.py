"""Ablation-CAM (Desai & Ramaswamy 2020): each channel of the block weighed by the drop of the target
logit when it is zeroed. No gradient is used.

The fast path equals the brute force (``ablation_cam_plain``: the whole model once per zeroed
channel; the tests compare them): an ablation runs only the network after the block (the
"tail", as the model's family adapter cuts it), in batches on the inference copy, and at the last
block of a GAP + linear head it is closed-form (no pass at all). A model whose forward is not
the plain layer sequence fails the tail's check and gets the block's output substituted in a
whole forward instead (``substituted_forward``).

Forward passes are counted in images, per explained image, beyond the shared trace: a block
output pushed through the tail counts as one forward, an upper bound of its cost. Each batch is
one job of the shared compute thread (``explainers.runtime.compute``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator

import torch

from ..engine import batching
from ..engine.trace import trace as take_trace
from ..models.families import TailRun, family_of
from ..runtime import compute
from ..runtime.hooks import tapped
from ..runtime.progress import current_listener, report
from ..runtime.settings import Setting
from .base import MethodOutput, register_method
from .cam import weighted_sum
from .masking import batches

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

ABLATION_BATCH = Setting(
    "batch_size", int, None, "Ablated block outputs per pass of the network after the block; empty: the size "
    "measured fastest for this network (the maps do not depend on it, only the time does).",
    low=1, high=1024, label="Batch size")


def tail_after(model: "ModelSpec", block: str) -> Callable[[torch.Tensor], TailRun | None] | None:
    """The network after ``block`` as the model's family adapter gives it (``explainers.models.families``: the
    forward traced with torch.fx and cut at the block's output, on the BN-folded channels-last inference
    copy): called with an image, the logits as a function of the block's outputs for that image. None
    when the network has no such cut; callers then use ``substituted_forward``. ``after_block`` checks
    the result against the whole network, so a tail that does not reproduce the model is never used.
    """
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
                batch_size: int | None = None) -> Iterator[torch.Tensor]:
    """Logits for modified outputs (M, D, h, w) of ``block``, yielded batch by batch (``torch.cat``
    them for all M); ``outputs[0]`` must be the unmodified output, whose logits ``reference`` the
    whole network gave for ``image`` (C, H, W).

    Runs the tail (``tail_after``) when there is one and checks that row 0 (in the first batch)
    reproduces ``reference`` (a model whose forward is not the plain layer sequence fails the
    check); otherwise every row goes through the whole network with the block's output substituted.
    """
    tail = tail_after(model, block)
    parts = list(batches(outputs.shape[0], batch_size or batching.batch_size(model)))
    # Values crossing the cut (a residual unit's skip input) are made once here, by at most the network before
    # the block: with the tail rows, still within the one forward per row that the counts report.
    image_tail = tail(image) if tail is not None else None
    if image_tail is not None:
        run = torch.inference_mode()(image_tail)
        first = compute.run_batch(run, outputs[parts[0]])
        tolerance = 1e-4 * float(reference.abs().max().clamp_min(1))
        if torch.allclose(first[0], reference, rtol=1e-4, atol=tolerance):
            yield first
            for part in parts[1:]:
                yield compute.run_batch(run, outputs[part])
            return
    for part in parts:
        yield compute.run_batch(torch.inference_mode()(substituted_forward), model, block, image, outputs[part])


def ablation_drops(trace: "Trace", block: str, model: "ModelSpec",
                   batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """S_c - S_c,k for every channel k (N, K), the scores S_c (N,) and the forwards used per image.

    Closed form at the last block of a GAP + linear head: zeroing channel k removes exactly
    w_ck * mean(A_k) from the logit. Elsewhere one tail row per channel that is not already
    all zero (zeroing those changes nothing: S_c,k = S_c), plus the unmodified row.
    """
    activations, targets = trace.activations[block], trace.targets
    if block == list(model.blocks)[-1] and model.gap_head:
        weights = model.classifier.weight.detach()[targets]
        return weights * activations.mean(dim=(2, 3)), trace.logits.gather(1, targets[:, None])[:, 0], 0
    drops = torch.zeros(activations.shape[:2], device=activations.device)
    scores = torch.zeros(activations.shape[0], device=activations.device)
    active = [a.flatten(1).ne(0).any(dim=1).nonzero().squeeze(1) for a in activations]
    listener, total, done = current_listener(), sum(len(c) + 1 for c in active), 0
    for i, channels in enumerate(active):
        rows = activations[i].unsqueeze(0).repeat(len(channels) + 1, 1, 1, 1)
        rows[torch.arange(1, len(channels) + 1, device=rows.device), channels] = 0
        found = []
        for logits in after_block(model, block, trace.inputs[i], rows, trace.logits[i], batch_size):
            found.append(logits)
            done += len(logits)
            report(done, total, "Ablation-CAM: channels zeroed", listener)
        logits = torch.cat(found)[:, int(targets[i])]
        scores[i] = logits[0]
        drops[i, channels] = logits[0] - logits[1:]
    return drops, scores, max(len(c) + 1 for c in active)


@register_method(
    "ablationcam", label="Ablation-CAM", family="perturbation",
    description="Each channel weighted by the relative drop of the target logit when it is zeroed; only the "
                "network after the block runs (closed form at B4 of a GAP + linear head).",
    reference="Desai & Ramaswamy 2020, Ablation-CAM, WACV, eq. 3-4",
    settings=(ABLATION_BATCH,),
)
def ablation_cam(trace: "Trace", block: str, model: "ModelSpec", *, batch_size: int | None = None) -> MethodOutput:
    """Ablation-CAM (Desai & Ramaswamy 2020, eq. 3-4): w_k = (S_c - S_c,k) / S_c with S_c the target
    logit and S_c,k the logit with channel k of the block's output zeroed; L = ReLU(sum_k w_k A_k).

    A zero S_c (the weights' common scale) is replaced by 1: the map's shape is unchanged.
    """
    drops, scores, passes = ablation_drops(trace, block, model, batch_size)
    scale = torch.where(scores != 0, scores, 1)
    return MethodOutput(maps=weighted_sum(trace.activations[block], drops / scale[:, None]), forwards=passes)


@torch.no_grad()
def ablation_cam_plain(model: "ModelSpec", image: torch.Tensor, block: str, target: int,
                       channels: int | None = None) -> tuple[torch.Tensor, int]:
    """Ablation-CAM by brute force: for each channel, the whole model with that channel zeroed.

    Returns the (h, w) map and the forward passes it used (one plain pass, then one per channel).
    ``channels`` stops after the first channels (the benchmark times a part and scales up).
    """
    recorded = take_trace(model, image.unsqueeze(0), target, blocks=[block])
    activations = recorded.activations[block]
    score = recorded.logits[0, target]
    drops = torch.zeros(activations.shape[1], device=activations.device)
    image = image.to(activations.device)
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
