"""Everything slow, cached once: models and datasets per process, images per selection, one pass per view.

One pass per view (issue 10, item 7): an image is decoded (``dataset_image``, ``uploaded_image``)
and preprocessed (``view_trace``) once per selection, and ``view_trace`` runs the one forward
pass, recording every block, with one backward of the predicted class to every block. The
sidebar's top-5 reads its probabilities and the Saliency page derives every map from it
(``explain_trace``): opening the page, changing the depth or the methods runs no further pass.
Only another target class needs a pass of its own, on the same preprocessed input.

Maps are cached one method at a time (``explanation``), keyed by that method's settings except the
display-only ones (Cluster-CAM's alpha), which ``explanations`` applies to the cached result
without a pass: a new LRP epsilon reruns LRP alone, a new alpha reruns nothing.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import streamlit as st
from PIL import Image

from explainers import Trace, UserInputError, explain_trace, load_dataset, load_image, load_model, method_info, trace
from explainers.data import DatasetSpec, png_compatible
from explainers.engine import ATTENTION_NEEDS, attention_reason
from explainers.methods import Explanation, recombine
from explainers.models import OPEN_CLIP_PREFIX, ModelSpec, as_batch, split_open_clip_name


@st.cache_resource(show_spinner="Loading the model…")
def get_model(name: str, random_weights: bool = False, device: str = "cpu") -> ModelSpec:
    """One model per name, weights and device (``explainers.runtime.devices``), shared by every session."""
    return load_model(name, weights=None if random_weights else "DEFAULT", device=device)


@st.cache_resource(show_spinner="Loading CLIP and embedding the class prompts…")
def get_zero_shot_model(name: str, classes: tuple[str, ...] | None, random_weights: bool = False,
                        device: str = "cpu") -> ModelSpec:
    """CLIP (``open_clip:<arch>[@<weights file>]``) as a zero-shot classifier of ``classes`` (None: ImageNet's
    names), one per name, class list, weights and device, shared by every session."""
    if random_weights:  # the architecture alone: the weights file, if named, is not read
        name = OPEN_CLIP_PREFIX + split_open_clip_name(name)[0]
    return load_model(name, weights=None if random_weights else "DEFAULT", classes=None if classes is None
                      else list(classes), device=device)


@st.cache_resource(show_spinner="Loading the checkpoint…")
def get_checkpoint_model(data: bytes, filename: str, arch: str | None, device: str = "cpu") -> ModelSpec:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / filename
        path.write_bytes(data)
        return load_model(path, arch=arch, device=device)


@st.cache_resource(show_spinner=False, max_entries=32)
def named_model(model_key: str, _model: ModelSpec, classes: tuple[str, ...]) -> ModelSpec:
    """The model under the class names of its training folder: one copy per model and names, shared by the
    sessions that name them alike; the loaded spec, which other sessions hold, is left as it is."""
    return _model.with_classes(classes)


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
    attention: tuple[str, ...] = ()
    if attention_reason(_model) is None:  # a ViT's attention, same pass; its residual stream where it decomposes
        stream = _model.transformer.stream
        attention = tuple(need for need in ATTENTION_NEEDS
                          if need != "stream" or (stream is not None and not stream.reason))
    return trace(_model, inputs, target, gradients=True, attention=attention)


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
    return shared_trace(model_key, model, data, None, image).top(top)  # its first is the class explained


Frozen = tuple[tuple[str, Any], ...]  # a method's settings as a hashable key: sorted (name, value) pairs


def explanations(model_key: str, _model: ModelSpec, data: bytes, methods: Sequence[str], block: str,
                 target: int | None, settings: Mapping[str, Mapping[str, Any]] | None = None,
                 training: str | None = None) -> dict[str, Explanation]:
    """All maps of one view from the view's pass (``shared_trace``): each method's map is cached on
    its own (``explanation``), keyed by model, image bytes, method, block, target and the method's
    settings (``settings``: method -> {setting: value}, as ``explain`` takes them) other than the
    display-only ones, which are applied here to the cached map without a pass.

    Display settings of the page (opacity, colours) are not arguments, so changing them never recomputes.
    ``training`` (the sidebar's training images) is what the prototype methods fit on, and part of their key.

    A method that fails on this input with a ``UserInputError`` (LRP whose relevance is not conserved,
    a map with non-finite values, a fit that cannot be made) gives a ``Failure`` naming the reason in
    its place: the other methods' maps are still shown, and the failed one is never drawn.
    """
    settings = settings or {}
    found: dict[str, Explanation | Failure] = {}
    for name in methods:
        method = method_info(name)
        values = method.resolve(settings.get(name))  # checked, defaults filled in: one key per computation
        display = {k: v for k, v in values.items() if k in method.display_only()}
        computed = frozen({k: v for k, v in values.items() if k not in display})
        fitted_on = training if method.needs_training else None  # keyed on the training images where they count
        try:
            made = explanation(model_key, _model, data, name, block, target, computed, fitted_on)
        except UserInputError as error:
            found[name] = Failure(name, str(error))
            continue
        found[name] = recombine(_model, made, display)
    return found


@dataclass(frozen=True)
class Failure:
    """A method that could not give an honest map for this view, and why (in the user's terms)."""

    method: str
    reason: str


def frozen(settings: Mapping[str, Any]) -> Frozen:
    """One method's settings as a hashable cache key (the order they were given in does not matter)."""
    return tuple(sorted(settings.items()))


@st.cache_data(show_spinner="Computing the maps (from the shared pass)…", max_entries=512)
def explanation(model_key: str, _model: ModelSpec, data: bytes, method: str, block: str, target: int | None,
                settings: Frozen = (), training: str | None = None) -> Explanation:
    """One method's map of one view from the view's pass, with ``settings`` (its own, frozen) and, for a
    method fitted on training images, ``training`` (the sidebar's folder or dataset, passed to ``explain_trace``);
    keyed by all of these. Passes of its own (Score-CAM, LRP, ...) are what this cache saves."""
    shared = shared_trace(model_key, _model, data, target)
    return explain_trace(_model, shared, [method], block, {method: dict(settings)} if settings else None,
                         training=get_dataset(training, "train") if training else None)[0][method]
