"""What the family adapters read from timm's networks (no adapter is registered here): whether a network is
timm's, its blocks from timm's ``feature_info``, its ResNet and EfficientNet block types and what LRP covers
of them, its (convolution, batch norm) pairs, and its classifier replaced.

timm is imported only where it is needed (``explainers`` runs without it)."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ...runtime.hooks import without_hooks
from .graph import graph_blocks, not_a_block
from .lrp_coverage import residual_reason
from .probe import Probe

__all__ = ["is_timm", "is_timm_resnet", "timm_block_types", "timm_blocks", "timm_blocks_known",
           "timm_efficientnet_pairs", "timm_resnet_blocks_only", "timm_with_classes"]

# duck-typed: timm classes read by attribute (torch types nn.Module.__getattr__ as Tensor | Module), so the
# helpers below hold the network (or what they read of it) as Any where they read its submodules.


def is_timm(net: nn.Module) -> bool:
    """Whether ``net`` is one of timm's models (by the module its class is defined in)."""
    return type(net).__module__.startswith("timm.")


def is_timm_resnet(net: nn.Module) -> bool:
    """Whether ``net`` is timm's ``ResNet`` (its ResNeXt, Wide and 'd' variants too)."""
    return is_timm(net) and type(net).__name__ == "ResNet" and type(net).__module__ == "timm.models.resnet"


def timm_resnet_blocks_only(net: nn.Module) -> str | None:
    """``TimmResNetCanonizer`` rewrites timm's BasicBlock and Bottleneck; one with a squeeze-and-excitation
    or ECA gate (a product of two signals), anti-aliased pooling or another block type is not covered."""
    from timm.models.resnet import BasicBlock as TimmBasic
    from timm.models.resnet import Bottleneck as TimmBottleneck

    for i in range(1, 5):
        for name, block in getattr(net, f"layer{i}").named_children():
            where = f"layer{i}.{name}"
            if not isinstance(block, (TimmBasic, TimmBottleneck)):
                return residual_reason(f"{where} is a {type(block).__name__}, not a timm BasicBlock or Bottleneck")
            if block.se is not None:
                return (f"{where} gates its channels by {type(block.se).__name__} (a product of two signals), for "
                        "which zennit 0.5.1 has no rule")
            extra = next((m for m in (block.aa, block.drop_block) if not isinstance(m, nn.Identity)), None)
            if extra is not None:  # anti-aliased pooling or DropBlock
                return f"{where} applies {type(extra).__name__}, for which zennit 0.5.1 has no rule"
    stem = [m for m in net.conv1.modules()] if isinstance(net.conv1, nn.Sequential) else [net.conv1]
    if not all(isinstance(m, (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU)) for m in stem):
        return "its stem holds layers no zennit rule covers"
    return None


def timm_block_types() -> tuple[type, ...]:
    """timm's EfficientNet block types: (depthwise separable, inverted residual)."""
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    return DepthwiseSeparableConv, InvertedResidual


def timm_blocks_known(net: Any) -> bool:
    """Every block of the timm EfficientNet is one whose forward ``TimmResidualCanonizer`` rewrites."""
    known = timm_block_types()
    blocks = [block for stage in net.blocks for block in stage]
    return all(isinstance(b, known) and getattr(b, "conv_s2d", None) is None for b in blocks)


def timm_efficientnet_pairs(net: nn.Module) -> list[tuple[list[str], str]]:
    """(convolution, the batch norm right after it) of a timm EfficientNet, by name: its batch norms are
    ``BatchNormAct2d`` modules with the activation inside, which zennit's sequential merge does not see."""
    separable, inverted = timm_block_types()
    pairs = [(["conv_stem"], "bn1"), (["conv_head"], "bn2")]
    for name, module in net.named_modules():
        if isinstance(module, separable):
            pairs += [([f"{name}.conv_dw"], f"{name}.bn1"), ([f"{name}.conv_pw"], f"{name}.bn2")]
        elif isinstance(module, inverted):
            pairs += [([f"{name}.conv_pw"], f"{name}.bn1"), ([f"{name}.conv_dw"], f"{name}.bn2"),
                      ([f"{name}.conv_pwl"], f"{name}.bn3")]
    return pairs


def timm_blocks(net: nn.Module, probe_result: Probe) -> list[str]:
    """From timm's ``feature_info`` (module and reduction of each stage): the last module per reduction,
    the four deepest. B4 continues to the last top-level module that still runs at the same resolution
    before the pooling (EfficientNet's ``conv_head``/``bn2``): the feature map the classifier pools."""
    info: Any = getattr(net, "feature_info", None)
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info or [])
    per_reduction: dict[int, str] = {}
    for entry in entries:
        per_reduction[int(entry["reduction"])] = str(entry["module"])
    paths = [per_reduction[r] for r in sorted(per_reduction)][-4:]
    paths = [p for p in paths if probe_result.size(p) is not None]
    if not paths:
        return graph_blocks(net, probe_result)
    last, size = paths[-1], probe_result.size(paths[-1])
    top = paths[-1].split(".")[0]
    order = probe_result.order
    modules = dict(net.named_modules())
    later = [p for p in order[order.index(last) + 1:] if "." not in p and p != top] if last in order else []
    for path in later:
        if probe_result.size(path) != size:
            break
        if probe_result.calls.get(path) == 1 and not not_a_block(modules[path]):
            paths[-1] = path
    return paths


def timm_with_classes(net: nn.Module, num_classes: int) -> nn.Module:
    """A copy of a timm model with an ``num_classes``-way classifier (timm's ``reset_classifier``)."""
    twin: Any = without_hooks(copy.deepcopy(net))
    twin.reset_classifier(num_classes)
    return twin.eval()
