"""The adapters of the CNN families Protoscope knows by name (registered in this order): the built-in
digits ResNet, ResNet (torchvision's and timm's), VGG, DenseNet, EfficientNet (torchvision's, and timm's with
EfficientNet-Lite), MobileNet, ConvNeXt and RegNet."""
from __future__ import annotations

from typing import Any

from torch import nn
from torchvision.models import VGG, ConvNeXt, DenseNet, EfficientNet, MobileNetV2, MobileNetV3, RegNet, ResNet
from torchvision.models.densenet import _DenseLayer
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import NamedMergeBatchNorm
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from .base import Family, register_family
from .canonizers import (
    DenseNetHeadCanonizer,
    ExactMergeBatchNorm,
    ExactSequentialMergeBatchNorm,
    TimmResidualCanonizer,
    TimmResNetCanonizer,
)
from .graph import deepest_levels
from .lrp_coverage import residual_reason
from .probe import Probe
from .timm_support import (
    is_timm,
    is_timm_resnet,
    timm_blocks,
    timm_blocks_known,
    timm_efficientnet_pairs,
    timm_resnet_blocks_only,
    timm_with_classes,
)

__all__ = ["ConvNeXtFamily", "DenseNetFamily", "DigitsFamily", "EfficientNetFamily", "MobileNetFamily", "RegNetFamily",
           "ResNetFamily", "VGGFamily"]


@register_family
class DigitsFamily(Family):
    """The built-in digits ResNet (``DigitsResNet``): torchvision BasicBlocks in layer1..layer4."""

    name = "digits"
    description = "the built-in DigitsResNet (torchvision BasicBlocks): B1..B4 = layer1..layer4"

    def matches(self, net: nn.Module) -> bool:
        # By name along the class hierarchy: the built-in model's module imports this one (no import circle).
        return any(cls.__name__ == "DigitsResNet" and cls.__module__.startswith("explainers.")
                   for cls in type(net).__mro__)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"layer{i}" for i in range(1, 5)]

    def canonizers(self, net: nn.Module) -> list:
        return [ResNetCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        return _torchvision_blocks_only(net)


def _torchvision_blocks_only(net: nn.Module) -> str | None:
    """ResNetCanonizer rewrites torchvision's BasicBlock and Bottleneck only: stages of other blocks are not covered."""
    for i in range(1, 5):
        for name, block in getattr(net, f"layer{i}").named_children():
            if not isinstance(block, (BasicBlock, Bottleneck)):
                return residual_reason(f"layer{i}.{name} is a {type(block).__name__}, not a torchvision BasicBlock "
                                        "or Bottleneck")
    return None


@register_family
class ResNetFamily(Family):
    """torchvision's and timm's ResNets, and networks laid out like them (``layer1..4`` and ``fc``)."""

    name = "resnet"
    description = ("torchvision ResNet, ResNeXt, Wide ResNet, timm's ResNet (its ResNeXt, Wide and 'd' variants), "
                   "and networks laid out like them: B1..B4 = layer1..layer4")

    def matches(self, net: nn.Module) -> bool:
        if isinstance(net, ResNet) or is_timm_resnet(net):
            return True
        return (not is_timm(net) and all(isinstance(getattr(net, f"layer{i}", None), nn.Module) for i in range(1, 5))
                and isinstance(getattr(net, "fc", None), nn.Linear))

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"layer{i}" for i in range(1, 5)]

    def canonizers(self, net: nn.Module) -> list:
        if is_timm_resnet(net):
            return [ExactSequentialMergeBatchNorm(), TimmResNetCanonizer()]
        return [ResNetCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        return timm_resnet_blocks_only(net) if is_timm_resnet(net) else _torchvision_blocks_only(net)

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        return timm_with_classes(net, num_classes) if is_timm_resnet(net) else super().with_classes(net, num_classes)


@register_family
class VGGFamily(Family):
    """torchvision's VGG, and ``features``/``classifier`` stacks with max pools."""

    name = "vgg"
    description = "torchvision VGG (and features/classifier stacks with max pools): B1..B4 = the last four max pools"

    def matches(self, net: nn.Module) -> bool:
        if isinstance(net, VGG):
            return True
        features = getattr(net, "features", None)
        return (not is_timm(net) and isinstance(features, nn.Sequential)
                and isinstance(getattr(net, "classifier", None), (nn.Sequential, nn.Linear))
                and sum(isinstance(m, nn.MaxPool2d) for m in features) >= 2)

    def block_paths(self, net: Any, probe_result: Probe) -> list[str]:
        # duck-typed: a torchvision VGG or a features/classifier stack read by attribute
        # A VGG conv stage ends with its max pool; the last four stages are B1..B4.
        return [f"features.{i}" for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)][-4:]

    def canonizers(self, net: nn.Module) -> list:
        return [VGGCanonizer()]


