"""The dashboard driven headless by Streamlit's AppTest on the embedded default (digits).

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
from PIL import Image
from streamlit.testing.v1 import AppTest

import ui.cache
from explainers import method_info, methods

TIMEOUT = 120
REPO = Path(__file__).resolve().parents[1]
PAGES = ["pages/overview.py", "pages/saliency.py", "pages/segments.py", "pages/prototypes.py"]


def page(path: str, **query: str) -> AppTest:
    """One page with the shared sidebar drawn first, as app.py draws it."""
    script = ("import runpy\nfrom ui.sidebar import sidebar\nsidebar()\n"
              f"runpy.run_path({str(REPO / path)!r}, run_name='__main__')\n")
    app = AppTest.from_string(script, default_timeout=TIMEOUT)
    for key, value in query.items():
        app.query_params[key] = value
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
    labels = {method_info(m).label for m in methods()}
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
    app.run()
    if path != PAGES[0]:
        app.switch_page(path).run()
    assert not app.exception, app.exception
    assert app.title, "the page drew no title"
    assert app.radio(key="block").value == "B4", "the shared sidebar is missing"


def test_overview_shows_the_model_card_and_blocks():
    app = page("pages/overview.py")
    assert app.title[0].value == "Protoscope"
    blocks = app.dataframe[0].value
    assert list(blocks["block"]) == ["B1", "B2", "B3", "B4"]
    assert list(blocks["module"]) == ["layer1", "layer2", "layer3", "layer4"]
    assert any("Theorem 1" in m.value for m in app.markdown)


def test_saliency_renders_one_panel_per_default_method():
    app = page("pages/saliency.py")
    assert not app.error
    assert panel_labels(app) == [method_info(m).label for m in app.session_state["methods"]]
    assert len(panel_labels(app)) == 8
    assert any("1 forward + 1 backward for all 8 maps" in m.value for m in app.markdown)


def test_display_controls_do_not_recompute(monkeypatch):
    st.cache_data.clear()
    calls = []
    original = ui.cache.explain_many
    monkeypatch.setattr(ui.cache, "explain_many", lambda *a, **k: calls.append(1) or original(*a, **k))
    app = page("pages/saliency.py")
    assert len(calls) == 1
    app.slider(key="opacity").set_value(0.8).run()
    app.selectbox(key="cmap").set_value("viridis").run()
    app.radio(key="view").set_value("cells").run()
    assert not app.exception
    assert len(calls) == 1, "a display-only control recomputed the maps"
    app.radio(key="block").set_value("B3").run()
    assert len(calls) == 2, "a new depth must compute new maps"


def test_the_url_sets_the_view_and_the_view_sets_the_url():
    app = page("pages/saliency.py", block="B2", methods="gradcam,layercam", index="7", split="test")
    assert app.radio(key="block").value == "B2"
    assert any("at **B2**" in m.value for m in app.markdown)
    assert panel_labels(app) == ["Grad-CAM", "LayerCAM"]
    assert app.number_input(key="index").value == 7
    app.radio(key="block").set_value("B3").run()
    assert app.query_params["block"] in ("B3", ["B3"])
    assert app.query_params["methods"] in ("gradcam,layercam", ["gradcam,layercam"])


def test_cam_off_the_last_block_is_explained_not_failed():
    app = page("pages/saliency.py", block="B2")
    assert "CAM" not in panel_labels(app)
    assert len(panel_labels(app)) == 7
    assert any("last block only" in c.value for c in app.caption)


def test_another_target_class_is_explained():
    app = page("pages/saliency.py", target_mode="other", target="3")
    assert any("Explaining class **3**" in m.value for m in app.markdown)


def test_target_out_of_range_gets_a_message():
    app = page("pages/saliency.py", target_mode="other", target="99")
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
    assert any("Choose a model" in i.value for i in app.info)


def test_a_fitting_checkpoint_is_explained():
    from explainers.zoo import DIGITS_WEIGHTS

    app = page("pages/saliency.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("mine.pt", DIGITS_WEIGHTS.read_bytes(),
                                                    "application/octet-stream").run()
    assert not app.error
    assert len(panel_labels(app)) == 8
