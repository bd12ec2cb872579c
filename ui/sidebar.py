"""The sidebar every page shares: model, image, target class, depth and methods.

Widgets are drawn in ``app.py`` (so their state survives page switches), seeded from the
URL query on the first run of a session and written back to it on every run, so a URL
reproduces the view (``ui.url_state``). What the widgets offer is the library's to decide:
the images that suit a model are its ``ModelSpec.sample_dataset``, an image's true class is
its dataset's (``DatasetSpec.label_among``), a typed model name is checked by
``explainers.models.loading.model_name``; errors a person caused (``UserInputError``) are shown here.
"""
from __future__ import annotations

import hashlib
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import streamlit as st
from PIL import Image

from explainers import UserInputError, method_info, method_names
from explainers.data import DatasetSpec, dataset_splits, image_notes, plural
from explainers.fitted import class_map, folder_class_names
from explainers.models import MODELS, OPEN_CLIP_PREFIX, SHIPPED_MODELS, ModelSpec, model_name
from explainers.runtime import default_device, describe_device

from .cache import (
    dataset_image,
    get_checkpoint_model,
    get_dataset,
    get_model,
    get_zero_shot_model,
    image_bytes,
    named_model,
    top_classes,
    uploaded_image,
)
from .entry import HANDED_OVER, THROUGH_ENTRY, through_app
from .serve import DEFAULT_MODEL
from .url_state import PENDING, accepted, decode, notice_area, refused, seed_from_query, write_query

CHECKPOINT = "checkpoint"
DEFAULT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "cam", "eigencam", "eigengradcam"]
UPLOAD_TYPES = ["png", "jpg", "jpeg", "bmp", "gif", "tif", "tiff", "webp"]


@dataclass
class Selection:
    """What the sidebar chose this run; pages read it with ``current()``."""

    model_key: str = ""
    model: ModelSpec | None = None
    image: Image.Image | None = None
    image_data: bytes | None = None
    image_caption: str = ""
    true_label: int | None = None
    target: int | None = None
    top: list[tuple[int, float]] = field(default_factory=list)
    block: str = "B4"
    methods: list[str] = field(default_factory=list)
    train_source: str | None = None  # dataset name or ImageFolder path the prototype pages fit on
    problem: str | None = None  # why the chosen model could not be loaded (the sidebar shows it in full)

    @property
    def load_failure(self) -> str | None:
        """What a page says instead of its content when the chosen model failed to load, else None."""
        if self.model is not None or not self.problem:
            return None
        return f"The model could not be loaded: {self.problem.rstrip('.')} — see the sidebar."


def current() -> Selection:
    """The sidebar's choices of this run; every page starts here."""
    _hand_over_to_the_entry_script()
    return st.session_state.get("_selection", Selection())


def current_with_image() -> Selection:
    """``current()`` for a page that explains an image: stops the page, saying why, while the sidebar
    has no model or no usable image (a load that failed is named rather than asked for again)."""
    selection = current()
    if selection.model is None or selection.image_data is None:
        if selection.load_failure:  # chosen, but it failed: say so instead of asking to choose one
            st.warning(selection.load_failure)
        else:
            st.info("Choose a model and an image in the sidebar; if an upload could not be used, the sidebar says why.")
        st.stop()
    return selection


def runnable_methods(names: list[str], reason_of) -> tuple[list[str], list[tuple[str, str]]]:
    """The methods of ``names`` that can run (``reason_of(name)`` is None) and the others with their reason;
    stops the page, naming every reason, when none can."""
    runnable, skipped = [], []
    for name in names:
        reason = reason_of(name)
        if reason:
            skipped.append((name, reason))
        else:
            runnable.append(name)
    if not runnable:
        st.info("Choose at least one method in the sidebar that applies at this depth.")
        for name, reason in skipped:
            st.caption(f"{method_info(name).label}: {reason}.")
        st.stop()
    return runnable, skipped


