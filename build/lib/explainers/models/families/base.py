"""The family adapter (``Family``) and the registry of adapters (``MODEL_FAMILIES``): what Protoscope
knows about each CNN family, one registered adapter per family.

An adapter answers, for a network of its family:

- ``matches(net)``: is this network one of mine (by type: torchvision's classes, timm's, the
  built-in ``DigitsResNet``; a few by layout);
- ``block_paths(net, probe)``: B1..B4, the outputs of its four deepest stages (module paths,
  shallow to deep). Where a 1x1 head convolution runs at the last stage's resolution before
  the pooling (EfficientNet, MobileNet), it closes the last stage: B4 is its output, the
  feature map the classifier pools;
- ``tail(model, block)``: the network after a block, as a function of the block's output
  giving the logits (Ablation-CAM runs only that). One mechanism serves every family: the
  network's forward traced with torch.fx, cut at the block's output node; values that cross
  the cut without passing through the block (the skip input of a residual unit the block is
  inside) are computed once per image by the part of the graph before the cut (``tail.Cut``);
- ``canonizers(net)`` and ``lrp_gap(net)``: zennit's canonizers for LRP, and None when
  zennit's rules and those canonizers cover every layer and operation of the network, or
  else why not (the LRP methods then say so instead of drawing a map);
- ``with_classes(net, n)``: the same architecture with an ``n``-class classifier, for a
  checkpoint trained on another class count.

The defaults are the generic rule: blocks found in the traced graph (``graph.graph_blocks``), or
from the top-level children when the forward cannot be traced (``graph.children_blocks``); a
block that runs more than once per forward is refused (``probe.check_blocks``).

Adapters register themselves where they are defined (``@register_family``); the first that
matches wins, in registration order, and ``generic`` (always last) matches anything.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable

import torch
from torch import fx, nn
from zennit.canonizers import SequentialMergeBatchNorm

from ...runtime import compute
from ...runtime.hooks import without_hooks
from ...runtime.registry import Registry
from .graph import children_blocks, graph_blocks
from .lrp_coverage import lrp_gap_in_graph
from .probe import Probe
from .tail import TailRun, tail_module

if TYPE_CHECKING:
    from ..spec import ModelSpec

__all__ = ["MODEL_FAMILIES", "Family", "families", "family_for", "family_named", "family_of", "register_family"]


class Family:
    """The adapter of one CNN family; subclasses override what differs (pytorch-grad-cam's idea)."""

    name = ""
    description = ""

    def matches(self, net: nn.Module) -> bool:
        raise NotImplementedError

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        """B1..B4 as module paths, shallow to deep (fewer when the network has fewer stages)."""
        try:
            return graph_blocks(net, probe_result)
        except Exception:  # noqa: BLE001 - torch.fx cannot trace every forward; the children can still be probed
            return children_blocks(net, probe_result)

    def tail(self, model: "ModelSpec", block: str) -> Callable[[torch.Tensor], TailRun | None] | None:
        """The network after ``block`` on the model's inference copy (batch norms folded, channels-last), as a
        function of an image (C, H, W) that gives its logits as a function of the block's outputs (M, D, h, w)
        (``TailRun``; None where the values crossing the cut are not batch-first tensors). None when the
        network has no such cut."""
        cut = tail_module(model.inference_net, model.block_paths[block])
        if cut is None:
            return None

        def for_image(image: torch.Tensor) -> TailRun | None:
            crossing: tuple = ()
            if cut.prefix is not None:  # the values crossing the cut, once for this image (a compute job)
                crossing = compute.run(_crossing_values, cut.prefix, image)
                if not all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1 for v in crossing):
                    return None  # a size or a non-batch value: rows of another count would misread it

            def run(outputs: torch.Tensor) -> torch.Tensor:  # copies: an in-place layer must not change the inputs
                rows = [value.expand(len(outputs), *value.shape[1:]).clone() for value in crossing]
                return cut.tail(outputs.clone(memory_format=torch.channels_last), *rows)

            return run

        return for_image

    def canonizers(self, net: nn.Module) -> list:
        return [SequentialMergeBatchNorm()]

    def fold_pairs(self, net: nn.Module) -> list[tuple[str, str]] | None:
        """(convolution, the batch norm it alone feeds) to fold in the inference copy
        (``explainers.models.inference``); None: find them in the traced graph."""
        return None

    def lrp_gap(self, net: nn.Module) -> str | None:
        """None when zennit's rules (after ``canonizers``) cover every layer, else why not."""
        return lrp_gap_in_graph(net)

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        """A copy of ``net`` whose classifier (its last ``nn.Linear``) has ``num_classes`` outputs."""
        twin = without_hooks(copy.deepcopy(net))
        path, old = [(name, m) for name, m in twin.named_modules() if isinstance(m, nn.Linear)][-1]
        twin.set_submodule(path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        return twin.eval()


@torch.inference_mode()
def _crossing_values(prefix: fx.GraphModule, image: torch.Tensor) -> tuple:
    values = prefix(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))
    return tuple(values)


MODEL_FAMILIES: Registry[Family] = Registry("model family")


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: register one instance under ``cls.name`` (matched in registration order;
    the catch-all ``generic`` stays last)."""
    MODEL_FAMILIES.add(cls.name, cls(), cls.description, last=cls.name == "generic")
    return cls


def families() -> list[str]:
    """The names of the registered adapters, in the order they are tried."""
    return list(MODEL_FAMILIES)


def family_for(net: nn.Module) -> Family:
    """The first registered adapter that matches ``net`` (``generic`` matches every network)."""
    return next(family for family in MODEL_FAMILIES.values() if family.matches(net))


def family_named(name: str) -> Family:
    """The adapter registered as ``name``."""
    return MODEL_FAMILIES[name]  # an unknown name raises UnknownNameError listing the known ones


def family_of(model: "ModelSpec") -> Family:
    """The adapter of a loaded model (its ``family`` is the adapter's name)."""
    return family_named(model.family)
