"""The side-by-side view of two models (``pages/compare.py``): which models, which image, which methods they share.

Two models of the same input kind (the built-in set of pictures that suits them, and their colour mode) are
explained on one image, each with its own shared pass (``ui.cache.explanations``, the Saliency page's caches,
under the same keys as the sidebar's), at the same depth name B1..B4, which maps to each model's own module.
The methods offered are those that apply to both: the CAM family, and the gradient-free k-means attribution
when both models have their prototypes fitted already (shipped or cached), so that opening the page never
starts a fit.
"""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from explainers import UserInputError, method_info
from explainers.data import dataset_splits
from explainers.methods import prototypes_fitted
from explainers.models import MODELS, ModelSpec
from explainers.runtime import default_device

from .cache import dataset_image, get_dataset, get_model
from .sidebar import DEFAULT_METHODS, Selection

__all__ = ["CAM_FAMILY", "PROTOTYPE_METHOD", "Side", "compared_image", "load_side", "model_options",
           "same_input_kind", "shared_methods"]

CAM_FAMILY = DEFAULT_METHODS  # Grad-CAM, Grad-CAM++, XGrad-CAM, LayerCAM, HiResCAM, CAM, Eigen-CAM, EigenGrad-CAM
PROTOTYPE_METHOD = "kmex_attribution"
SIDEBAR = "the sidebar's model"


@dataclass
class Side:
    """One of the two models compared: its name in the page, the ModelSpec, and its cache key (the sidebar's
    form, so both share every cached pass and map)."""

    name: str
    model: ModelSpec
    key: str


def model_options(selection: Selection) -> list[str]:
    """The registered models, and the sidebar's own model when it is not one of them (a typed or uploaded one)."""
    names = MODELS.names()
    if selection.model is not None and selection.model.name not in names:
        names = names + [SIDEBAR]
    return names


def load_side(name: str, selection: Selection) -> Side:
    """The model ``name`` (``UserInputError`` when it cannot be loaded, saying why)."""
    if name == SIDEBAR and selection.model is not None:
        return Side(selection.model.name, selection.model, selection.model_key)
    model = get_model(name, False, str(default_device()))
    return Side(name, model, f"{name}:trained:{model.device}:{model.fingerprint}")


def compared_image(selection: Selection, kind: str) -> tuple[Image.Image, bytes, str]:
    """The sidebar's image when it is of the models' input kind (``ModelSpec.sample_dataset``), else the first
    test image of that kind (the caption says so)."""
    sidebar = selection.model
    if sidebar is not None and sidebar.sample_dataset == kind and selection.image is not None \
            and selection.image_data is not None:
        return selection.image, selection.image_data, selection.image_caption
    splits = list(dataset_splits(kind))
    named = bool(get_dataset(kind, "train").names)  # the photos: one set of named pictures, its "train" split
    split = "train" if named or "test" not in splits else "test"
    image, data, _ = dataset_image(kind, split, 0)
    return image, data, (f"{kind} {split} #0 (the sidebar's image is not a {kind} picture: choose a {kind} model "
                         "there to pick another)")


def shared_methods(left: ModelSpec, right: ModelSpec, block: str,
                   training: str | None) -> tuple[list[str], list[tuple[str, str]]]:
    """The methods that apply to both models at ``block`` (the CAM family, then the k-means attribution if both
    have fitted prototypes there), and the others with the reason, in words."""
    shared, left_out = [], []
    for name in [*CAM_FAMILY, PROTOTYPE_METHOD]:
        info = method_info(name)
        reasons = []
        for model in (left, right):
            data = training if model is left else None
            reason = info.available(model, block, data)
            if reason is None and name == PROTOTYPE_METHOD and not prototypes_fitted(model, block, data):
                reason = (f"{model.name} has no fitted prototypes at {block} yet (fit them on the Segments page; "
                          "this page never starts a fit)")
            if reason:
                reasons.append(reason)
        if reasons:
            left_out.append((name, "; ".join(reasons)))
        else:
            shared.append(name)
    return shared, left_out


def same_input_kind(left: ModelSpec, right: ModelSpec) -> None:
    """Refuse (``UserInputError``) two models that do not take the same kind of picture."""
    if left.sample_dataset != right.sample_dataset or left.transform.mode != right.transform.mode:
        raise UserInputError(f"{left.name} takes {left.sample_dataset} pictures ({left.transform.mode}) and "
                             f"{right.name} {right.sample_dataset} ({right.transform.mode}): choose two models of "
                             "the same input kind")