def _hand_over_to_the_entry_script() -> None:
    """Rerun through app.py when Streamlit ran a page file on its own (``ui.entry``, which every page
    calls first, explains why); here for a page that does not. One extra run, once per session that came in
    while a fresh server was in its legacy mode: the test is whether *this run* went through app.py's
    sidebar, not the server-wide flag (a classroom opening a link at once starts several sessions in
    that mode before the first one leaves it)."""
    if st.session_state.pop(THROUGH_ENTRY, False):
        st.session_state.pop(HANDED_OVER, None)
        return
    through_app()


def sidebar() -> Selection:
    seed_from_query()
    notice_area()  # the top of the page: a link's values that could not be used are listed there
    selection = Selection()
    with st.sidebar:
        st.markdown("## Protoscope")
        _choose_model(selection)
        if selection.model is not None:
            st.caption(f"Runs on {describe_device(selection.model.device)}.",
                       help="A CUDA GPU or Apple's MPS when this server has one, else the CPU; the environment "
                            "variable PROTOSCOPE_DEVICE (cpu, cuda, cuda:1, mps) chooses.")
            _choose_training_images(selection)
            _choose_image(selection)
            _choose_target(selection)
            _choose_block(selection)
            _choose_methods(selection)
    write_query()
    st.session_state["_selection"] = selection
    st.session_state[THROUGH_ENTRY] = True  # this run went through app.py (see current())
    return selection


def _choose_model(selection: Selection) -> None:
    names = MODELS.names() + [CHECKPOINT]
    _ensure("model", names, DEFAULT_MODEL,  # the built-in ImageNet model: a photo, a real network
            "not a model of this server's list (a torchvision or timm name goes in model_name=)")
    name = st.selectbox("Model", names, key="model", format_func=lambda n: _model_label(n),
                        help="The built-in efficientnet_lite0 (ImageNet) and digits models work offline; "
                             "torchvision's need their weights in torchvision's cache or a network.")
    typed = st.text_input("or any torchvision / timm:name / open_clip:arch@weights", key="model_name",
                          placeholder="convnext_tiny, timm:resnet50, open_clip:ViT-B-32@/path/to/weights.bin",
                          help="Any torchvision classifier (torchvision.models.list_models()) or timm model "
                               "(timm:<name>, timm.list_models()). timm's pretrained weights are read from the local "
                               "cache only; tick Random weights for the untrained architecture. CLIP: "
                               "open_clip:<arch>@<path of a local weights file> (never downloaded), a zero-shot "
                               "classifier of the classes typed below. Clear the box to use the list above.").strip()
    try:
        if typed:
            name = model_name(typed)  # a path or a file name is refused, saying where checkpoints go
            st.caption(f"Using **{typed}**; clear the box to use the list.")
        elif name == CHECKPOINT:
            _load_checkpoint(selection)
            return
        random_weights = False
        if name not in SHIPPED_MODELS:
            random_weights = st.checkbox("Random weights (no download)", key="random_weights",
                                         help="An untrained network: useful to see what architecture alone does.")
        if name.startswith(OPEN_CLIP_PREFIX):
            selection.model = get_zero_shot_model(name, _zero_shot_classes(), random_weights, str(default_device()))
        else:
            selection.model = get_model(name, random_weights, str(default_device()))
        # The device is part of the key: a trace cached on one device is never handed to a model on another.
        selection.model_key = (f"{name}:{'random' if random_weights else 'trained'}:{selection.model.device}:"
                               f"{selection.model.fingerprint}")
    except UserInputError as error:  # the message says what to do (Random weights, ...)
        _refuse_model(selection, error)


