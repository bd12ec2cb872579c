"""The adapters tried after every specific one: ``timm`` (any other timm model, its blocks from timm's
``feature_info``) and ``generic`` (any other module ending in a linear classifier: ``Family``'s defaults,
the blocks found in its traced graph). ``generic`` matches every network and stays last."""
from __future__ import annotations

from torch import nn

from .base import Family, register_family
from .probe import Probe
from .timm_support import is_timm, timm_blocks, timm_with_classes

__all__ = ["GenericFamily", "TimmFamily"]


@register_family
class TimmFamily(Family):
    """Any other timm model with a ``feature_info``: its blocks read from it, its classifier reset by timm."""

    name = "timm"
    description = "any other timm model: B1..B4 from timm's feature_info"

    def matches(self, net: nn.Module) -> bool:
        return is_timm(net) and getattr(net, "feature_info", None) is not None

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return timm_blocks(net, probe_result)

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        return timm_with_classes(net, num_classes)


@register_family
class GenericFamily(Family):
    """Any other network: ``Family``'s defaults (the blocks found in the traced graph); matches every one."""

    name = "generic"
    description = ("any other module ending in a linear classifier: the stage outputs found in its traced graph "
                   "(or its top-level children), the last per resolution")

    def matches(self, net: nn.Module) -> bool:
        return True
