"""Fitted prototype explainers (memoised in the library) and the Figure 2 / Table 1-2 computations, cached for the session.

A first fit shows a progress bar; the fitted explainer is then kept in memory, and on disk
by ``fit_prototypes`` so that later sessions load it instantly.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from explainers.alignment import Projection, accuracy_table, alignment_table, classifier_prototypes, projection
from explainers.models import ModelSpec
from explainers.methods.prototype import fitted
from explainers.prototypes import PrototypeExplainer, embeddings

from .cache import get_dataset
from .sidebar import Selection


def unavailable(selection: Selection) -> str | None:
    """Why the prototype pages cannot run for this selection, or None."""
    model = selection.model
    if model is None:
        return "Choose a model in the sidebar."
    if not model.gap_head:
        return (f"Prototype explanations need a global-average-pooling + linear head right after the last block; "
                f"{model.name} has more layers there. ResNets, DenseNets' blocks and the digits model qualify.")
    if selection.train_source is None:
        return ("Prototypes are fitted on the model's labelled training images: give their folder (one sub-folder "
                "per class) under *Training images* in the sidebar. The built-in digits model has its own.")
    return None


def explainer(model: ModelSpec, source: str, depth: str, per_class: int) -> PrototypeExplainer:
    """The explainer fitted on ``source`` (a dataset name or an ImageFolder path), shared with the
    Saliency page's k-means attribution; a first fit shows a progress bar."""
    bar = st.empty()
    try:
        return fitted(model, depth, per_class, source,
                      progress=lambda f, m: bar.progress(f, text=f"{depth}, K/C = {per_class}: {m}"))
    except ValueError as error:  # too few images for the prototypes asked, an unreadable image, ...
        st.error(f"Could not fit the {depth} prototypes: {error}")
        st.stop()
    finally:
        bar.empty()


@st.cache_data(show_spinner="Embedding the dataset…", max_entries=16)
def dataset_embeddings(model_key: str, _model: ModelSpec, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = get_dataset(source, split)
    return embeddings(_model, dataset), dataset.labels


@st.cache_data(show_spinner="Projecting with UMAP (the first map of a session takes a few seconds more)…",
               max_entries=32)
def figure2(model_key: str, _model: ModelSpec, source: str, classes: tuple[int, ...],
            _kmex: PrototypeExplainer) -> Projection:
    train_z, train_y = dataset_embeddings(model_key, _model, source, "train")
    test_z, test_y = dataset_embeddings(model_key, _model, source, "test")
    columns, _ = classifier_prototypes(_model)
    return projection(train_z, train_y, test_z, test_y, columns, _kmex, classes)


@st.cache_data(show_spinner="Computing Table 1…", max_entries=16)
def table1(model_key: str, _model: ModelSpec, source: str, _kmex: dict[str, PrototypeExplainer]) -> list[dict]:
    train_z, train_y = dataset_embeddings(model_key, _model, source, "train")
    return alignment_table(_model, train_z, train_y, _kmex)


@st.cache_data(show_spinner="Computing Table 2 (every train and test image through every explainer)…",
               max_entries=16)
def table2(model_key: str, _model: ModelSpec, source: str, _explainers: dict[str, PrototypeExplainer]) -> list[dict]:
    return accuracy_table(_model, get_dataset(source, "train"), get_dataset(source, "test"), _explainers)
