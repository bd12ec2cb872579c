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

Canonizers and coverage come from the model's family adapter (``explainers.models.families``):
``ResNetCanonizer`` for the ResNet family (torchvision ResNets, ResNeXt, Wide ResNets and the
built-in digits model, whose stages are torchvision ``BasicBlock`` s), ``VGGCanonizer`` for VGG,
and for DenseNet a ``NamedMergeBatchNorm`` of the pairs that are a convolution followed by its
batch norm (``conv0``/``norm0`` and each dense layer's ``conv1``/``norm2``; the other batch norms
come after a concatenation, cannot be merged, and pass relevance on unchanged) plus a canonizer
that makes DenseNet's functional head ReLU and pooling modules; for EfficientNet-Lite (timm, the
built-in ``efficientnet_lite0``) an exact merge of each convolution with its batch norm and a
canonizer that makes each block's residual sum a zennit ``Sum``. Families whose layers or forward
code zennit 0.5.1 has no rule for (EfficientNet with squeeze-and-excitation gates, MobileNet,
ConvNeXt, RegNet, most timm models: residual sums and gates written in ``forward``, LayerNorm)
are refused with the reason
(``lrp_unavailable``, the methods' ``check``) instead of getting a map that would look valid.
Other networks get zennit's ``SequentialMergeBatchNorm`` when their traced graph has only
covered operations; if that canonizer does not fit (an error, or logits that no longer match the
model's), LRP runs again without canonizer and says so (``extras["canonized"]``).

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
of the logit. Each image's ``extras["relevance_total"]``, ``extras["relevance_absorbed"]`` and
``extras["logit"]`` report the sums. Every call checks them (``conservation``, below): the pixels'
relevance plus what the rule layers absorbed must give the logit, and neither may blow up;
otherwise ``MethodUnavailableError`` says why and no map is returned.

LRP modifies the backward pass, so it cannot share the trace's gradients: it runs its own
forward and backward pass, on a private copy of the network's modules made for the call
(``structural_copy``: the same weight storage, new tensor objects, so canonizers and rules
that swap weights swap the copy's, and the shared model is never touched, even by another
thread), with zennit's hooks registered in a ``with`` block that removes them whatever
happens inside. The pass is a job of the compute thread (``explainers.runtime.compute``).
"""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn
from zennit.composites import EpsilonGammaBox, LayerMapComposite, layer_map_base
from zennit.rules import Epsilon
from zennit.types import Convolution

from ..models.families import family_of
from ..models.inference import structural_copy
from ..runtime import compute
from ..runtime.devices import accumulator_dtype
from ..runtime.errors import MethodUnavailableError
from ..runtime.hooks import tapped
from ..runtime.settings import Setting
from .base import MethodOutput, register_method

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

EPSILON = 0.25
GAMMA = 0.25
STABILIZER = 1e-6  # zennit's default for the rules other than epsilon
RULES = ("epsilon", "gamma")


@dataclass
class Relevance:
    """The result of one LRP pass over a batch: relevance at the input (N, C, H, W), at the block's
    output (N, D, h, w) when one was named, the logits of the pass, and per image the relevance the
    rule layers absorbed (what entered each one minus what it handed down, summed over layers)."""

    pixels: torch.Tensor
    block: torch.Tensor | None
    logits: torch.Tensor
    # (N,) relevance the rule layers kept (biases, stabilisers); see ``conservation``
    absorbed: torch.Tensor | None = None


def canonizers_for(model: "ModelSpec") -> list:
    """zennit's canonizers for the model, as its family adapter names them (``explainers.models.families``)."""
    return family_of(model).canonizers(model.net)


_GAPS: "weakref.WeakKeyDictionary[nn.Module, str | None]" = weakref.WeakKeyDictionary()
_GAPS_LOCK = threading.Lock()


def coverage_gap(model: "ModelSpec") -> str | None:
    """None when zennit's rules and the family's canonizers cover every layer and operation of the
    network, else what they do not cover (found once per network, then kept)."""
    with _GAPS_LOCK:
        if model.net in _GAPS:
            return _GAPS[model.net]
    gap = family_of(model).lrp_gap(model.net)
    with _GAPS_LOCK:
        _GAPS[model.net] = gap
    return gap


def lrp_unavailable(model: "ModelSpec", block: str) -> str | None:
    """The reason LRP is not offered for this model, or None (the methods' ``check``)."""
    gap = coverage_gap(model)
    if gap is None:
        return None
    return (f"LRP is not available for {model.name} ({model.family} family): {gap}. Its relevance would not be "
            "conserved, so no map is drawn; the gradient and perturbation methods work on this network")


def input_box(model: "ModelSpec", shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor]:
    """The lowest and highest possible input values: pixels 0 and 1 after the model's normalisation."""
    return (model.transform.model_values(torch.zeros(shape, device=model.device)),
            model.transform.model_values(torch.ones(shape, device=model.device)))


def composite_for(model: "ModelSpec", rule: str, shape: torch.Size, epsilon: float = EPSILON,
                  gamma: float = GAMMA, stabilizer: float = STABILIZER, canonize: bool = True):
    """The zennit composite of ``rule`` (``epsilon`` or ``gamma``) with the model's canonizers
    (none if not ``canonize``).

    ``stabilizer`` guards the denominators of the rules other than epsilon (residual sums,
    average pooling, gamma, box); it must go to zero with epsilon for LRP-0 = gradient x input.
    """
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
    """The dtype of the model's weights (LRP's input is cast to it)."""
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
    absorbed = torch.zeros(inputs.shape[0], dtype=accumulator_dtype(inputs.device), device=inputs.device)

    def record(output: torch.Tensor) -> None:
        output.register_hook(lambda grad: captured.__setitem__("block", grad))

    taps = {twin.get_submodule(model.block_paths[block]): record} if block else {}
    with tapped(taps, private=True), composite.context(twin) as modified, torch.enable_grad():
        _account(composite, absorbed)
        x = inputs.detach().clone().requires_grad_(True)
        logits = modified(x)
        chosen = logits.gather(1, targets[:, None])
        initial = torch.zeros_like(logits).scatter(1, targets[:, None], chosen.detach())
        (pixels,) = torch.autograd.grad(logits, x, grad_outputs=initial)
    block_relevance = captured.get("block")
    return Relevance(pixels=pixels.detach(), logits=logits.detach(), absorbed=absorbed,
                     block=block_relevance.detach() if block_relevance is not None else None)


def _account(composite, absorbed: torch.Tensor) -> None:
    """Make every rule hook of ``composite`` (registered on a private copy, for this pass only) add
    what it absorbs to ``absorbed``: per image, the relevance entering the layer from above minus
    the relevance it hands to its input."""
    for hook in list(composite.hook_refs):
        rule = hook.backward

        def backward(module, grad_input, grad_output, rule=rule):
            handed = rule(module, grad_input, grad_output)
            above = grad_output[0] if isinstance(grad_output, tuple) else grad_output
            below = [r for r in (handed if isinstance(handed, tuple) else (handed,)) if r is not None]
            if isinstance(above, torch.Tensor) and below:
                kept = above.detach().to(absorbed.dtype).flatten(1).sum(1)
                kept = kept - sum(r.detach().to(absorbed.dtype).flatten(1).sum(1) for r in below)
                absorbed.add_(kept)
            return handed

        hook.backward = backward  # this hook object lives only as long as this pass


def faithful(result: Relevance, logits: torch.Tensor) -> bool:
    """Whether the canonized network still computes the model's logits (up to zennit's batch-norm eps)."""
    return torch.allclose(result.logits, logits, rtol=1e-3, atol=1e-3 * float(logits.abs().max().clamp_min(1)))


# Conservation (checked on every call, ``conservation``): relevance is made or lost only where a rule
# says so. At each rule layer the share of its biases (and of epsilon and the stabilisers) stays
# behind; nowhere else may relevance appear or vanish. So per image
#     sum of pixel relevance + what the rule layers absorbed = f_c(x)
# up to float32 rounding: LEAK of the magnitudes involved (|f_c| + |pixel sum| + |absorbed|). A
# residual sum without a canonizer (relevance counted twice), a gate multiplied in, a layer with no
# rule break this identity by a share of f_c itself. A denominator near zero keeps it (the layer's
# bias share takes the excess) but blows the magnitudes up: the pixel sum and the absorbed share may
# not exceed BLOWUP times the logits' scale (|f_c| + the largest |logit| of the image).
# Measured (random weights, and batch-norm statistics and shifts drawn at random as a stand-in for
# trained ones; the trained digits model; both rules; predicted, least and random targets): the
# rounding leak is at most 7.4e-5 (ResNet-50 at 64 px) and 2.0e-4 (ResNet-152 at 224 px), the sums
# at most 0.5 of the logits' scale; EfficientNet-Lite0 with its ImageNet weights on the 19 built-in
# photos (top, bottom and one other class): leak 1e-8, sums 0.51. The same Lite0 without its
# canonizers (its residual sums as written in forward), the blow-up: LRP-epsilon -5.4e11
# at the pixels for a logit of 9.3 on the cat photo, the gamma composite 1028 with a leak of 98%.
LEAK = 2e-3
BLOWUP = 100.0


def conservation(result: Relevance, targets: torch.Tensor) -> list[str | None]:
    """Per image: None when its relevance is conserved as above, else what went wrong."""
    # Summed where the relevance is (a GPU sums it faster than it copies it), in the widest float there.
    totals = result.pixels.to(accumulator_dtype(result.pixels.device)).flatten(1).sum(1).cpu().double()
    logits = result.logits.cpu().double()
    chosen = logits.gather(1, targets.cpu()[:, None])[:, 0]
    absorbed = result.absorbed.cpu().double() if result.absorbed is not None else torch.zeros_like(totals)
    problems: list[str | None] = []
    for i in range(len(totals)):
        f, total, kept = float(chosen[i]), float(totals[i]), float(absorbed[i])
        scale = abs(f) + float(logits[i].abs().max())
        if not (bool(torch.isfinite(result.pixels[i]).all()) and all(map(torch.isfinite, (chosen[i], absorbed[i])))):
            problems.append(f"the relevance is not finite (NaN or infinite values) for a logit of {f:.3g}")
        elif max(abs(total), abs(kept)) > BLOWUP * max(scale, 1e-12):
            problems.append(f"the relevance blew up: it sums to {total:.3g} at the pixels for a logit of {f:.3g}")
        elif abs(total + kept - f) > LEAK * (abs(f) + abs(total) + abs(kept) + 1e-12):
            problems.append(f"relevance was made or lost outside the rules: the pixels hold {total:.4g} and the rule "
                            f"layers absorbed {kept:.4g}, which should add up to the logit {f:.4g}")
        else:
            problems.append(None)
    return problems


def lrp_output(trace: "Trace", block: str, model: "ModelSpec", rule: str, epsilon: float = EPSILON,
               gamma: float = GAMMA) -> MethodOutput:
    """Pixel relevance summed over colour channels as the map; the block's relevance and the sums as extras.

    If the canonizers do not fit the model, LRP runs again without them (two passes of each kind).
    Relevance that is not conserved (``conservation``) raises ``MethodUnavailableError`` instead of
    giving a map that would look valid.
    """
    passes, canonized = 1, True
    try:
        result = relevance(model, trace.inputs, trace.targets, rule=rule, block=block, epsilon=epsilon, gamma=gamma)
    except RuntimeError:  # a batch norm merged into a layer of another width: the canonizer does not fit
        result = None
    if result is None or not faithful(result, trace.logits):
        passes, canonized = 1 + (result is not None), False
        result = relevance(model, trace.inputs, trace.targets, rule=rule, block=block, epsilon=epsilon, gamma=gamma,
                           canonize=False)
    problems = [p for p in conservation(result, trace.targets) if p]
    if problems:
        raise MethodUnavailableError(f"LRP gives no valid map for {model.name}: {problems[0]}. The map is not "
                                     "drawn, since it would look like a valid one.")
    pixels = result.pixels.sum(dim=1)
    totals = pixels.sum(dim=(1, 2))
    logits = result.logits.gather(1, trace.targets[:, None])[:, 0]
    per_image = [{
        "relevance_total": float(totals[i]),
        "relevance_absorbed": float(result.absorbed[i]) if result.absorbed is not None else None,
        "logit": float(logits[i]),
        "block_relevance": result.block[i].sum(dim=0).cpu().numpy() if result.block is not None else None,
    } for i in range(len(pixels))]
    return MethodOutput(maps=pixels, forwards=passes, backwards=passes, extras={"canonized": canonized},
                        per_image=per_image)


EPSILON_SETTING = Setting(
    "epsilon", float, EPSILON, "The epsilon rule's stabiliser, in the units of each layer's outputs: larger values "
    "absorb more of the weak, contradictory contributions (sparser, less noisy maps); towards 0 it becomes LRP-0, "
    "gradient x input.", low=1e-6, high=10.0, label="epsilon")
GAMMA_SETTING = Setting(
    "gamma", float, GAMMA, "How much the gamma rule favours positive contributions in the convolutions after the "
    "first (0: plain LRP-0 there).", low=0.0, high=10.0, label="gamma")


@register_method(
    "lrp_epsilon", label="LRP-ε", family="propagation", signed=True,
    description="The logit redistributed layer by layer in proportion to each input's contribution (epsilon rule, "
                f"eps = {EPSILON} by default); pixel resolution at any depth. Own forward + backward pass.",
    reference="Bach et al. 2015, On Pixel-Wise Explanations by LRP, eq. 58 (epsilon rule); zennit (Anders et al.)",
    check=lrp_unavailable, settings=(EPSILON_SETTING,),
)
def lrp_epsilon(trace: "Trace", block: str, model: "ModelSpec", *, epsilon: float = EPSILON) -> MethodOutput:
    """LRP-epsilon on every layer (Bach et al. 2015), through zennit, conservation checked."""
    return lrp_output(trace, block, model, "epsilon", epsilon=epsilon)


@register_method(
    "lrp_gamma", label="LRP-γ (composite)", family="propagation", signed=True,
    description=f"zennit's EpsilonGammaBox: box rule on the first convolution, gamma = {GAMMA} (by default) on the "
                "others, epsilon on linear layers; pixel resolution at any depth. Own forward + backward pass.",
    reference="Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview, sec. 10.2 (gamma, z^B rules)",
    check=lrp_unavailable, settings=(GAMMA_SETTING, EPSILON_SETTING),
)
def lrp_gamma(trace: "Trace", block: str, model: "ModelSpec", *, gamma: float = GAMMA,
              epsilon: float = EPSILON) -> MethodOutput:
    """zennit's EpsilonGammaBox composite (Montavon et al. 2019), conservation checked."""
    return lrp_output(trace, block, model, "gamma", epsilon=epsilon, gamma=gamma)
