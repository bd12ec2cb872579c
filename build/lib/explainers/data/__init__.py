"""Images and datasets: image files read safely, the built-in sets (digits, the marked digits,
scikit-image's photos) and any folder of class sub-folders, each registered by name.

A new dataset is one function registered in ``DATASETS`` (see the README's "Extending").
"""
from . import marked  # noqa: F401  (registers the digits_marked dataset)
from .datasets import (
                       DATASETS,
                       IMAGE_SUFFIXES,
                       PHOTOS,
                       DatasetSpec,
                       dataset_splits,
                       image_folder,
                       imagenet_classes,
                       load_dataset,
                       plural,
)
from .images import image_notes, load_image, png_compatible
from .marked import MARKED_SPLITS, mark_reliance

__all__ = ["DATASETS", "IMAGE_SUFFIXES", "MARKED_SPLITS", "PHOTOS", "DatasetSpec", "dataset_splits", "image_folder",
           "imagenet_classes",
           "image_notes", "load_dataset", "load_image", "mark_reliance", "plural", "png_compatible"]
