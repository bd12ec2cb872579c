"""Evaluation and Sanity checks take transformers as they take CNNs (issue 20, item 3): both pages render on
digits_vit with the CAM family and the attention methods; the cascade randomises the head, B4..B1 and then the
stem, position embedding included; the Sanity page says that rollout ignores the class and the head."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import page_test
from streamlit.testing.v1 import AppTest

from explainers import load_model
from explainers.evaluation import layer_groups, randomized_models

REPO = Path(__file__).resolve().parents[1]


def page(name: str, **query: str) -> AppTest:
    return page_test(f"pages/{name}", 300, **query)


def test_digits_vit_layer_groups_go_from_the_head_down_to_the_patch_embedding():
    model = load_model("digits_vit", device="cpu")
    groups = layer_groups(model)
    assert list(groups) == ["classifier", "B4", "B3", "B2", "B1", "stem"]
    assert groups["classifier"] == ["head"]
    assert "norm" in groups["B4"] and all(p.startswith("blocks.3") or p == "norm" for p in groups["B4"])
    for index, block in enumerate(("B1", "B2", "B3")):
        assert all(p.startswith(f"blocks.{index}.") for p in groups[block]), block
    assert groups["stem"] == ["", "patch_embed.proj"]  # the position embedding (held by the network) and the patches
    steps = dict(randomized_models(model, "cascading", groups=groups))
    assert torch.equal(steps["B1"].net.pos_embed, model.net.pos_embed)  # untouched until the stem's step
    assert not torch.equal(steps["stem"].net.pos_embed, model.net.pos_embed)
    assert not torch.equal(steps["stem"].net.patch_embed.proj.weight, model.net.patch_embed.proj.weight)


def test_the_sanity_page_runs_on_digits_vit_and_says_what_rollout_cannot_pass():
    app = page("sanity.py", model="digits_vit", methods="gradcam,rollout,chefer", block="B4")
    app.run()
    app.button(key="sanity_run").click().run()  # the check runs when asked (issue 21)
    assert not app.exception, app.exception
    assert app.get("plotly_chart"), "the check did not run"
    assert not app.error, [e.value for e in app.error]
    text = " ".join(c.value for c in app.caption) + " ".join(m.value for m in app.markdown)
    assert "rollout" in text.lower() and "ignores the class" in text


def test_the_evaluation_page_runs_on_digits_vit():
    app = page("evaluation.py", model="digits_vit", methods="gradcam,legrad,rollout", block="B4")
    app.run()
    assert not app.exception, app.exception
    assert "3 methods × 4 metrics" in app.info[0].value and "through digits_vit" in app.info[0].value
    app.button(key="eval_run").click().run()  # nothing is scored before Run (issue 21)
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert app.dataframe, "no table"


def test_digits_vits_segments_open_from_the_shipped_prototypes_without_fitting(tmp_path, monkeypatch):
    """Seed 000's explainers on the ViT's patch tokens ship as the digits ResNet's do: on a fresh machine (an
    empty cache) the Segments page reads them and fits nothing, at B4 and with Figure 1's B234."""
    from explainers.fitted import PrototypeExplainer, store

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(store, "STORE", store.Store())
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda *a, **k: pytest.fail("fitted instead of reading assets/"))
    app = page("segments.py", model="digits_vit", figure1="1")
    app.run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert any("B234" in s.value for s in app.subheader) and any("B4" in s.value for s in app.subheader)
