"""Issue 21: a domain expert's afternoon and a lecture's first minute.

Photos come upright (EXIF orientation), what a person gave (an uploaded checkpoint or image, a
training folder) survives model switches and failed loads, a shared link whose values cannot be
used says so, and what the model sees of an image (its first frame, transparency on a background)
is said where the image is shown.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from test_app import class_folders, named_checkpoint, page, panel_labels, png

from explainers import load_image
from explainers.data import image_folder, image_notes

# --- Item 3: the EXIF orientation is applied wherever an image is read ------------------------------


def turned_jpeg(orientation: int = 6, size: tuple[int, int] = (64, 40)) -> tuple[bytes, Image.Image]:
    """A JPEG whose pixels are stored ``size`` (width, height) with an EXIF orientation tag, and
    the image a viewer shows (the decoded pixels with the tag applied, by hand)."""
    rng = np.random.default_rng(orientation)
    stored = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=95)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    decoded.load()
    turns = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270, 8: Image.Transpose.ROTATE_90,
             2: Image.Transpose.FLIP_LEFT_RIGHT}
    return buffer.getvalue(), decoded.convert("RGB").transpose(turns[orientation])


@pytest.mark.parametrize("orientation", [6, 8, 3, 2])
def test_an_exif_orientation_is_applied_when_an_image_is_read(orientation, tmp_path):
    data, upright = turned_jpeg(orientation)
    assert Image.open(io.BytesIO(data)).size == (64, 40)  # stored lying on its side (for 6 and 8)
    for image in (load_image(data), load_image(_write(tmp_path / "photo.jpg", data))):
        assert image.size == upright.size
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(upright))
    if orientation in (6, 8):
        assert upright.size == (40, 64)


def test_a_training_folder_reads_its_photos_upright(tmp_path):
    data, upright = turned_jpeg(6)
    for kind in ("cat", "dog"):
        (tmp_path / kind).mkdir()
        for i in range(5):
            _write(tmp_path / kind / f"{i}.jpg", data)
    dataset = image_folder(tmp_path, "train")
    image, _ = dataset[0]
    assert image.size == (40, 64)
    np.testing.assert_array_equal(np.asarray(image), np.asarray(upright))


def test_an_uploaded_phone_photo_is_captioned_and_explained_upright():
    data, upright = turned_jpeg(6, size=(96, 64))
    app = page("pages/saliency.py", source="upload")
    app.file_uploader(key="upload").upload("phone.jpg", data, "image/jpeg").run()
    assert not app.exception and not app.error
    selection = app.session_state["_selection"]
    assert selection.image_caption.startswith("uploaded: phone.jpg (64×96, RGB)"), selection.image_caption
    np.testing.assert_array_equal(np.asarray(selection.image), np.asarray(upright))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


# --- Item 8: what the model does not see of a file is said where the image is shown ------------------

def animation(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (40, 30), (80 * i, 40, 200 - 60 * i)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def half_transparent() -> bytes:
    pixels = np.full((30, 40, 4), 200, dtype=np.uint8)
    pixels[:, 20:, 3] = 0
    return png(Image.fromarray(pixels, mode="RGBA"))


def test_an_animation_and_transparency_are_named_and_an_opaque_image_is_not():
    assert image_notes(load_image(animation())) == ["an animation of 3 frames: the first is explained"]
    assert image_notes(load_image(half_transparent()), background="black") == [
        "transparent parts are seen on black (the alpha channel is not used)"]
    opaque = np.full((30, 40, 4), 255, dtype=np.uint8)  # an alpha channel that hides nothing
    assert image_notes(load_image(png(Image.fromarray(opaque, mode="RGBA")))) == []
    assert image_notes(load_image(png(Image.new("RGB", (30, 20))))) == []


@pytest.mark.parametrize("name, data, words", [
    ("wave.gif", animation(), "an animation of 3 frames: the first is explained"),
    ("logo.png", half_transparent(), "transparent parts are seen on white")])
def test_the_upload_caption_says_what_the_model_does_not_see(name, data, words):
    app = page("pages/saliency.py", source="upload")
    app.file_uploader(key="upload").upload(name, data, "image/png").run()
    assert not app.exception and not app.error
    caption = app.session_state["_selection"].image_caption
    assert caption.startswith(f"uploaded: {name}") and words in caption, caption


# --- Item 4: what a person gave survives model switches and failed loads ---------------------------

def test_an_uploaded_checkpoint_survives_a_switch_to_another_model_and_back():
    from explainers.cli import DIGITS_WEIGHTS

    app = page("pages/saliency.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("mine.pt", DIGITS_WEIGHTS.read_bytes(),
                                                    "application/octet-stream").run()
    assert app.session_state["_selection"].model_key.startswith("checkpoint:")
    app.selectbox(key="model").set_value("digits").run()
    assert app.session_state["_selection"].model_key.startswith("digits:")
    app.selectbox(key="model").set_value("checkpoint").run()
    assert not app.exception and not app.error
    assert not [i.value for i in app.info if "Upload a state dict" in i.value], "the upload was asked for again"
    assert app.session_state["_selection"].model_key.startswith("checkpoint:")
    assert any("Using **mine.pt**" in c.value for c in app.caption)
    assert len(panel_labels(app)) == 8
    app.button(key="_forget_checkpoint_file").click().run()  # and it can be let go
    assert any("Upload a state dict" in i.value for i in app.info)
    assert app.session_state["_selection"].model is None


def test_taking_the_file_out_of_the_box_forgets_it():
    from explainers.cli import DIGITS_WEIGHTS

    app = page("pages/saliency.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("mine.pt", DIGITS_WEIGHTS.read_bytes(),
                                                    "application/octet-stream").run()
    app.file_uploader(key="checkpoint_file").clear().run()
    assert any("Upload a state dict" in i.value for i in app.info)
    assert app.session_state["_selection"].model is None


def test_an_uploaded_image_survives_a_look_at_the_dataset_and_a_model_that_failed_to_load():
    app = page("pages/saliency.py", model="digits", source="upload")
    app.file_uploader(key="upload").upload("seven.png", png(Image.new("L", (64, 64), 30)), "image/png").run()
    assert app.session_state["_selection"].image_caption.startswith("uploaded: seven.png")
    app.radio(key="source").set_value("dataset").run()  # the upload box is not drawn on this run
    assert app.session_state["_selection"].image_caption.startswith("digits test")
    app.radio(key="source").set_value("upload").run()
    assert not app.exception and not app.error
    assert app.session_state["_selection"].image_caption.startswith("uploaded: seven.png")
    app.text_input(key="model_name").set_value("timm:nonexistent_net").run()  # fails: no image box
    assert app.session_state["_selection"].model is None
    app.text_input(key="model_name").set_value("").run()
    assert app.session_state["_selection"].image_caption.startswith("uploaded: seven.png")


def test_the_training_folder_survives_a_failed_checkpoint_and_a_switch_to_digits(tmp_path):
    from explainers.cli import DigitsResNet  # noqa: F401  (the checkpoints below are its)

    folder = class_folders(tmp_path / "birds", ["cat", "dog", "owl"])
    good = named_checkpoint(["cat", "dog", "owl"])
    app = page("pages/segments.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("named.pt", good, "application/octet-stream").run()
    app.text_input(key="train_folder").set_value(str(folder)).run()
    assert app.session_state["_selection"].train_source == str(folder)
    app.file_uploader(key="checkpoint_file").upload("broken.pt", b"not a checkpoint", "application/octet-stream").run()
    assert app.session_state["_selection"].model is None and app.error  # the failed load is said
    app.file_uploader(key="checkpoint_file").upload("named.pt", good, "application/octet-stream").run()
    assert app.text_input(key="train_folder").value == str(folder), "the folder box was emptied"
    assert app.session_state["_selection"].train_source == str(folder)
    app.selectbox(key="model").set_value("digits").run()
    app.selectbox(key="model").set_value("checkpoint").run()
    assert app.text_input(key="train_folder").value == str(folder)
    assert app.session_state["_selection"].train_source == str(folder)
    assert not app.exception


# --- Item 6: a link's values that cannot be used are named, with the reason and what is shown instead --

def link_notice(app) -> str:
    """The one warning about the link's values (it is the only one that starts so)."""
    notices = [w.value for w in app.warning if "of this link w" in w.value]
    assert len(notices) == 1, [w.value for w in app.warning]
    return notices[0]


