"""Everything slow, cached once: models and datasets per process, images per selection, one pass per view.

One pass per view (issue 10, item 7): an image is decoded (``dataset_image``, ``uploaded_image``)
and preprocessed (``view_trace``) once per selection, and ``view_trace`` runs the one forward
pass, recording every block, with one backward of the predicted class to every block. The
sidebar's top-5 reads its probabilities and the Saliency page derives every map from it
(``explain_trace``): opening the page, changing the depth or the methods runs no further pass.
Only another target class needs a pass of its own, on the same preprocessed input.
"""
from __future__ import annotations

import io
from typing import Sequence

import streamlit as st
from PIL import Image

from explainers import Trace, explain_trace, load_dataset, load_image, load_model, trace
from explainers.api import Explanation, as_batch
from explainers.data import DatasetSpec
from explainers.images import png_compatible
from explainers.models import ModelSpec


@st.cache_resource(show_spinner="Loading the model…")
def get_model(name: str, random_weights: bool = False) -> ModelSpec:
    return load_model(name, weights=None if random_weights else "DEFAULT")


@st.cache_resource(show_spinner="Loading the checkpoint…")
def get_checkpoint_model(data: bytes, filename: str, arch: str) -> ModelSpec:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(data)
        return load_model(path, arch=arch)


@st.cache_resource(show_spinner="Loading the dataset…")
def get_dataset(name: str, split: str) -> DatasetSpec:
    return load_dataset(name, split)


def image_bytes(image: Image.Image) -> bytes:
    """The image as PNG bytes (the key of every cached map); modes PNG cannot hold (CMYK, ...)
    are converted first, so no image that reached the sidebar can fail here."""
    buffer = io.BytesIO()
    png_compatible(image).save(buffer, format="PNG")
    return buffer.getvalue()


@st.cache_data(show_spinner=False, max_entries=64)
def dataset_image(name: str, split: str, index: int) -> tuple[Image.Image, bytes, int]:
    """Image ``index`` of a built-in dataset, read once per selection: the image, its PNG bytes
    (the key of every cached pass and map) and its label. Reruns (a slider, another page) read it here."""
    image, label = get_dataset(name, split)[index]
    return image, image_bytes(image), label


@st.cache_data(show_spinner=False, max_entries=16)
def uploaded_image(data: bytes, name: str) -> tuple[Image.Image, bytes]:
    """An uploaded file decoded once (``ImageError`` with the reason if it cannot be), and its PNG bytes."""
    image = load_image(data, name=name)
    return image, image_bytes(image)


# Every block with its gradient: 1.5 MB for efficientnet_lite0, 12 MB for resnet50.
@st.cache_data(show_spinner="Running the model…", max_entries=32)
def view_trace(model_key: str, _model: ModelSpec, data: bytes, target: int | None = None,
               _image: Image.Image | None = None) -> Trace:
    """The pass of one view: one forward recording every block, one backward of ``target`` (None:
    the predicted class) to every block. Keyed by model, image bytes and target; ``_image`` is the
    decoded image when the caller has it (else ``data`` is decoded). Another target reuses the
    preprocessed input of the predicted class's trace."""
    if target is None:
        inputs = as_batch(_model, _image if _image is not None else load_image(data))
    else:
        inputs = view_trace(model_key, _model, data, None, _image).inputs
    return trace(_model, inputs, target, gradients=True)


def shared_trace(model_key: str, model: ModelSpec, data: bytes, target: int | None = None,
                 image: Image.Image | None = None) -> Trace:
    """``view_trace`` of the predicted class, unless ``target`` names another class."""
    first = view_trace(model_key, model, data, None, image)
    if target is None or int(target) == int(first.targets[0]):
        return first
    return view_trace(model_key, model, data, int(target), image)


def top_classes(model_key: str, model: ModelSpec, data: bytes, top: int = 5,
                image: Image.Image | None = None) -> list[tuple[int, float]]:
    """The sidebar's top-5: the probabilities of the view's own pass (no pass of its own)."""
    probabilities = shared_trace(model_key, model, data, None, image).probabilities[0]
    values, indices = probabilities.topk(min(top, probabilities.numel()))
    return [(int(i), float(v)) for i, v in zip(indices, values)]


@st.cache_data(show_spinner="Computing the maps (one shared pass)…", max_entries=256)
def explanations(model_key: str, _model: ModelSpec, data: bytes, methods: Sequence[str], block: str,
                 target: int | None) -> dict[str, Explanation]:
    """All maps of one view from the view's pass (``shared_trace``); keyed by model, image bytes,
    methods, block and target. Passes of their own (Score-CAM, LRP, ...) are what this cache saves.

    Display settings (opacity, colours) are not arguments, so changing them never recomputes.
    """
    return explain_trace(_model, shared_trace(model_key, _model, data, target), list(methods), block)[0]


@st.cache_data(show_spinner="Clustering the channels and scoring the masked inputs…", max_entries=64)
def cluster_cam(model_key: str, _model: ModelSpec, data: bytes, block: str, target: int | None, q: int,
                clustering: str = "kmeans") -> Explanation:
    """Cluster-CAM of one view; keyed by model, image, block, target, Q and clustering, never by alpha:
    H for another alpha is recombined from ``extras["cluster_cam"]`` without a forward pass."""
    from explainers.methods.perturbation import explain_cluster_cam

    inputs = view_trace(model_key, _model, data).inputs[0]  # the selection's preprocessed input, not a new decode
    return explain_cluster_cam(_model, inputs, block=block, target=target, q=q, clustering=clustering)
