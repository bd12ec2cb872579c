"""Checks shared by the fitted estimators: the model, the data, its classes matched to the model's; NotFittedError.

Both the prototype explainers and the Q-SENN layer check these at the door of ``fit``. A dataset's classes are
matched to the model's by name (``class_map``): a folder with sub-folders "3" and "7" fits the digits model's classes
3 and 7; a folder whose class names the model does not have is refused, naming both lists.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data.datasets import DatasetSpec, plural
from ..models import ModelSpec
from ..runtime.errors import DatasetError, UserInputError

LARGEST_SEED = 2 ** 32 - 1  # the largest seed the estimators take: scikit-learn's k-means takes no larger


class NotFittedError(RuntimeError):
    """``predict`` or ``explain`` called before ``fit``."""


def quoted(names: Sequence[str], limit: int = 12) -> str:
    """'a', 'b', 'c' ... (N in all): class names for a message."""
    shown = ", ".join(f"'{name}'" for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _nameless(model: ModelSpec) -> bool:
    """A model whose class names are only its indices ("0", "1", ...) and that has no known
    training set: a checkpoint saved without names. Its classes are the folder's in sorted order."""
    return model.dataset is None and list(model.classes) == [str(i) for i in range(model.num_classes)]


def folder_class_names(model: ModelSpec, dataset: DatasetSpec) -> list[str] | None:
    """The names a model without class names takes from its training folder (its sub-folders in sorted order,
    as ``class_map`` matches them), or None when the model has names of its own or the counts differ."""
    if _nameless(model) and len(dataset.classes) == model.num_classes and list(dataset.classes) != list(model.classes):
        return list(dataset.classes)
    return None


def class_map(model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
    """The model's class of each of the dataset's classes (index: the dataset's label).

    By name when every class of the dataset is one of the model's (all of them or a subset:
    a folder "3", "7" for the digits model gives [3, 7]); by position when the model has no
    class names (a checkpoint saved without them) and the counts agree (torchvision's
    ImageFolder convention: classes are the sub-folders in sorted order). Anything else is
    refused with both class lists, as fitting would silently give the folder's classes the
    wrong labels.
    """
    names = list(dataset.classes)
    index = {name: i for i, name in enumerate(model.classes)}
    if all(name in index for name in names):
        return np.array([index[name] for name in names], dtype=np.int64)
    if _nameless(model) and len(names) == model.num_classes:
        return np.arange(len(names), dtype=np.int64)
    unknown = [name for name in names if name not in index]
    hint = (f"{plural(len(names), 'class')} for {model.num_classes}" if _nameless(model) else
            f"{model.name} has no class {quoted(unknown, 5)}")
    raise DatasetError(
        f"The classes of {dataset.name} ({quoted(names)}) are not the classes of {model.name} "
        f"({quoted(list(model.classes))}): {hint}. Give a folder with one sub-folder per class named as the "
        f"model's classes (all of them, or some)"
        + ("; or the one the model was trained on." if _nameless(model) else ".")
    )


def model_labels(model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
    """The dataset's labels as the model's class indices (see ``class_map``)."""
    mapping = class_map(model, dataset)
    return mapping[dataset.labels] if len(dataset.labels) else dataset.labels.copy()


def mapping_note(model: ModelSpec, dataset: DatasetSpec) -> str:
    """The classes of a dataset that are not the model's, in order, as a key part ("" in the usual case)."""
    mapping = class_map(model, dataset)
    return "" if np.array_equal(mapping, np.arange(model.num_classes)) else f"|classes={mapping.tolist()}"


def check_model(model: object) -> None:
    """A ``UserInputError`` unless ``model`` is a ``ModelSpec``."""
    if not isinstance(model, ModelSpec):
        raise UserInputError(f"model must be a ModelSpec (explainers.load_model gives one), "
                             f"not a {type(model).__name__}")


def check_dataset(dataset: object, what: str) -> None:
    """A ``UserInputError`` unless ``dataset`` is a ``DatasetSpec``, a ``DatasetError`` if it has no images
    (``what``: what would be fitted on it, "prototypes")."""
    if not isinstance(dataset, DatasetSpec):
        raise UserInputError(f"dataset must be a DatasetSpec (explainers.load_dataset(name or folder) gives one), "
                             f"not a {type(dataset).__name__}")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.name} has no {dataset.split} images to fit {what} on: give a folder with "
                           "one sub-folder of images per class")


def check_classes(model: ModelSpec, dataset: DatasetSpec, per_class: int, pooled_embedding: bool) -> np.ndarray:
    """The dataset's labels in the model's classes, after checking that every class of the
    dataset has images, and (KMEx: one embedding per image) at least ``per_class`` of them."""
    labels = model_labels(model, dataset)
    images = np.bincount(dataset.labels, minlength=len(dataset.classes))
    empty = [dataset.classes[i] for i in np.flatnonzero(images == 0)]
    if empty:
        skipped = getattr(dataset, "skipped", None)
        why = f" ({plural(len(skipped), 'unreadable file')} left out)" if skipped else ""
        raise DatasetError(
            f"{'Class' if len(empty) == 1 else 'Classes'} {quoted(empty)} of {dataset.name} "
            f"{'has' if len(empty) == 1 else 'have'} no {dataset.split} images{why}: add images to "
            f"{'its sub-folder' if len(empty) == 1 else 'their sub-folders'}, or remove "
            f"{'it' if len(empty) == 1 else 'them'} from the folder.")
    if pooled_embedding:
        few = [i for i in range(len(dataset.classes)) if images[i] < per_class]
        if few:
            listed = ", ".join(f"'{dataset.classes[i]}' ({plural(int(images[i]), 'image')})" for i in few[:8])
            most = int(min(images[i] for i in few))
            raise DatasetError(
                f"{'Class' if len(few) == 1 else 'Classes'} {listed}{', ...' if len(few) > 8 else ''} "
                f"{'has' if len(few) == 1 else 'have'} fewer training images than the {per_class} prototypes per "
                f"class asked (KMEx gives each prototype at least one image): choose at most {most} prototypes "
                f"per class (K/C), or add images to {'that class' if len(few) == 1 else 'those classes'}.")
    return labels
