"""A copy of a network for the perturbation methods' many gradient-free forward passes.

Score-CAM, Cluster-CAM and Ablation-CAM push hundreds of perturbed inputs through a network
in eval mode. Two changes make each pass cheaper without changing what it computes:

- every batch norm fed by a convolution alone is folded into that convolution's weights and
  bias (in eval mode BN is the affine map y = gamma * (x - mu) / sqrt(var + eps) + beta, so
  conv followed by BN is one convolution; ``torch.nn.utils.fusion.fuse_conv_bn_eval``);
- weights and inputs are kept channels-last, the layout oneDNN's CPU convolutions prefer.

Both only reorder floating-point sums: logits agree with the original to ~1e-6. The copy is
checked against the original on a probe input when it is made; a model where it does not
agree (or that torch.fx cannot trace, so its conv -> BN pairs are unknown) keeps an unfolded
channels-last copy, and failing that the original network.
"""
from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..runtime.hooks import without_hooks
from .families import family_for

__all__ = ["conv_bn_pairs", "fold_batch_norms", "hookless_copy", "inference_copy", "structural_copy"]


def hookless_copy(net: nn.Module) -> nn.Module:
    """An eval-mode deep copy of ``net`` without hooks and without gradients for its parameters.

    A copy made while another pass runs (the trace's hooks, a counter in a test) or of a user's
    hooked model must not inherit hooks that would fire in the copy's passes too.
    """
    return without_hooks(copy.deepcopy(net)).eval().requires_grad_(False)


def structural_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net``'s modules, without hooks, whose parameters and buffers are new tensor
    objects over the *same storage* as ``net``'s: no weight is copied.

    For methods that rewrite a network while they run (zennit's canonizers and rules replace
    ``module.weight`` or its ``.data`` and restore it afterwards): the rewrite happens to the
    copy's tensor objects, never to the shared model another session is using, while changes
    made to the model's weights in place are seen by the copy. Cheap enough to make per call.
    """
    memo: dict[int, object] = {}
    for tensor in list(net.parameters()) + list(net.buffers()):
        if isinstance(tensor, nn.Parameter):
            memo[id(tensor)] = nn.Parameter(tensor.detach(), requires_grad=tensor.requires_grad)
        else:
            memo[id(tensor)] = tensor.detach()
    return without_hooks(copy.deepcopy(net, memo))


def conv_bn_pairs(net: nn.Module) -> list[tuple[str, str]]:
    """(conv, batch norm) module names where the BN's only input is the conv's output and the conv's
    output goes nowhere else, each module called once. Empty when torch.fx cannot trace ``net``."""
    try:
        graph = fx.symbolic_trace(net).graph
    except Exception:  # noqa: BLE001 - any untraceable forward just means: fold nothing
        return []
    modules = dict(net.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules.get(str(source.target)), nn.Conv2d) and len(source.users) == 1
                and calls[str(source.target)] == 1 and calls[str(node.target)] == 1):
            pairs.append((str(source.target), str(node.target)))
    return pairs


def fold_batch_norms(net: nn.Module, pairs: list[tuple[str, str]] | None = None) -> nn.Module:
    """A ``hookless_copy`` of ``net`` with each (conv, batch norm) pair folded into one convolution;
    ``pairs`` by module name, or (None) ``conv_bn_pairs`` found in the traced graph. The batch norm
    becomes what it applies after normalising: nothing (``nn.Identity``) for a plain batch norm, the
    dropout and activation of a norm-and-activation module such as timm's ``BatchNormAct2d``.
    Module names and the forward code stay as they were."""
    folded = hookless_copy(net)
    for conv_name, bn_name in conv_bn_pairs(folded) if pairs is None else pairs:
        conv, bn = folded.get_submodule(conv_name), folded.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.modules.batchnorm._BatchNorm)
        folded.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        folded.set_submodule(bn_name, _after_normalising(bn))
    return folded


def _after_normalising(norm: nn.Module) -> nn.Module:
    act, drop = getattr(norm, "act", None), getattr(norm, "drop", None)
    rest = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    return nn.Sequential(*rest) if rest else nn.Identity()


@torch.inference_mode()
def _agrees(candidate: nn.Module, net: nn.Module, probe: torch.Tensor) -> bool:
    expected = net(probe)
    found = candidate(probe.contiguous(memory_format=torch.channels_last))
    scale = float(expected.abs().max().clamp_min(1))
    return found.shape == expected.shape and torch.allclose(found, expected, rtol=1e-4, atol=1e-4 * scale)


def inference_copy(net: nn.Module, probe: torch.Tensor) -> nn.Module:
    """The fastest of (BN-folded channels-last copy, channels-last copy, ``net`` itself) whose logits
    on ``probe`` (a batch of inputs) agree with ``net``'s. Gradients are not tracked in the copies.
    The pairs to fold come from the network's family adapter when it names them."""
    pairs = family_for(net).fold_pairs(net)
    was_training = net.training
    if was_training:  # a shared model is in eval mode already: it is never written to then
        net.eval()
    try:
        for make in (lambda n: fold_batch_norms(n, pairs), hookless_copy):
            candidate = make(net).to(memory_format=torch.channels_last)
            if _agrees(candidate, net, probe):
                return candidate
        return net
    finally:
        if was_training:
            net.train(True)
