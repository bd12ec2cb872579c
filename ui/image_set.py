"""Which images a page scores maps over: the sidebar's current image, N test images of the model's own
image set, or N test images of a folder. Reusable by any page that evaluates over several images.

    chosen = image_set_control(selection)          # draws the controls; None when nothing usable is chosen
    images = chosen.images(selection)              # a list of one PIL image, or a DatasetSpec subset
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import streamlit as st

from explainers import UserInputError
from explainers.data import DATASETS, plural
from explainers.evaluation import subset

from .cache import get_dataset
from .on_request import kept
from .sidebar import Selection

KINDS = ("current", "dataset", "folder")
DEFAULT_COUNT = 20


@dataclass(frozen=True)
class ImageSet:
    """A chosen set of images: ``kind`` (one of ``KINDS``), the dataset name or folder ``source``, how many
    images (``count``), a ``key`` that identifies them for caches, and a ``label`` for captions."""

    kind: str
    source: str | None
    count: int
    key: str
    label: str

    def images(self, selection: Selection) -> Any:
        """The images: the current one in a list, or ``count`` test images spread over the dataset."""
        if self.kind == "current":
            return [selection.image]
        return subset(get_dataset(self.source, "test"), self.count)


def current_image_key(selection: Selection) -> str:
    """The cache key of the sidebar's current image as an image set of one."""
    assert selection.image_data is not None
    return "current:" + hashlib.blake2b(selection.image_data, digest_size=8).hexdigest()


def image_set_control(selection: Selection, prefix: str = "eval_") -> ImageSet | None:
    """Draw the image-set controls (keys start with ``prefix``; kept across page switches) and return the
    choice, or None (with the reason shown) when a folder cannot be used."""
    model = selection.model
    assert model is not None and selection.image_data is not None
    own = model.sample_dataset
    names = {"current": "the current image", "dataset": f"test images of {own}", "folder": "test images of a folder"}
    columns = st.columns([5, 2, 4])
    kept(f"{prefix}images", KINDS[0], KINDS)
    kind = columns[0].radio("Images", KINDS, key=f"{prefix}images", horizontal=True, format_func=names.get,
                            help="The current image is the sidebar's, with its target class; the others are "
                                 "explained for their predicted class. Images are spread evenly over the test split.")
    if kind == "current":
        return ImageSet("current", None, 1, current_image_key(selection), selection.image_caption)
    if kind == "dataset":
        source = own
    else:
        default = selection.train_source if selection.train_source and selection.train_source not in DATASETS else ""
        kept(f"{prefix}folder", default)
        source = columns[2].text_input("Folder with one sub-folder of images per class", key=f"{prefix}folder",
                                       placeholder="/data/CUB_200_2011/images").strip()
        if not source:
            st.info("Name a folder of images (one sub-folder per class); its test split is used.")
            return None
    try:
        dataset = get_dataset(source, "test")
    except UserInputError as error:  # no such folder, no images in it
        st.error(str(error))
        return None
    available = len(dataset)
    kept(f"{prefix}count", min(DEFAULT_COUNT, available), lambda value: 1 <= value <= available)
    count = int(columns[1].number_input(f"How many (1–{available})", 1, available, key=f"{prefix}count"))
    what = (plural(count, "photo") + " bundled with scikit-image" if source == "photos"
            else plural(count, "test image") + f" of {source}")
    return ImageSet(kind, source, count, f"{kind}:{dataset.fingerprint}:{count}", what)
