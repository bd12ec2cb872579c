"""Fitted prototype explainers and the Figure 2 / Table 1-2 computations, cached for the session.

A first fit shows a progress bar; the fitted explainer is then kept in memory, and on disk
by ``fit_prototypes`` so that later sessions load it instantly.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from explainers.alignment import Projection, accuracy_table, alignment_table, projection
from explainers.models import ModelSpec
from explainers.prototypes import PrototypeExplainer, embeddings, fit_prototypes

from .cache import get_dataset


@st.cache_resource
def _fitted() -> dict[tuple[str, str, int], PrototypeExplainer]:
    return {}


def explainer(model_key: str, model: ModelSpec, depth: str, per_class: int) -> PrototypeExplainer:
    """The fitted explainer; fitted here, with a progress bar, on first use."""
    store = _fitted()
    key = (model_key, depth, per_class)
    if key not in store:
        bar = st.progress(0.0, text=f"Preparing {depth} prototypes (K/C = {per_class})…")
        train = get_dataset(model.dataset, "train")
        store[key] = fit_prototypes(model, train, depth, per_class,
                                    progress=lambda f, m: bar.progress(f, text=f"{depth}, K/C = {per_class}: {m}"))
        bar.empty()
    return store[key]


@st.cache_data(show_spinner="Embedding the dataset…", max_entries=16)
def dataset_embeddings(model_key: str, _model: ModelSpec, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = get_dataset(_model.dataset, split)
    return embeddings(_model, dataset), dataset.labels


@st.cache_data(show_spinner="Projecting with UMAP (the first map of a session takes a few seconds more)…",
               max_entries=32)
def figure2(model_key: str, _model: ModelSpec, classes: tuple[int, ...], _kmex: PrototypeExplainer) -> Projection:
    train_z, train_y = dataset_embeddings(model_key, _model, "train")
    test_z, test_y = dataset_embeddings(model_key, _model, "test")
    columns = _model.classifier.weight.detach().numpy()
    return projection(train_z, train_y, test_z, test_y, columns, _kmex, classes)


@st.cache_data(show_spinner="Computing Table 1…", max_entries=16)
def table1(model_key: str, _model: ModelSpec, _kmex: dict[str, PrototypeExplainer]) -> list[dict]:
    train_z, train_y = dataset_embeddings(model_key, _model, "train")
    return alignment_table(_model, train_z, train_y, _kmex)


@st.cache_data(show_spinner="Computing Table 2 (every train and test image through every explainer)…",
               max_entries=16)
def table2(model_key: str, _model: ModelSpec, _explainers: dict[str, PrototypeExplainer]) -> list[dict]:
    return accuracy_table(_model, get_dataset(_model.dataset, "train"), get_dataset(_model.dataset, "test"),
                          _explainers)
