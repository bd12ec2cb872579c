"""The gradient-free attribution of seed 000 as a registry method, beside the CAM family.

The chosen block sets the depth of the explainer: B4 -> B4, B3 -> B34, B2 -> B234,
B1 -> B1234 (all blocks from the chosen one to the last, seed 000 sec. 3.3).

The explainer comes from the one store of fitted things (``explainers.fitted.store.STORE``, through
``fitted``), fitted on the training images the caller of ``explain`` gives (``training=``: the
sidebar's training images in the dashboard), else the model's own; the Segments and Prototypes
pages ask the same store for the same key, so whichever asks first fits it for all of them.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..fitted import store
from ..fitted.prototypes import PrototypeExplainer, PrototypeRecipe
from .base import register_method

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec
    from ..runtime.progress import Progress

PER_CLASS = 5
LABEL = "k-means attribution"


def depth_for(block: str, model: "ModelSpec") -> str:
    """The depth name of every block from ``block`` to the last: B2 -> "B234"."""
    names = list(model.blocks)
    return "B" + "".join(name[1:] for name in names[names.index(block):])


def fitted(model: "ModelSpec", depth: str, per_class: int = PER_CLASS, data: "store.TrainingData | None" = None,
           progress: "Progress | None" = None) -> PrototypeExplainer:
    """The explainer of ``model`` at ``depth`` fitted on ``data`` (a dataset name, an ImageFolder path or a
    loaded ``DatasetSpec``; default: the model's own training set), from the shared store: in memory, else
    from the disk tiers, else fitted now.

    Safe to call from many threads at once, single-flight (``store.Store.get``): one fit however many
    sessions ask at once, each told its progress in its own thread (``progress``, default: the listener
    of ``progress.reporting``). The explainer returned is shared and frozen (``PrototypeExplainer.freeze``).
    """
    return store.STORE.get(recipe(model, depth, per_class, data), progress)


def recipe(model: "ModelSpec", depth: str, per_class: int = PER_CLASS,
           data: "store.TrainingData | None" = None) -> PrototypeRecipe:
    """What ``fitted`` asks the store for: its key cancels a fit under way (``store.STORE.cancel``)."""
    dataset = store.training_set(model, data, f"The {depth} prototype explainer")
    return PrototypeRecipe(model, dataset, PrototypeExplainer(depth, per_class))


def prototypes_fitted(model: "ModelSpec", block: str, data: "store.TrainingData | None" = None) -> bool:
    """Whether the explainer ``kmex_attribution`` needs at ``block`` is already fitted (in memory, in
    ``.cache/`` or shipped in ``assets/``): then the method runs no fit. False when there is no training set."""
    try:
        wanted = recipe(model, depth_for(block, model), data=data)
    except ValueError:  # no training set, or settings the data cannot take: nothing fitted for it either
        return False
    return wanted.key in store.STORE or store.find(wanted.key.kind, wanted.filename) is not None


@register_method(
    "kmex_attribution", label=LABEL, family="prototype", signed=True,
    requires_gap_head=True, needs_all_blocks=True, needs_training=True,
    description="h·c_j/||c_j||² at B4, averaged within k-means segments down to the chosen depth; no gradient.",
    reference="Boubekki & Clemmensen 2026, Post-hoc Self-explanation of CNNs, eq. 11 and the three steps after it",
)
def kmex_attribution(trace: "Trace", block: str, model: "ModelSpec",
                     training: "store.TrainingData | None" = None) -> torch.Tensor:
    """Eq. 11 at the last block, propagated segment-wise to ``block`` (5 prototypes per class), with the
    explainer fitted on ``training`` (None: the model's own training set); a first fit reports to the
    request's progress listener."""
    explainer = fitted(model, depth_for(block, model), data=training)
    maps = []
    for i, target in enumerate(trace.targets.tolist()):
        activations = {name: values[i:i + 1] for name, values in trace.activations.items()}
        maps.append(torch.from_numpy(explainer.attribution(activations, target)[explainer.depth]))
    return torch.stack(maps)
