"""The side-by-side page (issue 20): the digits ResNet and the digits ViT on the sidebar's digits image, with
the methods they share, each panel captioned with the model, block, passes and time, and each prediction."""
from __future__ import annotations

from pathlib import Path

from helpers import page_test
from streamlit.testing.v1 import AppTest

from explainers import method_info

REPO = Path(__file__).resolve().parents[1]


def page(name: str, **query: str) -> AppTest:
    return page_test(f"pages/{name}", 240, **query)


def test_compare_renders_digits_and_digits_vit_with_the_shared_methods():
    app = page("compare.py", model="digits", split="test", index="3")
    app.run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    texts = [m.value for m in app.markdown]
    assert any(t.startswith("#### digits (") for t in texts) and any(t.startswith("#### digits_vit (") for t in texts)
    predictions = [t for t in texts if t.startswith("Predicts **")]
    assert len(predictions) == 2 and all("B4 = `" in t for t in predictions)
    shared = app.multiselect(key="compare_methods").value
    cam_family = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "cam", "eigencam", "eigengradcam"]
    # both GAP heads: all eight; both ship fitted prototypes, so the k-means attribution too (no fit)
    assert shared == [*cam_family, "kmex_attribution"]
    for name in shared:  # one captioned panel per model
        label = f"**{method_info(name).label}**"
        panels = [t for t in texts if t.startswith(label + " · ")]
        assert {t.split(" · ")[1] for t in panels} == {"digits", "digits_vit"}, name
    captions = [c.value for c in app.caption]
    assert sum(" fwd / " in c and " bwd · " in c for c in captions) == 2 * len(shared)
    assert not any("no fitted prototypes" in c for c in captions)  # both ship theirs: nothing to say
    assert "digits test #3" in " ".join(captions)  # the sidebar's image


def test_models_of_another_input_kind_are_refused_in_words():
    app = page("compare.py", model="digits")
    app.run()
    app.selectbox(key="compare_right").set_value("efficientnet_lite0").run()
    assert not app.exception, app.exception
    assert any("same input kind" in e.value for e in app.error)
