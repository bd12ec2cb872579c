"""The Sanity checks page's cached check and its plotly curves (the library computes; this caches and draws)."""
from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from explainers import load_image, method_info
from explainers.data import plural
from explainers.display import QUALITATIVE, step_label
from explainers.evaluation import GROUPS, IMAGES_PER_PASS, RandomizationResult, randomization_check
from explainers.models import ModelSpec

from .cache import dataset_image, get_dataset

__all__ = ["MAX_IMAGES", "curves_figure", "randomisation", "test_images", "what_will_run"]

MAX_IMAGES = 100


def test_images(model: ModelSpec) -> tuple[str, str]:
    """The dataset (name, split) whose first images the curves may average over: the model's own test split
    when it has one (digits), else the built-in pictures that suit its input (the photos)."""
    name = model.dataset or model.sample_dataset
    return name, "test" if name == "digits" else "train"  # the photos are one set, kept under "train"


# A result holds each method's maps of the current image at every step (7 x methods x H x W floats,
# about 1.4 MB per method at 224 px): a few entries only.
@st.cache_data(show_spinner=False, max_entries=8)
def randomisation(model_key: str, _model: ModelSpec, data: bytes, count: int, methods: tuple[str, ...], block: str,
                  mode: str, target: int | None, keep_statistics: bool = False) -> RandomizationResult:
    """``randomization_check`` of the current image (``data``) plus the first ``count`` other images of the
    test split (``test_images``; the current image is not counted twice), keyed by model (its
    key holds the fingerprint), images, methods, block, mode, target and the batch-norm choice. Progress goes
    to the listener of the caller's ``progress_bar``."""
    images = [load_image(data)]
    name, split = test_images(_model)
    for index in range(len(get_dataset(name, split))):
        if len(images) > count:
            break
        image, image_data, _ = dataset_image(name, split, index)
        if image_data != data:
            images.append(image)
    # The sidebar's class is the current image's; the test images are explained for their own predicted class.
    targets = None if target is None else [int(target)] + [None] * (len(images) - 1)
    return randomization_check(_model, images, list(methods), block=block, mode=mode, target=targets,
                               keep_statistics=keep_statistics)


def what_will_run(methods: int, block: str, mode: str, more: int, dataset: str) -> str:
    """What pressing Run computes, for the page (Markdown): the maps of ``methods`` methods at ``block`` for the
    current image and ``more`` images of ``dataset``, on the trained network and at each randomisation step."""
    steps = ("each adding one group to those randomised before it" if mode == "cascading" else
             "each randomising one group alone") + ": " + ", ".join(GROUPS)
    maps = methods * (1 + more) * (1 + len(GROUPS))
    return ("**Run the check** explains the current image" + (f" and {more} {dataset} images" if more else "")
            + f" with {plural(methods, 'method')} at **{block}**, on the trained network and after each of up to "
            f"{len(GROUPS)} randomisation steps ({steps}): up to {plural(maps, 'map')}. Each step takes one pass "
            f"of the network for every {IMAGES_PER_PASS} images, plus the passes of the methods that run their own.")


def curves_figure(result: RandomizationResult) -> go.Figure:
    """Spearman (left, with the threshold) and SSIM (right) per step, one colour per method."""
    figure = make_subplots(rows=1, cols=2, shared_xaxes=True, horizontal_spacing=0.08,
                           subplot_titles=("Spearman rank correlation of |map| with the original",
                                           "SSIM of |map| with the original"))
    labels = [step_label(result, step) for step in result.steps]
    for number, method in enumerate(result.methods):
        rows = result.table[result.table.method == method].set_index("step").reindex(result.steps)
        colour = QUALITATIVE[number % len(QUALITATIVE)]
        for column, metric in ((1, "spearman"), (2, "ssim")):
            figure.add_trace(go.Scatter(x=labels, y=rows[metric], mode="lines+markers", name=method_info(method).label,
                                        legendgroup=method, showlegend=column == 1, line={"color": colour}),
                             row=1, col=column)
    figure.add_hline(y=result.threshold, line_dash="dash", line_color="grey", row=1, col=1,
                     annotation_text=f"flagged at or above {result.threshold:g}", annotation_position="bottom right")
    figure.update_yaxes(range=[-1.05, 1.05], row=1, col=1)
    figure.update_yaxes(range=[-0.05, 1.05], row=1, col=2)
    figure.update_layout(height=380, margin={"t": 40, "b": 10, "l": 10, "r": 10},
                         legend={"orientation": "h", "y": -0.2})
    return figure
