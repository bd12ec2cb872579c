"""Fitted prototype explainers (from the library's one store of fitted things) and the Figure 2 /
Table 1-2 computations, cached for the session.

A first fit shows a progress bar with its stage, images done and time left; the fitted
explainer is then kept in memory by ``explainers.fitted.store.STORE`` (shared by every session and by
the Saliency page's k-means attribution: one fit however many sessions ask at once), and on disk.
The built-in digits model's fits, Figure 2 layout and tables at the pages' defaults ship in
``assets/prototypes/``, so on a fresh machine they are read, not computed.
"""
from __future__ import annotations

import numpy as np
import streamlit as st

from explainers import UserInputError
from explainers.fitted import (
    PROTOTYPES_KIND,
    Key,
    Projection,
    PrototypeExplainer,
    embeddings,
    find,
    model_labels,
    store,
    stored_accuracy_table,
    stored_alignment_table,
    stored_projection,
)
from explainers.methods import PER_CLASS, fitted, recipe
from explainers.models import ModelSpec
from explainers.runtime import current_listener, with_eta

from .cache import get_dataset
from .progress import progress_bar
from .sidebar import Selection
from .url_state import accepted, refused

PER_CLASS_OPTIONS = list(range(1, 11))


def unavailable(selection: Selection) -> str | None:
    """Why the prototype pages cannot run for this selection, or None."""
    model = selection.model
    if model is None:
        return "Choose a model in the sidebar."
    if not model.gap_head:
        return (f"Prototype explanations need a global-average-pooling + linear head right after the last block; "
                f"{model.name} has more layers there. ResNets, DenseNets' blocks and the digits model qualify.")
    if selection.train_source is None:
        return (f"Prototypes are fitted on the model's labelled training images, and {model.name} comes without "
                "them. Switch to the built-in digits model, which has its own, or give a folder of labelled images "
                "(one sub-folder per class, named like the model's classes) under *Training images* in the sidebar.")
    return None


def offer_digits(selection: Selection) -> None:
    """A one-click switch to the built-in digits model, for a model without a training set of its own."""
    if selection.model is None or selection.train_source is not None:
        return
    st.button("Switch to the digits model", key="switch_to_digits", icon=":material/swap_horiz:",
              on_click=_switch_to_digits, help="digits has its training images: the prototype pages open at once.")


def _switch_to_digits() -> None:
    # A callback runs before the script, so the sidebar's model box can still be set.
    st.session_state["model"] = "digits"


def per_class_control(container: object = st) -> int:
    """The "Prototypes per class (K/C)" control (key ``per_class``, mirrored in the URL), shared by both pages."""
    value = st.session_state.get("per_class")
    # Set on every run, even to the value it has: a widget of another page is another widget to Streamlit,
    # which would start this one at its first option; a value set here carries over (and mends a URL's
    # value out of range).
    st.session_state["per_class"] = value if value in PER_CLASS_OPTIONS else PER_CLASS
    if value in PER_CLASS_OPTIONS:
        accepted("per_class")
    else:  # a link's value out of range is said at the top of the page
        refused("per_class", f"prototypes per class (K/C) go from {PER_CLASS_OPTIONS[0]} to {PER_CLASS_OPTIONS[-1]}",
                str(PER_CLASS))
    return container.select_slider(  # type: ignore[attr-defined]
        "Prototypes per class (K/C)", PER_CLASS_OPTIONS, key="per_class",
        help=f"k-means prototypes per class. {PER_CLASS} (the default) opens at once on the built-in model; "
             "another value is fitted on first use (a progress bar says how long).")


def explainer(model: ModelSpec, source: str, depth: str, per_class: int) -> PrototypeExplainer:
    """The explainer fitted on ``source`` (a dataset name or an ImageFolder path), the very object the
    Saliency page's k-means attribution uses for the same model, data, depth and K/C; a first fit shows
    the progress bar every page shows for it (the store's title, stage, images, time left) and a Cancel
    button. A cancelled fit is not started again by the next rerun of this session: the page says what
    was kept and offers to resume (from the features already on disk)."""
    try:
        data = get_dataset(source, "train")
        wanted = recipe(model, depth, per_class, data)
        cancelled = st.session_state.setdefault("cancelled_fits", set())
        if wanted.key in cancelled:
            st.info(f"The {depth} fit (K/C = {per_class}) was cancelled. The features it had computed are kept "
                    "on disk, so resuming starts where it stopped.", icon=":material/pause_circle:")
            st.button("Resume the fit", key=f"resume_{depth}_{per_class}", icon=":material/play_arrow:",
                      on_click=cancelled.discard, args=(wanted.key,))
            st.stop()
        slot = st.empty()
        # a fit, not a read: it may be long
        if wanted.key not in store.STORE and find(PROTOTYPES_KIND, wanted.filename) is None:
            slot.button("Cancel this fit", key=f"cancel_{depth}_{per_class}", icon=":material/stop_circle:",
                        on_click=_cancel, args=(wanted.key,),
                        help="Stops the fit at its next step, for every session waiting for it. The features "
                             "computed so far stay on disk, and the next fit resumes from them.")
        with progress_bar():
            result = fitted(model, depth, per_class, data)
        slot.empty()
        return result
    except UserInputError as error:  # classes that do not match, too few images for the prototypes asked, ...
        st.error(f"Could not fit the {depth} prototypes: {error}")
        st.stop()


