"""The Concepts page's cached computations: the shared Q-SENN layer (with the progress bar of its first
fit), its Table 1 over the dataset's splits, and one image's explanation."""
from __future__ import annotations

import streamlit as st

from explainers import UserInputError
from explainers.data import DatasetSpec
from explainers.fitted import CONCEPT_SPLITS, QSENN, ConceptExplanation, shared_qsenn, stored_concept_table
from explainers.models import ModelSpec

from .cache import get_dataset
from .progress import progress_bar


def splits(source: str) -> dict[str, DatasetSpec]:
    """The dataset's splits that exist: train, test and any of ``CONCEPT_SPLITS``."""
    found = {"train": get_dataset(source, "train")}
    for split in CONCEPT_SPLITS:
        try:
            found[split] = get_dataset(source, split)
        except UserInputError:  # the dataset has no such split
            continue
    return found


def layer(model: ModelSpec, source: str, settings: dict) -> QSENN:
    """The Q-SENN layer fitted on ``source``'s training split with ``settings`` (shared by every session);
    a first fit shows a progress bar with its stage and the time left."""
    try:
        with progress_bar():
            return shared_qsenn(model, get_dataset(source, "train"), **settings)
    except UserInputError as error:
        st.error(f"Could not fit the Q-SENN layer: {error}")
        st.stop()


@st.cache_data(show_spinner=False, max_entries=16)
def _table(model_key: str, digest: str, _layer: QSENN, source: str, names: tuple[str, ...]) -> list[dict]:
    every = splits(source)
    return stored_concept_table(_layer, {name: every[name] for name in names})  # shipped or kept on disk


BLANK = "—"


def shown_table(rows: list[dict]) -> tuple[list[dict], list[str]]:
    """Table 1 as the page shows it: a value the layer does not have (diversity@5 of a layer none of whose
    classes has five features) is a dash, not "None"; and the columns that have one, for the caption."""
    blank = sorted({key for row in rows for key, value in row.items() if value is None},
                   key=lambda key: list(rows[0]).index(key))
    shown = [{key: (BLANK if value is None else value) for key, value in row.items()} for row in rows]
    for key in blank:  # one type per column: the dash's column holds text
        for row in shown:
            if row[key] != BLANK:
                row[key] = f"{row[key]:.1f}"
    return shown, blank


def table(model_key: str, fitted: QSENN, source: str, names: tuple[str, ...]) -> list[dict]:
    """Seed 003's Table 1 for this model on the splits ``names`` (cached per layer digest)."""
    with progress_bar():
        return _table(model_key, fitted.digest_, fitted, source, names)


@st.cache_data(show_spinner=False, max_entries=64)
def _explanation(model_key: str, digest: str, _layer: QSENN, data: bytes, target: int | None,
                 _image: object) -> ConceptExplanation:
    return _layer.explain(_image, target)


def explanation(model_key: str, fitted: QSENN, data: bytes, image: object, target: int | None) -> ConceptExplanation:
    """The layer's explanation of the sidebar's image for ``target`` (None: the layer's own prediction)."""
    return _explanation(model_key, fitted.digest_, fitted, data, target, image)