def _zero_shot_classes() -> tuple[str, ...] | None:
    """The classes a CLIP model tells apart, typed comma-separated (``clip_classes`` in the URL); None, ImageNet's
    1,000 names, when the box is empty."""
    typed = st.text_input("Zero-shot classes (comma-separated)", key="clip_classes", placeholder="ImageNet's 1,000",
                          help="One text prompt per class, \"a photo of a {class}.\"; its CLIP text embedding, "
                               "normalised and times CLIP's logit scale, is the class's row of a linear head on the "
                               "normalised image embedding. Empty: ImageNet-1k's class names (the photos' classes).")
    names = tuple(name.strip() for name in typed.split(",") if name.strip())
    return names or None


def _refuse_model(selection: Selection, error: Exception) -> None:
    """Say in the sidebar why the model did not load, and keep the reason for the pages."""
    selection.model = None
    selection.problem = str(error)
    st.error(str(error))


AS_SAVED = "as saved in the file"


def _model_label(name: str) -> str:
    return "your checkpoint (.pt)" if name == CHECKPOINT else name


def _load_checkpoint(selection: Selection) -> None:
    arch_names = [AS_SAVED, *MODELS.names()]
    _restore("checkpoint_arch")
    if st.session_state.get("checkpoint_arch") not in arch_names:  # a typed name stays unless it is not a name
        try:
            model_name(str(st.session_state.get("checkpoint_arch", "")))
        except UserInputError:
            st.session_state["checkpoint_arch"] = AS_SAVED
    chosen = st.selectbox("Architecture of the checkpoint", arch_names, key="checkpoint_arch", accept_new_options=True,
                          help="As saved in the file: its \"arch\" entry, or the digits ResNet when the keys are "
                               "its. Or pick a built-in, or type any torchvision classifier or timm:<name>.")
    _remember("checkpoint_arch")
    upload = _kept_upload("State dict saved with torch.save", ["pt", "pth"], "checkpoint_file")
    if upload is None:
        st.info("Upload a state dict (.pt) to explain your own model.")
        return
    try:
        arch = None if chosen in (None, AS_SAVED) else model_name(chosen)  # a typed path is refused, saying why
        selection.model = get_checkpoint_model(upload.data, upload.name, arch, str(default_device()))
    except UserInputError as error:  # unreadable, another architecture, blocks that do not fit, ...
        _refuse_model(selection, error)
        return
    selection.model_key = f"checkpoint:{selection.model.device}:{selection.model.fingerprint}"


def _choose_training_images(selection: Selection) -> None:
    """The labelled images prototypes are fitted on: the model's own, or a folder the user names."""
    model = selection.model
    assert model is not None
    if model.dataset is not None:
        selection.train_source = model.dataset
        return
    _restore("train_folder")
    with st.expander("Training images (for the prototype pages)", expanded=bool(st.session_state.get("train_folder"))):
        folder = st.text_input("Folder with one sub-folder of images per class", key="train_folder",
                               placeholder="/data/CUB_200_2011/images").strip()
        _remember("train_folder")
        if not folder:
            return
        try:
            dataset = get_dataset(folder, "train")
            mapping = class_map(model, dataset)  # the rule the fit uses: by name, or by position if nameless
        except UserInputError as error:  # no such folder, no images, classes that are not the model's
            st.error(str(error))
            return
        if dataset.skipped:
            shown = ", ".join(Path(path).name for path, _ in dataset.skipped[:5])
            more = f" and {len(dataset.skipped) - 5} more" if len(dataset.skipped) > 5 else ""
            st.warning(f"{plural(len(dataset.skipped), 'unreadable file')} left out: {shown}{more} "
                       f"(e.g. {dataset.skipped[0][1]}). Remove or replace them to use them.")
        st.caption(f"{plural(len(dataset), 'training image')} in {plural(len(dataset.classes), 'class')}"
                   f"{_matching_note(model, dataset.classes, mapping)}.")
        selection.train_source = folder
        names = folder_class_names(model, dataset)
        if names:  # one source of class names for every page: this session's copy of the model takes the folder's
            selection.model = named_model(selection.model_key, model, tuple(names))
            selection.model_key += f":classes={hashlib.sha256(repr(names).encode()).hexdigest()[:12]}"