def _cancel(key: Key) -> None:
    store.STORE.cancel(key)
    st.session_state.setdefault("cancelled_fits", set()).add(key)


@st.cache_data(show_spinner="Embedding the dataset…", max_entries=16)
def dataset_embeddings(model_key: str, _model: ModelSpec, source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    dataset = get_dataset(source, split)
    return embeddings(_model, dataset), model_labels(_model, dataset)


def _embedder(model_key: str, model: ModelSpec, source: str):
    """Embeddings by split, through the session cache above (called only when a result is not stored)."""
    return lambda dataset: dataset_embeddings(model_key, model, source, dataset.split)[0]


# The cached functions below are keyed by the prototypes' digest, not by the explainer objects
# (left out of the key with a leading underscore), so another K/C is another entry.
@st.cache_data(show_spinner="Projecting with UMAP (the first projection after the server starts loads and compiles "
                            "UMAP: up to half a minute; later ones take seconds)…", max_entries=32)
def _figure2(model_key: str, _model: ModelSpec, source: str, classes: tuple[int, ...], kmex_digest: str,
             _kmex: PrototypeExplainer) -> Projection:
    return stored_projection(_model, get_dataset(source, "train"), get_dataset(source, "test"), _kmex, classes,
                             embed=_embedder(model_key, _model, source))


@st.cache_data(show_spinner="Computing Table 1…", max_entries=16)
def _table1(model_key: str, _model: ModelSpec, source: str, digests: tuple[str, ...],
            _kmex: dict[str, PrototypeExplainer]) -> list[dict]:
    embed = _embedder(model_key, _model, source)
    return stored_alignment_table(_model, get_dataset(source, "train"), _kmex, embed=embed)


@st.cache_data(show_spinner="Computing Table 2 (every train and test image through every explainer)…",
               max_entries=16)
def _table2(model_key: str, _model: ModelSpec, source: str, digests: tuple[str, ...],
            _explainers: dict[str, PrototypeExplainer]) -> list[dict]:
    # progress goes to the bar of ui.progress.progress_bar() around the call, if any (none on a cache hit)
    return stored_accuracy_table(_model, get_dataset(source, "train"), get_dataset(source, "test"), _explainers,
                                 progress=with_eta(current_listener()))


def figure2(model_key: str, model: ModelSpec, source: str, classes: tuple[int, ...],
            kmex: PrototypeExplainer) -> Projection:
    """Figure 2 of the chosen classes with the KMEx prototypes of ``kmex``."""
    return _figure2(model_key, model, source, classes, kmex.digest_, kmex)


def table1(model_key: str, model: ModelSpec, source: str, kmex: dict[str, PrototypeExplainer]) -> list[dict]:
    """Table 1: the classifier columns and each KMEx of ``kmex`` (name -> explainer)."""
    return _table1(model_key, model, source, _digests(kmex), kmex)


def table2(model_key: str, model: ModelSpec, source: str, explainers: dict[str, PrototypeExplainer]) -> list[dict]:
    """Table 2: train and test accuracy of the CNN and of each explainer (name -> explainer)."""
    with progress_bar():
        return _table2(model_key, model, source, _digests(explainers), explainers)


def classes_present(model: ModelSpec, source: str) -> tuple[int, ...]:
    """The model's classes that have training images in ``source`` (a folder may hold some of them)."""
    return tuple(int(c) for c in np.unique(model_labels(model, get_dataset(source, "train"))))


def _digests(explainers: dict[str, PrototypeExplainer]) -> tuple[str, ...]:
    return tuple(f"{name}={e.digest_}" for name, e in explainers.items())
