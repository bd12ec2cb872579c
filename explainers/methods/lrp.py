"""Layer-wise relevance propagation (LRP) through zennit (seed 001, "LRP" slides).

LRP redistributes the explained logit f_c(x) backwards, layer by layer, in proportion to each
input's contribution z_jk = a_j w_jk, so that relevance is (nearly) conserved:
sum_d R_d = f_c(x). zennit does the work: a *composite* maps layer types to rules, and
*canonizers* first rewrite the network so that the rules apply (batch norm merged into the
convolution before it; a ResNet block's residual sum made a module, so the sum gets its own
proportional rule).

- ``lrp_epsilon``: the epsilon rule in every convolution and linear layer,
  R_j = sum_k a_j w_jk / (z_k + eps sign(z_k)) R_k, eps = 0.25 (Bach et al. 2015; Montavon et
  al. 2019, sec. 10.2.2). With eps -> 0 this is LRP-0, which equals gradient x input.
- ``lrp_gamma``: zennit's ``EpsilonGammaBox`` composite: the z^B (box) rule on the first
  convolution, bounded by the pixel range [0, 1] after normalisation; the gamma rule
  (gamma = 0.25, favouring positive contributions) in every other convolution; epsilon in the
  linear layers (Montavon et al. 2019, sec. 10.2: the recommended composite for CNNs).

Canonizers: ``ResNetCanonizer`` for the ResNet family (torchvision ResNets and the built-in
digits model, whose stages are torchvision ``BasicBlock`` s), ``VGGCanonizer`` for VGG. zennit
0.5 has none for DenseNet, whose batch norms mostly come *after a concatenation*, where they
cannot be merged (zennit's sequential merge would pair a layer's last convolution with the next
layer's norm and fail): a ``NamedMergeBatchNorm`` merges the two pairs that are a convolution
followed by its batch norm (``conv0``/``norm0`` and each dense layer's ``conv1``/``norm2``); the
other batch norms pass relevance through unchanged. Other models get zennit's
``SequentialMergeBatchNorm``, and if it does not fit (an error, or logits that no longer match
the model's), LRP runs again without canonizer and says so (``extras["canonized"]``).

What "block" means here: the map is the relevance of the input pixels, summed over colour
channels, at the input's resolution, for any block (LRP explains down to the pixels). The
relevance reaching the chosen block's output, summed over its channels, comes with it in
``extras["block_relevance"]``.

Conservation and its exceptions: the relevance at the pixels sums to f_c(x) minus what the
biases absorb (each bias b_k takes its share b_k / z_k R_k, and batch norm's shift becomes a
bias once merged) and minus what epsilon absorbs. For a ReLU network with epsilon -> 0 the
absorbed part is exactly sum over biases of b * df_c/db (Euler's identity for piecewise-affine
functions), which the tests check. (zennit turns a merged batch norm into x / sqrt(1 + eps_bn)
rather than x, so the canonized network's logit differs from the model's by ~5e-6 per batch
norm.) On the digits model the batch norms' shifts absorb most
of the logit. Each image's ``extras["relevance_total"]`` and ``extras["logit"]`` report both
sums.

LRP modifies the backward pass, so it cannot share the trace's gradients: it runs its own
forward and backward pass, on a private copy of the network's modules made for the call
(``structural_copy``: the same weight storage, new tensor objects, so canonizers and rules
that swap weights swap the copy's, and the shared model is never touched, even by another
thread), with zennit's hooks registered in a ``with`` block that removes them whatever
happens inside. The pass is a job of the compute thread (``explainers.compute``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .. import compute
from ..hooks import tapped
from ..inference import structural_copy
from . import MethodOutput, register_method

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..trace import Trace

EPSILON = 0.25
GAMMA = 0.25
STABILIZER = 1e-6  # zennit's default for the rules other than epsilon
RULES = ("epsilon", "gamma")


@dataclass
class Relevance:
    """The result of one LRP pass over a batch: relevance at the input (N, C, H, W), at the block's
    output (N, D, h, w) when one was named, and the logits of the pass."""

    pixels: torch.Tensor
    block: torch.Tensor | None
    logits: torch.Tensor


def canonizers_for(model: "ModelSpec") -> list:
    """zennit's canonizers for the model's family (see the module docstring)."""
    from zennit.canonizers import NamedMergeBatchNorm, SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if model.family == "resnet":
        return [ResNetCanonizer()]
    if model.family == "vgg":
        return [VGGCanonizer()]
    if model.family == "densenet":
        from torchvision.models.densenet import _DenseLayer

        pairs = [(["features.conv0"], "features.norm0")]
        pairs += [([f"{name}.conv1"], f"{name}.norm2") for name, module in model.net.named_modules()
                  if isinstance(module, _DenseLayer)]
        return [NamedMergeBatchNorm(pairs)]
    return [SequentialMergeBatchNorm()]


def input_box(model: "ModelSpec", shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest possible input values: pixels 0 and 1 after the model's normalisation."""
    return (model.transform.model_values(torch.zeros(shape)), model.transform.model_values(torch.ones(shape)))


