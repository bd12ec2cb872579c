"""The method registry: name -> a function of a trace, with what the UI needs to show it.

A new method is one function plus one ``@register_method`` line; the sidebar, the API
(``methods()``) and the tests read this registry.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Union

import torch

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..trace import Trace

FAMILIES = ("gradient", "gradient-free", "perturbation", "propagation", "classic", "prototype")


@dataclass
class MethodOutput:
    """Maps (N, h, w) at block resolution plus any passes the method ran beyond the shared trace.

    ``extras`` hold what holds for the whole batch; ``per_image`` (one dict per image, or empty)
    what belongs to one image. Image i's ``Explanation.extras`` merges both.
    """

    maps: torch.Tensor
    forwards: int = 0
    backwards: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def extras_of(self, index: int) -> dict[str, Any]:
        return {**self.extras, **(self.per_image[index] if self.per_image else {})}


Compute = Callable[["Trace", str, "ModelSpec"], Union[torch.Tensor, MethodOutput]]


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    family: str
    description: str
    reference: str
    compute: Compute
    needs_gradients: bool = False
    signed: bool = False
    last_block_only: bool = False
    requires_gap_head: bool = False
    needs_all_blocks: bool = False  # the trace must record every block, not only the chosen one
    check: Callable[["ModelSpec", str], str | None] | None = None  # any further condition, as a reason

    def available(self, model: "ModelSpec", block: str) -> str | None:
        """None when the method applies to this model and block, else the reason it does not."""
        last = list(model.blocks)[-1]
        if self.last_block_only and block != last:
            return f"{self.label} is defined at the last block only ({last}): the classifier lives in its channels"
        if self.requires_gap_head and not model.gap_head:
            return (f"{self.label} needs a global-average-pooling + linear head right after {last}; "
                    f"{model.name} has more layers in between")
        return self.check(model, block) if self.check else None


METHODS: dict[str, Method] = {}


def register_method(name: str, *, label: str, family: str, description: str, reference: str,
                    **options: Any) -> Callable[[Compute], Compute]:
    """Register ``compute(trace, block, model)`` under ``name``; ``options`` are ``Method`` fields
    (needs_gradients, signed, last_block_only, requires_gap_head, needs_all_blocks, check)."""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, not {family!r}")

    def add(compute: Compute) -> Compute:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = Method(name, label, family, description, reference, compute, **options)
        return compute

    return add


def methods(family: str | None = None) -> list[str]:
    """Registry ids, in registration order, optionally of one family."""
    return [name for name, method in METHODS.items() if family is None or method.family == family]


def method_info(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
    return METHODS[name]


from . import cam  # noqa: E402,F401  (registers the CAM family)
from . import prototype  # noqa: E402,F401  (registers the k-means attribution)
from . import perturbation  # noqa: E402,F401  (Score-CAM, Ablation-CAM, Cluster-CAM)
from . import lrp  # noqa: E402,F401  (LRP-epsilon and the gamma composite, through zennit)
from . import classic  # noqa: E402,F401  (model-free image saliency)