@pytest.mark.parametrize("query, words", [
    ({"block": "B9"}, "`block=B9`: efficientnet_lite0 has no depth of that name (B1, B2, B3, B4); showing B4 instead."),
    ({"model": "timm:nonexistent"}, "`model=timm:nonexistent`: not a model of this server's list"),
    ({"methods": "gradcam,nosuchcam"}, "`methods=gradcam,nosuchcam`: unknown method nosuchcam"),
    ({"index": "999"}, "`index=999`: the photos for efficientnet_lite0 are numbered 0–"),
    ({"index": "seven"}, "`index=seven`: not a whole number; showing the default instead."),
    ({"model": "digits", "split": "valid"}, "`split=valid`: digits has no split of that name"),
    ({"model": "digits", "index": "5000"}, "`index=5000`: digits test has images 0–"),
    ({"model": "digits", "target_mode": "other", "target": "99"},
     "`target=99`: class out of range: digits has classes 0–9"),
    ({"source": "camera"}, "`source=camera`: the image source is dataset or upload"),
])
def test_each_link_value_not_used_is_named_with_why_and_what_is_shown(query, words):
    app = page("pages/saliency.py", **query)
    assert not app.exception
    notice = link_notice(app)
    assert words in notice, notice
    assert "A value of this link was not used" in notice