def composite_for(model: "ModelSpec", rule: str, shape: torch.Size, epsilon: float = EPSILON,
                  gamma: float = GAMMA, stabilizer: float = STABILIZER, canonize: bool = True):
    """The zennit composite of ``rule`` (``epsilon`` or ``gamma``) with the model's canonizers
    (none if not ``canonize``).

    ``stabilizer`` guards the denominators of the rules other than epsilon (residual sums,
    average pooling, gamma, box); it must go to zero with epsilon for LRP-0 = gradient x input.
    """
    from zennit.composites import EpsilonGammaBox, LayerMapComposite, layer_map_base
    from zennit.rules import Epsilon
    from zennit.types import Convolution

    canonizers = canonizers_for(model) if canonize else []
    if rule == "epsilon":
        layer_map = layer_map_base(stabilizer) + [(Convolution, Epsilon(epsilon=epsilon)),
                                                  (nn.Linear, Epsilon(epsilon=epsilon))]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    if rule == "gamma":
        low, high = input_box(model, shape)
        return EpsilonGammaBox(low=low.to(model_dtype(model)), high=high.to(model_dtype(model)), epsilon=epsilon,
                               gamma=gamma, stabilizer=stabilizer, canonizers=canonizers)
    raise ValueError(f"LRP rule must be one of {', '.join(RULES)}, not {rule!r}")


def model_dtype(model: "ModelSpec") -> torch.dtype:
    return next(model.net.parameters()).dtype


def relevance(model: "ModelSpec", inputs: torch.Tensor, targets: torch.Tensor, rule: str = "epsilon",
              block: str | None = None, epsilon: float = EPSILON, gamma: float = GAMMA,
              stabilizer: float = STABILIZER, canonize: bool = True) -> Relevance:
    """LRP of the target logits of ``inputs`` (N, C, H, W): one forward and one backward pass.

    The initial relevance is the target logit f_c(x) itself (one-hot times the logit), so the
    relevance is in the logit's units.
    """
    return compute.run(_relevance_job, model, inputs, targets, rule, block, epsilon, gamma, stabilizer, canonize)


def _relevance_job(model: "ModelSpec", inputs: torch.Tensor, targets: torch.Tensor, rule: str, block: str | None,
                   epsilon: float, gamma: float, stabilizer: float, canonize: bool) -> Relevance:
    twin = structural_copy(model.net)
    composite = composite_for(model, rule, inputs.shape, epsilon, gamma, stabilizer, canonize)
    captured: dict[str, torch.Tensor] = {}

    def record(output: torch.Tensor) -> None:
        output.register_hook(lambda grad: captured.__setitem__("block", grad))

    taps = {twin.get_submodule(model.block_paths[block]): record} if block else {}
    with tapped(taps, private=True), composite.context(twin) as modified, torch.enable_grad():
        x = inputs.detach().clone().requires_grad_(True)
        logits = modified(x)
        chosen = logits.gather(1, targets[:, None])
        initial = torch.zeros_like(logits).scatter(1, targets[:, None], chosen.detach())
        (pixels,) = torch.autograd.grad(logits, x, grad_outputs=initial)
    block_relevance = captured.get("block")
    return Relevance(pixels=pixels.detach(), logits=logits.detach(),
                     block=block_relevance.detach() if block_relevance is not None else None)


def faithful(result: Relevance, logits: torch.Tensor) -> bool:
    """Whether the canonized network still computes the model's logits (up to zennit's batch-norm eps)."""
    return torch.allclose(result.logits, logits, rtol=1e-3, atol=1e-3 * float(logits.abs().max().clamp_min(1)))


def lrp_output(trace: "Trace", block: str, model: "ModelSpec", rule: str) -> MethodOutput:
    """Pixel relevance summed over colour channels as the map; the block's relevance and the sums as extras.

    If the canonizers do not fit the model, LRP runs again without them (two passes of each kind).
    """
    passes, canonized = 1, True
    try:
        result = relevance(model, trace.inputs, trace.targets, rule=rule, block=block)
    except RuntimeError:  # a batch norm merged into a layer of another width: the canonizer does not fit
        result = None
    if result is None or not faithful(result, trace.logits):
        passes, canonized = 1 + (result is not None), False
        result = relevance(model, trace.inputs, trace.targets, rule=rule, block=block, canonize=False)
    pixels = result.pixels.sum(dim=1)
    totals = pixels.sum(dim=(1, 2))
    logits = result.logits.gather(1, trace.targets[:, None])[:, 0]
    per_image = [{
        "relevance_total": float(totals[i]),
        "logit": float(logits[i]),
        "block_relevance": result.block[i].sum(dim=0).numpy() if result.block is not None else None,
    } for i in range(len(pixels))]
    return MethodOutput(maps=pixels, forwards=passes, backwards=passes, extras={"canonized": canonized},
                        per_image=per_image)


@register_method(
    "lrp_epsilon", label="LRP-ε", family="propagation", signed=True,
    description="The logit redistributed layer by layer in proportion to each input's contribution (epsilon rule, "
                "eps = 0.25); pixel resolution at any depth. Own forward + backward pass.",
    reference="Bach et al. 2015, On Pixel-Wise Explanations by LRP, eq. 58 (epsilon rule); zennit (Anders et al.)",
)
def lrp_epsilon(trace: "Trace", block: str, model: "ModelSpec") -> MethodOutput:
    return lrp_output(trace, block, model, "epsilon")


@register_method(
    "lrp_gamma", label="LRP-γ (composite)", family="propagation", signed=True,
    description="zennit's EpsilonGammaBox: box rule on the first convolution, gamma = 0.25 on the others, epsilon "
                "on linear layers; pixel resolution at any depth. Own forward + backward pass.",
    reference="Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview, sec. 10.2 (gamma, z^B rules)",
)
def lrp_gamma(trace: "Trace", block: str, model: "ModelSpec") -> MethodOutput:
    return lrp_output(trace, block, model, "gamma")