def _matching_note(model: ModelSpec, classes: list[str], mapping: Sequence[int]) -> str:
    """How the folder's classes were matched to the model's, when it is not one to one in order."""
    if list(classes) == list(model.classes):
        return ""
    if [model.classes[i] for i in mapping] != list(classes):
        return (f"; {model.name} has no class names, so its classes 0–{model.num_classes - 1} are the folder's "
                "sub-folders in alphabetical order, and take their names on every page")
    subset = f" ({len(classes)} of its {model.num_classes})" if len(classes) < model.num_classes else ""
    return f", matched to {model.name}'s classes by name{subset}"


def _choose_image(selection: Selection) -> None:
    model = selection.model
    assert model is not None
    st.divider()
    _ensure("source", ["dataset", "upload"], "dataset", "the image source is dataset or upload",
            "an image of the dataset")
    source = st.radio("Image", ["dataset", "upload"], key="source", horizontal=True,
                      format_func=lambda s: {"dataset": "from the dataset", "upload": "upload"}[s])
    if source == "upload":
        upload = _kept_upload("An image file", UPLOAD_TYPES, "upload")
        if upload is None:
            st.info("Upload an image, or pick one from the dataset.")
            return
        try:
            image, data = uploaded_image(upload.data, upload.name)  # decoded once, not on every rerun
        except UserInputError as error:  # ImageError: not an image, too large, damaged
            st.error(str(error))
            return
        notes = image_notes(image, background="black" if model.transform.mode == "L" else "white")
        caption = f"uploaded: {upload.name} ({image.width}×{image.height}, {image.mode})"
        _set_image(selection, image, caption + "".join(f"; {note}" for note in notes), data)
        return
    if get_dataset(model.sample_dataset, "train").names:  # photos: one set, each picked by its name
        _choose_named_image(selection, model.sample_dataset)
        return
    _choose_numbered_image(selection, model.sample_dataset)


def _choose_numbered_image(selection: Selection, dataset_name: str) -> None:
    """An image of a dataset with splits (the digits), by split, class and number."""
    model = selection.model
    assert model is not None
    held = dataset_splits(dataset_name)
    splits = sorted(held, key=lambda s: (s != "test", s))  # test first: images the model has not seen
    _ensure("split", splits, "test", f"{dataset_name} has no split of that name ({', '.join(splits)})")
    split = st.radio("Split", splits, key="split", horizontal=True,
                     help="  \n".join(f"**{name}**: {what}" for name, what in held.items()))
    dataset = get_dataset(dataset_name, split)
    class_options = ["any"] + dataset.classes
    _ensure("cls", class_options, "any", f"{dataset_name} has no class of that name", "any class")
    chosen_class = st.selectbox("Class", class_options, key="cls")
    pool = list(range(len(dataset))) if chosen_class == "any" else dataset.indices_of(
        dataset.classes.index(chosen_class)).tolist()
    among = f"{dataset_name} {split}" + ("" if chosen_class == "any" else f", class {chosen_class},")
    _ensure("index", list(range(len(pool))), 0, f"{among} has images 0–{len(pool) - 1}", "image 0",
            cast=int)  # a class switch or a URL may point past the end
    position = st.number_input(f"Image number (0–{len(pool) - 1})", 0, len(pool) - 1, key="index", step=1)
    index = pool[int(position)]
    image, data, _ = dataset_image(dataset_name, split, index)
    selection.true_label = dataset.label_among(index, model.classes)
    note = f", {dataset.notes[index]}" if dataset.notes else ""
    _set_image(selection, image, f"{dataset_name} {split} #{index}, true class {dataset.class_of(index)}{note}", data)


