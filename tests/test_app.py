"""The dashboard driven headless by Streamlit's AppTest, on the built-in models: the app opens on
efficientnet_lite0 and the cat photo; a test written for the digits model says ``model="digits"``.

The real ``app.py`` is checked page by page; interactions go through ``page()``: the same
sidebar and page scripts without ``st.navigation``, so each test drives exactly one page.
(AppTest resets Streamlit's legacy-``pages/`` flag before every run, which ran page files
on their own until ``ui.sidebar.current`` learned to hand over to app.py.)
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from helpers import page_test
from PIL import Image
from streamlit.testing.v1 import AppTest

import ui.cache
from explainers import method_info, method_names

TIMEOUT = 120
REPO = Path(__file__).resolve().parents[1]
PAGES = ["pages/overview.py", "pages/saliency.py", "pages/clustercam.py", "pages/segments.py",
         "pages/prototypes.py", "pages/concepts.py", "pages/evaluation.py", "pages/sanity.py", "pages/heads.py"]


def page(path: str, **query: str) -> AppTest:
    """One page with the shared sidebar drawn first, as app.py draws it, run once."""
    app = page_test(path, TIMEOUT, **query)
    app.run()
    assert not app.exception, app.exception
    return app


def huge_png(width: int, height: int) -> bytes:
    """A valid PNG whose header claims ``width`` x ``height``, a few bytes long (never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def panel_labels(app: AppTest) -> list[str]:
    """The method panels shown, in order, read from their bold titles."""
    labels = {method_info(m).label for m in method_names()}
    titles = [m.value.split("**")[1] for m in app.markdown if m.value.startswith("**")]
    return [title for title in titles if title in labels]


def upload(name: str, data: bytes) -> AppTest:
    app = page("pages/saliency.py", source="upload")
    app.file_uploader(key="upload").upload(name, data, "image/png").run()
    assert not app.exception, app.exception
    return app


@pytest.mark.parametrize("path", PAGES)
def test_the_real_app_renders_every_page_without_exception(path):
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params["model"] = "digits"
    app.run()
    if path != PAGES[0]:
        app.switch_page(path).run()
    assert not app.exception, app.exception
    assert app.title, "the page drew no title"
    assert app.radio(key="block").value == "B4", "the shared sidebar is missing"


def test_overview_shows_the_model_card_and_blocks():
    app = page("pages/overview.py", model="digits")
    assert app.title[0].value == "Protoscope"
    blocks = app.dataframe[0].value
    assert list(blocks["block"]) == ["B1", "B2", "B3", "B4"]
    assert list(blocks["module"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert any("Theorem 1" in m.value for m in app.markdown)


def test_overview_of_the_marked_model_shows_clean_and_random_mark_accuracy_and_what_the_gap_means():
    """digits_marked's "Test accuracy" is the random-mark split's 22.8%: shown alone it reads as a broken model.
    The Overview shows the clean split beside it and one line saying what the gap means; digits is unchanged."""
    app = page("pages/overview.py", model="digits_marked")
    assert not app.error
    metrics = {m.label: m for m in app.metric}
    assert "Test accuracy" not in metrics
    assert metrics["Test accuracy, no mark"].value == "85.6%"
    assert metrics["Test accuracy, random marks"].value == "22.8%"
    assert metrics["Test accuracy, random marks"].delta == "-62.8 points vs no mark"
    (line,) = [m.value for m in app.markdown if "gap" in m.value]
    assert "62.8-point gap" in line and "learned the mark" in line and "100.0%" in line
    plain = page("pages/overview.py", model="digits")
    assert {m.label: m.value for m in plain.metric}["Test accuracy"] == "99.7%"
    assert not [m.value for m in plain.markdown if "gap" in m.value]


def test_saliency_renders_one_panel_per_default_method():
    app = page("pages/saliency.py")
    assert not app.error
    assert panel_labels(app) == [method_info(m).label for m in app.session_state["methods"]]
    assert len(panel_labels(app)) == 8
    assert any("1 forward + 1 backward for all 8 maps" in m.value for m in app.markdown)
    assert any("EfficientNet-Lite0's B4 maps have a pattern of their own" in c.value for c in app.caption)  # the network's bright border, at B4


def test_display_controls_do_not_recompute(monkeypatch):
    st.cache_data.clear()
    calls = []
    original = ui.cache.explain_trace
    monkeypatch.setattr(ui.cache, "explain_trace", lambda *a, **k: calls.append(1) or original(*a, **k))
    app = page("pages/saliency.py")
    computed = len(calls)
    assert computed == len(app.session_state["methods"]), "one computation per method (each cached on its own)"
    app.slider(key="opacity").set_value(0.8).run()
    app.selectbox(key="cmap").set_value("viridis").run()
    app.radio(key="view").set_value("cells").run()
    assert not app.exception
    assert len(calls) == computed, "a display-only control recomputed the maps"
    app.radio(key="block").set_value("B3").run()
    assert len(calls) > computed, "a new depth must compute new maps"


def test_the_url_sets_the_view_and_the_view_sets_the_url():
    app = page("pages/saliency.py", model="digits", block="B2", methods="gradcam,layercam", index="7", split="test")
    assert app.radio(key="block").value == "B2"
    assert any("at **B2**" in m.value for m in app.markdown)
    assert panel_labels(app) == ["Grad-CAM", "LayerCAM"]
    assert app.number_input(key="index").value == 7
    app.radio(key="block").set_value("B3").run()
    assert app.query_params["block"] in ("B3", ["B3"])
    assert app.query_params["methods"] in ("gradcam,layercam", ["gradcam,layercam"])


def test_a_typed_model_name_is_in_the_url_and_a_link_opens_it():
    app = page("pages/overview.py", model_name="resnet18", random_weights="1", block="B3")
    assert app.text_input(key="model_name").value == "resnet18"
    assert any("Using **resnet18**" in c.value for c in app.sidebar.caption)
    assert any("Model: resnet18" in h.value for h in app.header)
    assert app.query_params["model_name"] in ("resnet18", ["resnet18"])
    app.text_input(key="model_name").set_value("").run()  # back to the list: nothing typed, nothing in the URL
    assert "model_name" not in app.query_params and not app.exception


def test_cam_off_the_last_block_is_explained_not_failed():
    app = page("pages/saliency.py", block="B2")
    assert "CAM" not in panel_labels(app)
    assert len(panel_labels(app)) == 7
    assert any("last block only" in c.value for c in app.caption)


def test_another_target_class_is_explained():
    app = page("pages/saliency.py", model="digits", target_mode="other", target="3")
    assert any("Explaining class **3**" in m.value for m in app.markdown)


def test_target_out_of_range_gets_a_message():
    app = page("pages/saliency.py", model="digits", target_mode="other", target="99")
    assert any("out of range" in w.value for w in app.warning)
    predicted = app.session_state["_selection"].top[0][0]
    assert any(f"Explaining class **{predicted}**" in m.value for m in app.markdown)


def test_a_text_file_renamed_png_gets_a_message():
    app = upload("notes.png", b"these are my lecture notes, not a picture")
    assert any("not an image" in e.value for e in app.error)
    assert any("Choose a model and an image" in i.value for i in app.info)


def test_an_enormous_image_gets_a_message():
    app = upload("huge.png", huge_png(20000, 20000))
    assert any("400 MP" in e.value and "limit" in e.value for e in app.error)
    assert any("Choose a model and an image" in i.value for i in app.info)


@pytest.mark.parametrize("mode", ["L", "RGBA", "RGB", "P"])
def test_greyscale_colour_and_transparent_uploads_are_explained(mode):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), mode="RGBA").convert(mode)
    app = upload(f"photo-{mode}.png", png(image))
    assert not app.error
    assert len(panel_labels(app)) == 8
    assert app.session_state["_selection"].image_caption.startswith(f"uploaded: photo-{mode}.png")


def test_a_checkpoint_of_another_architecture_gets_a_message():
    from torchvision.models import resnet18

    buffer = io.BytesIO()
    torch.save(resnet18(num_classes=10).state_dict(), buffer)
    app = page("pages/saliency.py", model="checkpoint")
    app.selectbox(key="checkpoint_arch").set_value("digits").run()
    app.file_uploader(key="checkpoint_file").upload("resnet18.pt", buffer.getvalue(), "application/octet-stream").run()
    assert not app.exception
    assert any("does not fit the digits architecture" in e.value for e in app.error)
    assert any(w.value.startswith("The model could not be loaded: ") for w in app.warning)  # not "Choose a model"


def test_a_fitting_checkpoint_is_explained():
    from explainers.cli import DIGITS_WEIGHTS

    app = page("pages/saliency.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("mine.pt", DIGITS_WEIGHTS.read_bytes(),
                                                    "application/octet-stream").run()
    assert not app.error
    assert len(panel_labels(app)) == 8


# --- Cluster-CAM page and the methods of issue 4 -------------------------------------------------

ISSUE_4_METHODS = ["scorecam", "ablationcam", "clustercam", "lrp_epsilon", "lrp_gamma",
                   "spectral_residual", "local_entropy", "center_surround"]


def test_cluster_cam_page_shows_q_maps_and_masked_images_with_base_and_scissors():
    app = page("pages/clustercam.py", model="digits")
    assert not app.error
    assert app.slider(key="cc_q").value == 6 and app.slider(key="cc_alpha").value == 0.5
    clusters = [m.value for m in app.markdown if m.value.startswith("cluster ")]
    scores = [m.value for m in app.markdown if m.value.startswith("p = ")]
    assert len(clusters) == len(scores) == 6
    for texts in (clusters, scores):
        assert sum("**base**" in t for t in texts) == 1 and sum("**scissors**" in t for t in texts) == 1
    base = next(i for i, t in enumerate(scores) if "**base**" in t)
    values = [float(t.split("**")[1]) for t in scores]
    assert values[base] == max(values), "the base has the highest masked score"
    finals = [m.value for m in app.markdown if m.value.startswith(("**Cluster-CAM**", "**Grad-CAM**", "**Score-CAM**"))]
    assert finals[0] == "**Cluster-CAM** · 7 forwards" and finals[1] == "**Grad-CAM** · 1 forward + 1 backward"
    assert any("cognition-scissors" in i.value for i in app.info)


def test_cluster_cam_page_at_another_depth_and_with_spectral_clustering():
    app = page("pages/clustercam.py", model="digits", block="B2")
    assert any("at **B2**" in m.value for m in app.markdown)
    app.radio(key="cc_clustering").set_value("spectral").run()
    assert not app.exception and not app.error
    assert len([m for m in app.markdown if m.value.startswith("p = ")]) == 6


def test_saliency_page_offers_every_method_of_issue_4():
    assert set(ISSUE_4_METHODS) <= set(method_names())
    app = page("pages/saliency.py", model="digits", methods=",".join(["gradcam", *ISSUE_4_METHODS]))
    assert not app.error
    assert panel_labels(app) == [method_info(m).label for m in ["gradcam", *ISSUE_4_METHODS]]
    notes = [c.value for c in app.caption if c.value.startswith("Saliency of the image, not of the model")]
    assert len(notes) == 3, "each classic method is labelled as saliency of the image"


def test_segments_page_shows_figure1_for_the_sidebar_depth():
    app = page("pages/segments.py", model="digits", block="B2")
    assert not app.error
    assert [s.value for s in app.subheader] == ["B234 · 16×16 cells"]
    app.toggle(key="figure1").set_value(True).run()
    assert [s.value for s in app.subheader] == ["B4 · 4×4 cells", "B234 · 16×16 cells"]
    assert not app.exception and not app.error


def test_prototypes_page_shows_figure2_and_both_tables():
    app = page("pages/prototypes.py", model="digits")
    assert not app.error
    assert [s.value for s in app.subheader] == ["Alignment: how close each prototype is to its class", "Accuracy of the network and of each prototype explainer (%)"]
    table1, table2 = app.dataframe[0].value, app.dataframe[1].value
    assert list(table1["prototypes"]) == ["CNN classifier columns c_j", "KMEx (K/C=1)", "KMEx (K/C=5)"]
    assert list(table2["model"]) == ["CNN", "KMEx (K/C=5)", "B4", "B234"]
    assert table1["class"][0] < table1["class"][2]


def test_your_own_checkpoint_with_its_training_folder(tmp_path):
    """A 3-class checkpoint has no built-in training set: the pages ask for a folder, then use it."""
    from explainers.cli import DigitsResNet

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(DigitsResNet(num_classes=3).state_dict(), buffer)
    rng = np.random.default_rng(0)
    for name in ("circle", "cross", "line"):
        (tmp_path / name).mkdir()
        for i in range(8):
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    app = page("pages/segments.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("shapes.pt", buffer.getvalue(), "application/octet-stream").run()
    assert any("training images" in i.value.lower() for i in app.info)
    app.text_input(key="train_folder").set_value(str(tmp_path / "missing")).run()
    assert any("does not exist" in e.value and "one sub-folder of images per class" in e.value for e in app.error)
    app.text_input(key="train_folder").set_value(str(tmp_path)).run()
    app.select_slider(key="per_class").set_value(3).run()
    assert not app.exception and not app.error
    assert [s.value for s in app.subheader] == ["B4 · 4×4 cells"]


# --- Issue 9, item 4: every failure says what happened and what to do ------------------------------

def cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("CMYK", (48, 40), (0, 255, 255, 0)).save(buffer, format="JPEG", quality=95)  # red
    return buffer.getvalue()


def test_image_bytes_takes_a_cmyk_image():
    image = Image.open(io.BytesIO(cmyk_jpeg()))
    assert image.mode == "CMYK"
    stored = Image.open(io.BytesIO(ui.cache.image_bytes(image)))
    assert stored.format == "PNG" and stored.mode == "RGB" and stored.size == (48, 40)


def test_a_cmyk_jpeg_upload_renders_every_page():
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params["model"] = "digits"
    app.query_params["source"] = "upload"
    app.run()
    app.file_uploader(key="upload").upload("print.jpg", cmyk_jpeg(), "image/jpeg").run()
    for path in PAGES:
        app.switch_page(path).run()
        assert not app.exception, (path, app.exception)
        assert not app.error, (path, [e.value for e in app.error])
        selection = app.session_state["_selection"]
        assert selection.image_caption == "uploaded: print.jpg (48×40, RGB)", path
        assert not any("Choose a model and an image" in i.value for i in app.info), path
    app.switch_page("pages/saliency.py").run()
    assert len(panel_labels(app)) == 8


def failed_load_messages(app: AppTest) -> list[str]:
    """The pages' message for a model that failed to load (a warning, or the prototype pages' info)."""
    return [m.value for m in [*app.warning, *app.info] if m.value.startswith("The model could not be loaded: ")]


def test_a_model_that_failed_to_load_is_named_on_every_page_not_choose_a_model():
    from torchvision.models import resnet18

    buffer = io.BytesIO()
    torch.save(resnet18(num_classes=10).state_dict(), buffer)
    for path in PAGES:
        app = page(path, model="checkpoint")
        app.selectbox(key="checkpoint_arch").set_value("digits").run()
        app.file_uploader(key="checkpoint_file").upload("resnet18.pt", buffer.getvalue(),
                                                        "application/octet-stream").run()
        assert not app.exception, (path, app.exception)
        assert any("does not fit the digits architecture" in e.value for e in app.error), path  # the sidebar
        shown = failed_load_messages(app)
        assert len(shown) == 1 and "does not fit the digits architecture" in shown[0], path
        assert shown[0].endswith("— see the sidebar."), shown[0]
        texts = [m.value for m in [*app.info, *app.warning]]
        assert not any(t.startswith("Choose a model") for t in texts), (path, texts)


def test_offline_imagenet_weights_say_what_to_do_in_the_sidebar_and_on_the_page(monkeypatch):
    import urllib.error

    import torchvision.models._api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    app = page("pages/overview.py", model="resnet18")
    sidebar = [e.value for e in app.error]
    assert len(sidebar) == 1 and "could not be downloaded (no network connection)" in sidebar[0]
    assert 'Tick "Random weights"' in sidebar[0] and "checkpoint" in sidebar[0]
    assert not any(word in sidebar[0] for word in ("URLError", "weights=None", "Errno"))
    assert failed_load_messages(app) and "resnet18" in failed_load_messages(app)[0]
    assert not any(i.value.startswith("Choose a model") for i in app.info)


def named_checkpoint(classes: list[str]) -> bytes:
    from explainers.cli import DigitsResNet

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save({"state_dict": DigitsResNet(num_classes=len(classes)).state_dict(), "arch": "digits",
                "classes": classes}, buffer)
    return buffer.getvalue()


def class_folders(root: Path, names: list[str], per_class: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def with_training_folder(checkpoint: bytes, folder: Path) -> AppTest:
    app = page("pages/segments.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("named.pt", checkpoint, "application/octet-stream").run()
    app.text_input(key="train_folder").set_value(str(folder)).run()
    assert not app.exception, app.exception
    return app


def test_a_folder_whose_class_names_match_in_another_order_is_accepted(tmp_path):
    folder = class_folders(tmp_path / "birds", ["cat", "dog", "owl"])  # sorted: not the model's order
    (folder / "dog" / "broken.png").write_text("not an image")
    app = with_training_folder(named_checkpoint(["owl", "cat", "dog"]), folder)
    assert not app.error, [e.value for e in app.error]
    assert app.session_state["_selection"].train_source == str(folder)
    # 4 images a class, 1 of each drawn for the test split (20%); broken.png was drawn for train and left out.
    assert any("9 training images in 3 classes, matched to" in c.value and "classes by name" in c.value
               for c in app.caption), [c.value for c in app.caption]
    warnings = [w.value for w in app.warning]
    assert any("1 unreadable file left out: broken.png" in w and "not an image" in w for w in warnings), warnings


def test_a_folder_whose_classes_are_not_the_models_is_refused_with_both_lists(tmp_path):
    folder = class_folders(tmp_path / "zoo", ["cat", "dog", "zebra"], per_class=1)
    app = with_training_folder(named_checkpoint(["owl", "cat", "dog"]), folder)
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and all(f"'{name}'" in errors[0] for name in ("cat", "dog", "zebra", "owl")), errors
    assert app.session_state["_selection"].train_source is None
    assert "has 1 classes" not in errors[0]

    many = [f"species {i:02d}" for i in range(30)]  # long lists are shortened, with the count
    folder = class_folders(tmp_path / "many", [f"kind {i:02d}" for i in range(30)], per_class=1)
    app = with_training_folder(named_checkpoint(many), folder)
    errors = [e.value for e in app.error]
    assert len(errors) == 1 and "(30 in all)" in errors[0] and "species 29" not in errors[0], errors


# --- Issue 10: the app opens on a real network and a real photo; one pass per view ----------------

CATS = {"tabby", "tiger cat", "Egyptian cat"}


def test_the_app_opens_on_the_imagenet_model_and_the_cat_photo():
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.run()
    assert not app.exception, app.exception
    selection = app.session_state["_selection"]
    assert app.session_state["model"] == "efficientnet_lite0" and selection.model.name == "efficientnet_lite0"
    assert selection.image_caption == "chelsea (scikit-image), ImageNet class tabby"
    assert app.selectbox(key="index").value == 0 and "chelsea" in app.selectbox(key="index").format_func(0)
    assert selection.model.class_name(selection.top[0][0]) in CATS, selection.top
    assert any("Top-5 prediction" in m.value and "cat`" in m.value for m in app.sidebar.markdown)
    assert app.header[0].value == "Model: efficientnet_lite0"
    app.switch_page("pages/saliency.py").run()
    assert not app.exception and not app.error
    assert len(panel_labels(app)) == 8
    predicted = next(m.value for m in app.markdown if m.value.startswith("#### Predicted"))
    assert predicted.split("**")[1] in CATS, predicted
    assert "digits" in app.selectbox(key="model").options  # one click away


@pytest.mark.parametrize("path", ["pages/segments.py", "pages/prototypes.py", "pages/concepts.py"])
def test_prototype_pages_on_the_imagenet_model_say_why_and_switch_to_digits_in_one_click(path):
    app = page(path)
    assert not app.error
    (message,) = [i.value for i in app.info]
    assert "efficientnet_lite0 comes without them" in message and "digits" in message and "folder" in message
    app.button(key="switch_to_digits").click().run()
    assert not app.exception and not app.error
    assert app.session_state["model"] == "digits" and app.session_state["_selection"].model.name == "digits"
    assert app.subheader, "the page shows its content on digits"


def test_photos_are_offered_by_name_for_colour_models_and_digits_by_number():
    app = page("pages/saliency.py", index="2")
    photo = app.selectbox(key="index")
    assert photo.label == "Photo" and photo.value == 2 and photo.format_func(2) == "rocket — missile"
    assert app.session_state["_selection"].image_caption == "rocket (scikit-image), ImageNet class missile"
    app.selectbox(key="model").set_value("digits").run()
    assert not app.exception
    assert app.number_input(key="index").value == 2  # the same number, now a digit of the test split
    assert app.session_state["_selection"].image_caption.startswith("digits test #2, true class ")


def test_one_forward_pass_per_view_and_one_decode_per_selection(monkeypatch):
    """The sidebar's top-5 and the Saliency page's eight maps come from one forward (and one backward)
    pass, on an image decoded and preprocessed once; a new depth or other methods run no pass,
    another class one, on the same preprocessed input."""
    from helpers import count_passes

    from explainers.data.datasets import Photo
    from explainers.models import Preprocess

    app = page("pages/saliency.py")  # loads the model (its load-time probe is not a view's pass)
    model = app.session_state["_selection"].model
    st.cache_data.clear()  # a fresh selection: nothing of it cached
    counts = {"decoded": 0, "preprocessed": 0}

    def counted(key, function):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return function(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(Photo, "load", counted("decoded", Photo.load))
    monkeypatch.setattr(ui.cache, "load_image", counted("decoded", ui.cache.load_image))
    monkeypatch.setattr(Preprocess, "to_tensor", counted("preprocessed", Preprocess.to_tensor))
    with count_passes(model.net, monkeypatch) as passes:
        app.run()
        assert not app.exception and len(panel_labels(app)) == 8
        assert (passes.forwards, passes.backwards) == (1, 1)
        assert counts == {"decoded": 1, "preprocessed": 1}
        selection = app.session_state["_selection"]
        predicted = next(m.value for m in app.markdown if m.value.startswith("#### Predicted"))
        assert predicted == f"#### Predicted **{model.class_name(selection.top[0][0])}** ({selection.top[0][1]:.1%})"

        app.slider(key="opacity").set_value(0.8).run()
        app.radio(key="block").set_value("B3").run()
        app.multiselect(key="methods").set_value(["gradcam", "layercam", "eigencam"]).run()
        assert not app.exception and panel_labels(app) == ["Grad-CAM", "LayerCAM", "Eigen-CAM"]
        assert (passes.forwards, passes.backwards) == (1, 1), "a depth or methods of the same view ran a pass"
        assert counts == {"decoded": 1, "preprocessed": 1}

        app.radio(key="target_mode").set_value("other").run()  # the predicted class still: no pass
        assert (passes.forwards, passes.backwards) == (1, 1)
        app.selectbox(key="target").set_value(281).run()  # tabby
        assert any("Explaining class **tabby**" in m.value for m in app.markdown)
        assert (passes.forwards, passes.backwards) == (2, 2)
        assert counts == {"decoded": 1, "preprocessed": 1}, "another class decoded or preprocessed again"


# --- Issue 11, item 2: one store of fitted things, shared by the pages and the k-means attribution --

def test_kmeans_attribution_fits_on_the_sidebars_training_folder_with_progress_and_segments_reuses_it(tmp_path,
                                                                                                      monkeypatch):
    """A checkpoint without a training set of its own (the digits network with a 3-vs-7 head) and a
    training folder named in the sidebar: the Saliency page's k-means attribution is drawn (before: "needs
    the labelled training set"), its fit fills the page's progress bar, and the Segments page at the same
    depth is served the very explainer object it fitted, with no second fit."""
    from streamlit.delta_generator import DeltaGenerator

    import ui.prototype_cache
    from explainers import load_dataset
    from explainers.cli import DIGITS_WEIGHTS
    from explainers.fitted import store
    from explainers.fitted.prototypes import PrototypeExplainer
    from explainers.methods import kmeans_attribution as memo

    state = torch.load(DIGITS_WEIGHTS, weights_only=True)
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][[3, 7]], state["fc.bias"][[3, 7]]
    checkpoint = io.BytesIO()
    torch.save({"state_dict": state, "arch": "digits", "classes": ["3", "7"]}, checkpoint)
    digits = load_dataset("digits", "train")
    for label in (3, 7):
        (tmp_path / "folder" / str(label)).mkdir(parents=True)
        for i in digits.indices_of(label)[:12]:
            digits[int(i)][0].save(tmp_path / "folder" / str(label) / f"{i}.png")

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))  # nothing on disk: a real fit
    monkeypatch.setattr(store, "STORE", store.Store())
    monkeypatch.setattr(store, "WAIT_POLL", 0.01)  # the fit of 19 images is quick: look at it often
    fits, served, bars = [], [], []
    fit, asked, draw = PrototypeExplainer.fit, memo.fitted, DeltaGenerator.progress
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda self, *a, **k: fits.append(self) or fit(self, *a, **k))

    def fitted(*args, **kwargs):
        served.append(asked(*args, **kwargs))
        return served[-1]

    monkeypatch.setattr(memo, "fitted", fitted)  # the k-means attribution's way in
    monkeypatch.setattr(ui.prototype_cache, "fitted", fitted)  # the prototype pages' way in
    monkeypatch.setattr(DeltaGenerator, "progress",
                        lambda self, value, text=None, **k: bars.append(text) or draw(self, value, text=text, **k))

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params.update(model="checkpoint", methods="gradcam,kmex_attribution", block="B3")
    app.run()
    app.file_uploader(key="checkpoint_file").upload("three_or_seven.pt", checkpoint.getvalue(),
                                                    "application/octet-stream").run()
    app.text_input(key="train_folder").set_value(str(tmp_path / "folder")).run()
    assert app.session_state["_selection"].model.dataset is None
    app.switch_page("pages/saliency.py").run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    assert panel_labels(app) == ["Grad-CAM", "k-means attribution"]
    assert not [c.value for c in app.caption if c.value.startswith("Not shown")]
    assert len(fits) == 1 and served and served[0] is fits[0]
    fitting = [text for text in bars if text and text.startswith("Fitting the B34 prototypes, K/C = 5")]
    assert any(": stage " in text for text in fitting) and fitting[-1].endswith(": done"), bars  # the stage, then done

    app.switch_page("pages/segments.py").run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    assert [s.value for s in app.subheader] == ["B34 · 8×8 cells"]
    assert len(fits) == 1, "the Segments page fitted again"
    assert len(served) >= 2 and all(explainer is fits[0] for explainer in served)
    assert len(store.STORE) == 1  # one explainer in memory, for both pages


def test_a_method_whose_own_check_fails_is_not_drawn_and_the_others_are(monkeypatch):
    """LRP refusing its map at run time (say, relevance not conserved on this input) must not blank the
    page: its panel is replaced by the reason, and Grad-CAM is still drawn."""
    from explainers.methods import explanation
    from explainers.runtime.errors import MethodUnavailableError

    st.cache_data.clear()
    real = explanation._compute

    def refuse_lrp(method, shared, block, model, settings):
        if method.name == "lrp_epsilon":
            raise MethodUnavailableError("its relevance is not conserved on this image (test)")
        return real(method, shared, block, model, settings)

    monkeypatch.setattr(explanation, "_compute", refuse_lrp)
    app = page("pages/saliency.py", model="digits", methods="gradcam,lrp_epsilon", index="4")
    assert not app.exception
    assert panel_labels(app) == ["Grad-CAM"]
    warnings = " ".join(w.value for w in app.warning)
    assert "LRP-ε is not shown" in warnings and "not conserved on this image" in warnings


def test_a_cancelled_fit_is_not_started_again_by_a_rerun_and_can_be_resumed(tmp_path, monkeypatch):
    """After the Cancel button (``ui.prototype_cache._cancel``), the page says what was kept and offers to
    resume instead of fitting again on every rerun; Resume fits (here: a K/C that nothing has shipped)."""
    from explainers import load_dataset
    from explainers.fitted import store
    from explainers.methods.kmeans_attribution import recipe
    from explainers.models.loading import load_model as load

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(store, "STORE", store.Store())
    key = recipe(load("digits"), "B4", 2, load_dataset("digits", "train")).key
    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params.update(model="digits", per_class="2", block="B4")
    app.session_state["cancelled_fits"] = {key}
    app.run()
    app.switch_page("pages/segments.py").run()
    assert not app.exception
    assert any("was cancelled" in info.value for info in app.info), [i.value for i in app.info]
    assert len(store.STORE) == 0  # nothing was fitted
    app.button(key="resume_B4_2").click().run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert key in store.STORE and not app.session_state["cancelled_fits"]
def test_concepts_page_shows_table_1_the_assignments_and_the_images_features():
    """The Concepts page on digits (its default layer ships in assets/qsenn/): Table 1's rows, dense vs Q-SENN
    on the test split side by side, the ternary class x feature picture, and the image's features with their
    maps and galleries; another order of the features redraws the picture only."""
    app = page("pages/concepts.py", model="digits", cls="7")
    assert not app.error and not app.exception
    (table,) = app.dataframe
    layers = list(table.value["layer"])
    assert layers[0].startswith("Dense") and layers[-1].startswith("Q-SENN (post-hoc")
    assert any(name.startswith("glm-saga5") for name in layers)
    ternary = table.value.iloc[-1]
    assert ternary["features per class"] == 5 and ternary["test accuracy (%)"] >= table.value.iloc[0]["test accuracy (%)"] - 3
    assert [m.label for m in app.metric] == ["Dense, test", "Q-SENN, test"]
    headers = [s.value for s in app.subheader]
    assert "This image · Q-SENN predicts 7" in headers
    assert app.radio(key="qsenn_mode").options == ["Post-hoc (frozen backbone)",
                                                   "Full Q-SENN (fine-tunes a copy of the network)"]
    shares = [m.value for m in app.markdown if "of the logit's evidence" in m.value]
    assert shares, "no feature of the predicted class is shown"
    assert len(app.get("image")) >= 7 * len(shares)  # each feature: its map and six gallery images
    app.radio(key="qsenn_order").set_value("shared").run()
    assert not app.exception and not app.error
# --- the spurious-correlation model of issue 14 ----------------------------------------------------

def test_the_marked_model_is_offered_with_its_marked_images_and_every_split():
    """digits_marked in the model list, its own images (all four splits, each image's mark named in its
    caption), no "Random weights" (its weights ship), and Grad-CAM on a training 0 predicted as 0."""
    app = page("pages/saliency.py", model="digits_marked", split="train", cls="0", index="0", block="B2",
               methods="gradcam,gradcampp")
    assert not app.error
    assert "digits_marked" in app.selectbox(key="model").options
    assert app.radio(key="split").options == ["test", "test_clean", "test_own", "train"]
    assert not [box for box in app.checkbox if box.key == "random_weights"]
    assert panel_labels(app) == ["Grad-CAM", "Grad-CAM++"]
    assert "digits_marked train" in app.session_state["_selection"].image_caption
    assert any("#### Predicted **0**" in m.value for m in app.markdown)
    app.radio(key="split").set_value("test_clean").run()
    assert not app.exception and not app.error
    app.radio(key="split").set_value("test").run()
    assert not app.exception
    assert app.query_params["split"] in ("test", ["test"])


def test_a_random_mark_is_named_in_the_caption_and_the_image_carries_it():
    """Test image 0 of class 1 carries a random class's mark (explainers.data.marked.marks_of): the caption names
    it, and the page explains that very image (its prediction is the library's for the marked image)."""
    from explainers import load_dataset, load_model, predict
    from explainers.data.marked import marks_of

    test = load_dataset("digits_marked", "test")
    index = int(test.indices_of(1)[0])
    mark = int(marks_of("test")[index])
    app = page("pages/saliency.py", model="digits_marked", split="test", cls="1", index="0", methods="gradcam")
    assert f"true class 1, mark of class {mark}" in app.session_state["_selection"].image_caption
    expected = predict(load_model("digits_marked"), test[index][0])[0][0]
    assert any(f"#### Predicted **{expected}**" in m.value for m in app.markdown)


def test_a_timm_checkpoint_loads_from_the_page_by_the_arch_saved_in_it():
    """The box's default reads the file's own "arch" (a typed name such as timm:resnet18 goes through the same
    load_model(arch=...); AppTest cannot type a new option into a select box)."""
    from explainers import load_model

    net = load_model("timm:resnet18", weights=None).net
    with_arch = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "arch": "timm:resnet18"}, with_arch)
    app = page("pages/overview.py", model="checkpoint")
    assert app.selectbox(key="checkpoint_arch").value == "as saved in the file"
    app.file_uploader(key="checkpoint_file").upload("timm18.pt", with_arch.getvalue(), "application/octet-stream").run()
    assert not app.exception and not app.error, [e.value for e in app.error]
    assert "timm:resnet18" in app.header[0].value


def test_a_plain_state_dict_of_an_unknown_architecture_asks_for_its_name():
    from torchvision.models import resnet18

    buffer = io.BytesIO()
    torch.save(resnet18(num_classes=10).state_dict(), buffer)
    app = page("pages/saliency.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("plain.pt", buffer.getvalue(), "application/octet-stream").run()
    assert not app.exception
    assert any("does not say which architecture it holds" in e.value and "architecture box" in e.value
               for e in app.error)


def test_the_overview_describes_every_page_of_the_navigation():
    import re

    titles = re.findall(r'st\.Page\("pages/\w+\.py", title="([^"]+)"', (REPO / "app.py").read_text())
    app = page("pages/overview.py", model="digits")
    listed = re.findall(r"^- \*\*(.+?)\*\*", next(m.value for m in app.markdown if m.value.startswith("- **Saliency")),
                        flags=re.M)
    assert listed == [t for t in titles if t != "Overview"]
