"""The Evaluation page's computations: the evaluation itself, cached, and what a run will cost, said before it.

``evaluation`` is keyed by the model, block, methods, image set, target and the metric settings, so coming
back to the page, or changing only what is drawn, recomputes nothing (``st.cache_data``: one copy for every
session of the server). ``what_will_run`` is the line the page shows above its Run button."""
from __future__ import annotations

from typing import Any

import streamlit as st

from explainers.data import plural
from explainers.display import measured_time
from explainers.evaluation import (
    METRICS,
    Evaluation,
    EvaluationSettings,
    PlannedEvaluation,
    evaluate,
    planned_evaluation,
)
from explainers.models import ModelSpec
from explainers.runtime import current_listener, with_eta

from .cache import get_dataset

__all__ = ["evaluation", "planned", "what_will_run"]


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


@st.cache_data(show_spinner=False, max_entries=64)
def planned(model_key: str, _model: ModelSpec, methods: tuple[str, ...], block: str, images: int,
            metrics: tuple[str, ...], settings: EvaluationSettings) -> PlannedEvaluation:
    """``planned_evaluation``: what ``evaluation`` with these arguments will run (counted, not run)."""
    return planned_evaluation(_model, list(methods), block, images, metrics, settings)


def what_will_run(model_key: str, model: ModelSpec, methods: tuple[str, ...], block: str, label: str, images: int,
                  metrics: tuple[str, ...], settings: EvaluationSettings, curves_of_another_image: bool) -> str:
    """What pressing Run computes, for the page (Markdown): methods × metrics × images at the block, the
    network passes the metrics need at most, and their time at the speed measured for this network on this
    machine. ``curves_of_another_image``: the set's curves are drawn for the sidebar's image, scored too."""
    plan = planned(model_key, model, methods, block, images, metrics, settings)
    passes, imputed = plan.passes, plan.imputed
    per_image = tuple(name for name in metrics if METRICS[name].curves_per_image)
    if curves_of_another_image and per_image:  # with the set's blur: no second measurement
        here = planned(model_key, model, methods, block, 1, per_image, settings)
        passes, imputed = passes + here.inputs, imputed + here.imputed
    labels = "; ".join(METRICS[name].label for name in metrics)
    text = (f"**Run the evaluation** scores {plural(plan.methods, 'method')} × {plural(len(metrics), 'metric')} "
            f"({labels}) × {plural(images, 'image')} ({label}) at **{block}**")
    text += (f". The metrics need at most {plural(passes, 'pass')} through {model.name}"
             + (f" ({plan.blur_passes:,} of them to measure insertion's blur)" if plan.blur_passes else "")
             + f": about {measured_time(passes * plan.seconds_per_input)} at the "
             f"{measured_time(plan.seconds_per_input)} per input measured here, plus the maps and the preparation "
             "of the inputs.")
    if imputed:
        text += (f" ROAD first fills in {imputed:,} inputs from their neighbours, a sparse solve each (not in that "
                 "time).")
    return text