def _choose_named_image(selection: Selection, dataset_name: str) -> None:
    """An image of a dataset that names its images (the photos inside scikit-image's wheel), by name (key ``index``)."""
    model = selection.model
    assert model is not None
    photos = get_dataset(dataset_name, "train")
    _ensure("index", list(range(len(photos))), 0,  # a digits number or a URL may point past the end
            f"the photos for {model.name} are numbered 0–{len(photos) - 1}", f"photo 0 ({photos.names[0]})", cast=int)
    index = int(st.selectbox("Photo", list(range(len(photos))), key="index",
                             format_func=lambda i: _photo_label(photos, i),
                             help="The photographs inside scikit-image's wheel (no download), with their "
                                  "ImageNet class where the photo obviously shows one."))
    image, data, _ = dataset_image(dataset_name, "train", index)
    selection.true_label = photos.label_among(index, model.classes)  # None: no label, or not one of the model's
    shown = photos.class_of(index)
    truth = f", ImageNet class {shown}" if shown is not None else ""
    _set_image(selection, image, f"{photos.names[index]} (scikit-image){truth}", data)


def _photo_label(photos: DatasetSpec, index: int) -> str:
    shown = photos.class_of(index)
    return photos.names[index] + (f" — {shown}" if shown is not None else "")


def _set_image(selection: Selection, image: Image.Image, caption: str, data: bytes | None = None) -> None:
    selection.image = image
    selection.image_data = data if data is not None else image_bytes(image)
    selection.image_caption = caption


def _choose_target(selection: Selection) -> None:
    model = selection.model
    if model is None or selection.image_data is None:
        return
    selection.top = top_classes(selection.model_key, model, selection.image_data, image=selection.image)
    st.divider()
    lines = [f"`{model.class_name(c)[:28]}` {p:6.1%}" for c, p in selection.top]
    st.markdown("**Top-5 prediction**  \n" + "  \n".join(lines))
    _ensure("target_mode", ["predicted", "other"], "predicted", "the class explained is predicted or other",
            "the predicted class")
    mode = st.radio("Explain", ["predicted", "other"], key="target_mode", horizontal=True,
                    format_func=lambda m: {"predicted": "the predicted class", "other": "another class"}[m])
    if mode == "other":
        indices = list(range(model.num_classes))
        refused = _ensure("target", indices, selection.top[0][0],
                          f"class out of range: {model.name} has classes 0–{model.num_classes - 1}",
                          "the predicted class", cast=int)
        if refused is not None and refused is not FROM_LINK:
            st.warning(f"Class {refused} is out of range: {model.name} has classes 0–{model.num_classes - 1}. "
                       "Showing the predicted class instead.")
        selection.target = st.selectbox("Target class", indices, key="target",
                                        format_func=lambda i: f"{i}: {model.class_name(i)}")


def _choose_block(selection: Selection) -> None:
    model = selection.model
    assert model is not None
    st.divider()
    blocks = list(model.blocks)
    _ensure("block", blocks, blocks[-1], f"{model.name} has no depth of that name ({', '.join(blocks)})")
    selection.block = st.radio("Depth", blocks, key="block", horizontal=True,
                               help="B1 is the shallowest stage (fine detail), B4 the deepest "
                                    "(what the classifier reads).")
    shapes = model.block_shapes
    rows = "\n".join(f"| {b} | `{model.block_paths[b]}` | {shapes[b][0]} × {shapes[b][1]} × {shapes[b][2]} |"
                     for b in blocks)
    with st.expander(f"{selection.block} = `{model.block_paths[selection.block]}`", expanded=False):
        st.markdown("| block | module | channels × h × w |\n|---|---|---|\n" + rows)


def _choose_methods(selection: Selection) -> None:
    options = method_names()
    _ensure_many("methods", options, [m for m in DEFAULT_METHODS if m in options])  # says which a link named wrongly
    families: dict[str, list[str]] = {}
    for name in options:
        families.setdefault(method_info(name).family, []).append(method_info(name).label)
    shelf = "  \n".join(f"**{family}**: {', '.join(labels)}" for family, labels in families.items())
    selection.methods = st.multiselect("Methods", options, key="methods", format_func=lambda m: method_info(m).label,
                                       help=f"Shown side by side on the Saliency page.  \n{shelf}")