def test_several_values_are_listed_in_one_warning_until_dismissed():
    app = page("pages/saliency.py", model="digits", block="B9", methods="nosuchcam", random_weights="yes")
    notice = link_notice(app)
    assert "3 values of this link were not used" in notice
    for words in ("`block=B9`", "`methods=nosuchcam`: unknown method nosuchcam", "showing the default methods instead",
                  "`random_weights=yes`: not 0 or 1"):
        assert words in notice, notice
    assert app.session_state["methods"] and app.radio(key="block").value == "B4"
    app.radio(key="block").set_value("B2").run()  # the person's own changes keep it up ...
    assert link_notice(app)
    app.button(key="_url_notes_seen_3").click().run()  # ... until dismissed
    assert not [w.value for w in app.warning if "of this link w" in w.value]


def test_a_page_setting_out_of_range_joins_the_sidebars_list():
    app = page("pages/segments.py", model="digits", per_class="999", block="B9")
    notice = link_notice(app)
    assert "`per_class=999`: prototypes per class (K/C) go from 1 to 10; showing 5 instead." in notice, notice
    assert "`block=B9`" in notice and "2 values" in notice
    assert app.select_slider(key="per_class").value == 5


def test_a_link_whose_values_are_all_used_says_nothing_and_a_later_reset_is_not_blamed_on_it():
    app = page("pages/saliency.py", model="digits", block="B2", methods="gradcam,layercam", index="7")
    assert not [w.value for w in app.warning if "of this link w" in w.value]
    app.selectbox(key="model").set_value("efficientnet_lite0").run()  # index 7 and B2 are checked again: fine
    assert not [w.value for w in app.warning if "of this link w" in w.value]


# --- Item 5: a link on a fresh server shows the page titles at once, not raw file names -------------

FIRST_PAINT_PAGES = ["pages/overview.py", "pages/saliency.py", "pages/clustercam.py", "pages/segments.py"]


def test_app_py_declares_the_navigation_before_importing_anything_heavy():
    """The navigation (page titles) and a loading note reach the browser before torch is imported:
    everything app.py imports before ``st.navigation`` imports neither torch nor the library.
    (Measured: benchmarks/first_paint.py.)"""
    import ast
    import subprocess
    import sys

    from test_app import REPO

    tree = ast.parse((REPO / "app.py").read_text())
    first_navigation = next(node.lineno for node in ast.walk(tree) if isinstance(node, ast.Call)
                            and getattr(node.func, "attr", "") == "navigation")
    early = [node for node in tree.body
             if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno < first_navigation]
    modules = [alias.name for node in early for alias in node.names] + [
        node.module for node in early if isinstance(node, ast.ImportFrom) and node.module]
    assert "ui.sidebar" not in modules and not any(m.startswith("explainers") for m in modules), modules
    statements = "; ".join(f"import {m}" for m in ["streamlit", "ui.entry", "ui.style"])
    heavy = ("torch", "explainers", "ui.sidebar")
    probe = f"import sys; {statements}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert loaded.stdout.strip() == "[]", loaded.stdout + loaded.stderr


@pytest.mark.parametrize("path", FIRST_PAINT_PAGES)
def test_a_page_hands_over_to_app_py_before_its_heavy_imports(path):
    """On a fresh server a deep link runs the page file on its own (Streamlit's legacy pages/ mode):
    its first statement must hand over to app.py, before the imports that load torch."""
    import ast

    from test_app import REPO

    body = ast.parse((REPO / path).read_text()).body
    body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body  # docstring
    assert isinstance(body[0], ast.ImportFrom) and body[0].module == "ui.entry", ast.dump(body[0])[:120]
    call = body[1]
    assert isinstance(call, ast.Expr) and isinstance(call.value, ast.Call) and call.value.func.id == "through_app"


def test_a_page_run_on_its_own_is_handed_over_at_once():
    """A page file run without app.py (the legacy mode's first run) reruns before importing the library."""
    from streamlit.testing.v1 import AppTest
    from test_app import REPO, TIMEOUT

    for path in FIRST_PAINT_PAGES:
        app = AppTest.from_file(str(REPO / path), default_timeout=TIMEOUT)
        app.run()
        assert not app.exception, app.exception
        assert app.session_state["_handed_over"] is True  # it asked for the rerun through app.py (one at most)


# --- Words a student follows: the border note is one sentence, its figures one click away --------------

def test_the_border_note_is_one_sentence_with_the_detail_behind_a_click():
    app = page("pages/saliency.py", methods="gradcam")
    notes = [c.value for c in app.caption if "maps have a pattern of their own" in c.value]
    short = min(notes, key=len)
    assert len(notes) == 2 and short.count(". ") == 0 and "padding" not in short and "mirrored" in short, notes
    (detail,) = [e for e in app.expander if e.label == "The border pattern, measured"]
    assert [c.value for c in detail.caption] == [max(notes, key=len)] and '"same" padding' in max(notes, key=len)