@register_family
class DenseNetFamily(Family):
    """torchvision's DenseNet: its dense blocks; LRP with its convolution/batch-norm pairs merged."""

    name = "densenet"
    description = "torchvision DenseNet: B1..B4 = features.denseblock1..4"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, DenseNet)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"features.denseblock{i}" for i in range(1, 5)]

    def canonizers(self, net: nn.Module) -> list:
        """zennit 0.5 has none for DenseNet, whose batch norms mostly come after a concatenation, where
        they cannot be merged: only the pairs of a convolution followed by its batch norm are merged
        (``conv0``/``norm0`` and each dense layer's ``conv1``/``norm2``); the other batch norms pass
        relevance on unchanged."""
        pairs = [(["features.conv0"], "features.norm0")]
        pairs += [([f"{name}.conv1"], f"{name}.norm2") for name, module in net.named_modules()
                  if isinstance(module, _DenseLayer)]
        return [NamedMergeBatchNorm(pairs), DenseNetHeadCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        return None  # dense layers concatenate (relevance splits), the head is made modules by the canonizer


@register_family
class EfficientNetFamily(Family):
    """EfficientNet v1 and v2 (torchvision), and timm's EfficientNet and EfficientNet-Lite."""

    name = "efficientnet"
    description = ("EfficientNet v1 and v2 (torchvision), EfficientNet and EfficientNet-Lite (timm): B1..B4 = the "
                   "last stage at 1/4, 1/8, 1/16 and the 1x1 head convolution at 1/32")

    def matches(self, net: nn.Module) -> bool:
        if isinstance(net, EfficientNet):
            return True
        return is_timm(net) and type(net).__name__ == "EfficientNet"

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        if is_timm(net):
            return timm_blocks(net, probe_result)
        return _last_child_per_level(net, "features", probe_result)

    def canonizers(self, net: nn.Module) -> list:
        if not is_timm(net):
            return super().canonizers(net)
        return [ExactMergeBatchNorm(timm_efficientnet_pairs(net)), TimmResidualCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        gated = any("SqueezeExcit" in type(m).__name__ for m in net.modules())
        if is_timm(net) and not gated and timm_blocks_known(net):
            return None  # EfficientNet-Lite: ReLU6, no gates; the canonizers make the residual sums modules
        return residual_reason("its blocks add their input back in their forward code (residual sums)"
                                + (" and gate channels by squeeze-and-excitation (a product of two signals)"
                                   if gated else ""))

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        return timm_with_classes(net, num_classes) if is_timm(net) else super().with_classes(net, num_classes)

    def fold_pairs(self, net: nn.Module) -> list[tuple[str, str]] | None:
        # torch.fx traces into timm's BatchNormAct2d, so the graph shows no conv -> norm module pair.
        if is_timm(net) and timm_blocks_known(net):
            return [(convs[0], norm) for convs, norm in timm_efficientnet_pairs(net)]
        return None


@register_family
class MobileNetFamily(Family):
    """torchvision's MobileNet v2 and v3."""

    name = "mobilenet"
    description = "torchvision MobileNet v2 and v3: B1..B4 = the last block at 1/4, 1/8, 1/16 and the head conv at 1/32"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, (MobileNetV2, MobileNetV3))

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return _last_child_per_level(net, "features", probe_result)

    def lrp_gap(self, net: nn.Module) -> str | None:
        gated = " and gate channels by squeeze-and-excitation" if isinstance(net, MobileNetV3) else ""
        return residual_reason(f"its inverted residual blocks add their input back in their forward code{gated}")


@register_family
class ConvNeXtFamily(Family):
    """torchvision's ConvNeXt (no LRP: zennit has no rule for its LayerNorm and layer scales)."""

    name = "convnext"
    description = "torchvision ConvNeXt: B1..B4 = features.1, .3, .5, .7 (the four stages)"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, ConvNeXt)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return _last_child_per_level(net, "features", probe_result)

    def lrp_gap(self, net: nn.Module) -> str | None:
        return ("its blocks normalise with LayerNorm, for which zennit 0.5.1 has no rule, scale by a learned layer "
                "scale and add their input back in their forward code (residual sums), which no zennit canonizer "
                "rewrites")


@register_family
class RegNetFamily(Family):
    """torchvision's RegNet X and Y."""

    name = "regnet"
    description = "torchvision RegNet X and Y: B1..B4 = trunk_output.block1..block4"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, RegNet)

    def block_paths(self, net: Any, probe_result: Probe) -> list[str]:  # duck-typed: RegNet read by attribute
        return [f"trunk_output.{name}" for name, _ in net.trunk_output.named_children()][-4:]

    def lrp_gap(self, net: nn.Module) -> str | None:
        gated = any("SqueezeExcit" in type(m).__name__ for m in net.modules())
        return residual_reason("its blocks add their input back in their forward code (residual sums)"
                                + (" and gate channels by squeeze-and-excitation" if gated else ""))


def _last_child_per_level(net: nn.Module, container: str, probe_result: Probe) -> list[str]:
    """The last child of ``container`` at each resolution level, the four deepest (stages of a
    ``features`` stack: EfficientNet, MobileNet, ConvNeXt)."""
    parent = net.get_submodule(container)
    paths = [f"{container}.{name}" for name, _ in parent.named_children()]
    candidates = [(i, p, i) for i, p in enumerate(paths) if probe_result.calls.get(p) == 1
                  and probe_result.size(p) is not None]
    return deepest_levels(candidates, probe_result)