@dataclass(frozen=True)
class Upload:
    """A file the person uploaded in this session: its name and bytes."""

    name: str
    data: bytes


def _kept_upload(label: str, types: list[str], key: str) -> Upload | None:
    """A file uploader whose file outlives the widget for the session.

    Streamlit forgets a widget's value on the first run it is not drawn (another model chosen, a model
    that failed to load): the file is kept in the session under ``_kept_<key>`` and used again when the
    box comes back empty. Removing the file from the box (it held one on the run before) forgets it.
    """
    kept_key, held_key = f"_kept_{key}", f"_held_{key}"
    drawn_last_run = key in st.session_state  # a widget's state lives only while it is drawn on every run
    upload = st.file_uploader(label, type=types, key=key)
    kept: Upload | None = st.session_state.get(kept_key)
    if upload is not None:
        kept = Upload(upload.name, upload.getvalue())
        st.session_state[kept_key] = kept
    elif kept is not None and drawn_last_run and st.session_state.get(held_key):
        del st.session_state[kept_key]  # the person took the file out of the box
        kept = None
    st.session_state[held_key] = upload is not None
    if upload is None and kept is not None:
        st.caption(f"Using **{kept.name}** ({_size(len(kept.data))}), uploaded earlier in this session; "
                   "upload another file to replace it.")
        if st.button(f"Forget {kept.name}", key=f"_forget_{key}"):
            del st.session_state[kept_key]
            st.rerun()
    return kept


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MB" if count >= 2**20 else f"{max(1, round(count / 1024))} KB"


def _restore(key: str) -> None:
    """Give a widget back the value it had when it was last drawn, if Streamlit dropped it since
    (a widget not drawn on one run loses its state); call before drawing it, with ``_remember`` after."""
    if key not in st.session_state and f"_kept_{key}" in st.session_state:
        st.session_state[key] = st.session_state[f"_kept_{key}"]


def _remember(key: str) -> None:
    st.session_state[f"_kept_{key}"] = st.session_state.get(key)


FROM_LINK = object()  # what ``_ensure`` returns for a refused value the link gave (already said at the top)


def _ensure(key: str, options: list, default: object, reason: str, instead: str | None = None,
            cast: type | None = None) -> object | None:
    """Keep a widget's stored value among its current options (a model switch or a URL can break it).

    A value the URL gave that is not among them is named, with ``reason`` and what is shown instead
    (``instead``, else the default), in the page's warning about the link (``url_state.refused``).
    Returns the refused value (``FROM_LINK`` when the link gave it and it was said), or None.
    """
    value = st.session_state.get(key, default)
    if cast is int:
        value = _whole_number(value)
    valid = value in options
    st.session_state[key] = value if valid else default
    if valid:
        accepted(key)
        return None
    return FROM_LINK if refused(key, reason, instead if instead is not None else str(default)) else value


def _ensure_many(key: str, options: list, default: list) -> None:
    """Keep the chosen methods among the registry's; a link's unknown names are said, and a link with
    no known method at all gets the default methods."""
    value = st.session_state.get(key, default)
    kept = [v for v in value if v in options]
    unknown = [v for v in value if v not in options]
    if unknown:
        from_link = st.session_state.get(PENDING, {}).get(key) is not None
        if from_link and not kept:
            kept = list(default)
        instead = "the link's other methods" if value != unknown else "the default methods"
        refused(key, f"unknown method{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} (the Methods list "
                     "in the sidebar has every one)", instead)
    else:
        accepted(key)
    st.session_state[key] = kept


def _whole_number(value: object) -> object:
    """``value`` as an int when it is one (3, 3.0, "3"), else as it is (then ``_ensure`` refuses it)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        number = decode("int", value)
        return value if number is None else number
    return value
