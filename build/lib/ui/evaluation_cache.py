"""Evaluations cached for the session: keyed by the model, block, methods, image set, target and the
metric settings, so reopening the page, or changing only what is drawn, recomputes nothing."""
from __future__ import annotations

from typing import Any

import streamlit as st

from explainers.evaluation import Evaluation, EvaluationSettings, evaluate
from explainers.models import ModelSpec
from explainers.runtime import current_listener, with_eta

from .cache import get_dataset


@st.cache_data(show_spinner=False, max_entries=32)
def evaluation(model_key: str, _model: ModelSpec, block: str, methods: tuple[str, ...], images_key: str,
               _images: Any, target: int | None, settings: EvaluationSettings,
               metrics: tuple[str, ...] | None = None, training: str | None = None) -> Evaluation:
    """``explainers.evaluation.evaluate`` of the ``_images`` named by ``images_key`` (``metrics``: default every
    registered one); progress goes to the page's bar (``ui.progress.progress_bar``) with the time left.
    ``training``: the sidebar's training images, which the k-means attribution fits on."""
    return evaluate(_model, _images, list(methods), block, target, metrics, settings,
                    progress=with_eta(current_listener()),
                    training=get_dataset(training, "train") if training else None)
