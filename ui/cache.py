"""Everything slow, cached once: models and datasets per process, maps per input."""
from __future__ import annotations

import io
from typing import Sequence

import streamlit as st
from PIL import Image

from explainers import explain_many, load_dataset, load_image, load_model, predict
from explainers.api import Explanation
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


@st.cache_data(show_spinner=False, max_entries=256)
def top_classes(model_key: str, _model: ModelSpec, data: bytes, top: int = 5) -> list[tuple[int, float]]:
    return predict(_model, load_image(data), top=top)


@st.cache_data(show_spinner="Computing the maps (one shared pass)…", max_entries=256)
def explanations(model_key: str, _model: ModelSpec, data: bytes, methods: Sequence[str], block: str,
                 target: int | None) -> dict[str, Explanation]:
    """All maps of one view from one trace; keyed by model, image bytes, methods, block and target.

    Display settings (opacity, colours) are not arguments, so changing them never recomputes.
    """
    return explain_many(_model, load_image(data), list(methods), block=block, target=target)


@st.cache_data(show_spinner="Clustering the channels and scoring the masked inputs…", max_entries=64)
def cluster_cam(model_key: str, _model: ModelSpec, data: bytes, block: str, target: int | None, q: int,
                clustering: str = "kmeans") -> Explanation:
    """Cluster-CAM of one view; keyed by model, image, block, target, Q and clustering, never by alpha:
    H for another alpha is recombined from ``extras["cluster_cam"]`` without a forward pass."""
    from explainers.methods.perturbation import explain_cluster_cam

    return explain_cluster_cam(_model, load_image(data), block=block, target=target, q=q, clustering=clustering)
