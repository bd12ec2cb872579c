"""The gradient-free attribution of seed 000 as a registry method, beside the CAM family.

The chosen block sets the depth of the explainer: B4 -> B4, B3 -> B34, B2 -> B234,
B1 -> B1234 (all blocks from the chosen one to the last, seed 000 sec. 3.3).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from . import register_method

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..prototypes import PrototypeExplainer
    from ..trace import Trace

PER_CLASS = 5
_FITTED: dict[tuple[str, str, str, int], "PrototypeExplainer"] = {}


def depth_for(block: str, model: "ModelSpec") -> str:
    """The depth name of every block from ``block`` to the last: B2 -> "B234"."""
    names = list(model.blocks)
    return "B" + "".join(name[1:] for name in names[names.index(block):])


def fitted(model: "ModelSpec", depth: str, per_class: int = PER_CLASS, source: str | None = None,
           progress=None) -> "PrototypeExplainer":
    """The explainer of ``model`` at ``depth`` fitted on ``source`` (a dataset name or an ImageFolder path;
    default: the model's own training set): in memory, else from the disk cache, else fitted now."""
    from ..data import load_dataset
    from ..prototypes import fit_prototypes

    source = source or model.dataset
    if source is None:
        raise ValueError(f"{model.name} has no known training set to fit prototypes on")
    key = (model.fingerprint, source, depth, per_class)
    if key not in _FITTED:
        _FITTED[key] = fit_prototypes(model, load_dataset(source, "train"), depth, per_class, progress=progress)
    return _FITTED[key]


def _has_training_set(model: "ModelSpec", block: str) -> str | None:
    if model.dataset is None:
        return "k-means attribution needs the labelled training set of the model (built in for digits)"
    return None


@register_method(
    "kmex_attribution", label="k-means attribution", family="prototype", signed=True,
    requires_gap_head=True, needs_all_blocks=True, check=_has_training_set,
    description="h·c_j/||c_j||² at B4, averaged within k-means segments down to the chosen depth; no gradient.",
    reference="Boubekki & Clemmensen 2026, Post-hoc Self-explanation of CNNs, eq. 11 and the three steps after it",
)
def kmex_attribution(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """Eq. 11 at the last block, propagated segment-wise to ``block`` (5 prototypes per class)."""
    explainer = fitted(model, depth_for(block, model))
    maps = []
    for i, target in enumerate(trace.targets.tolist()):
        activations = {name: values[i:i + 1] for name, values in trace.activations.items()}
        maps.append(torch.from_numpy(explainer.attribution(activations, target)[explainer.depth]))
    return torch.stack(maps)
