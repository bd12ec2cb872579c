"""TEXTSPAN's decomposition (Gandelsman et al. 2024, eq. 5) and CHILI (seed 001): the terms add up to the
representation and their scores to the logit, on the built-in digits_vit, a random timm class-token ViT (with
LayerScale, registers, fc_norm) and a random torchvision ViT; the per-head maps add up to the map; a 1-layer
ViT with its MLP zeroed equals the paper's equation written out by hand; CHILI's weights, maps and mask folders.
Random weights except digits_vit; nothing downloads."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from timm.models.vision_transformer import VisionTransformer

from explainers import explain_many, load_model
from explainers.engine import decompose, trace
from explainers.fitted.chili import chili_maps, head_weights, median_maps, read_probing_folder
from explainers.methods import method_info, textspan_reason
from explainers.runtime.errors import MethodUnavailableError, UserInputError

STREAM = ("maps", "stream")


def perturbed(net: torch.nn.Module) -> torch.nn.Module:
    """Random norms and biases (the default initialisation leaves them at 1 and 0, which would hide a
    mistake in the shifts), and a random head (torchvision's starts at zero)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.3 * torch.randn_like(module.weight))
                module.bias.add_(0.3 * torch.randn_like(module.bias))
            if isinstance(module, torch.nn.Linear):
                if module.weight.abs().max() == 0:
                    module.weight.normal_(0, 0.2)
                if module.bias is not None:
                    module.bias.add_(0.1 * torch.randn_like(module.bias))
    return net.eval()


def tiny_vit(**options) -> VisionTransformer:
    torch.manual_seed(0)
    config = {**dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=7), **options}
    return perturbed(VisionTransformer(**config))


def tiny_torchvision() -> torch.nn.Module:
    torch.manual_seed(0)
    return perturbed(torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=4,
                                                          hidden_dim=32, mlp_dim=64, num_classes=7))


@pytest.fixture(scope="module")
def digits_vit():
    return load_model("digits_vit")


CASES = {
    "timm class token": lambda: tiny_vit(),
    "timm LayerScale + 2 registers": lambda: tiny_vit(init_values=0.3, reg_tokens=2),
    "timm class token, mean pooling + fc_norm": lambda: tiny_vit(global_pool="avg", fc_norm=True),
    "torchvision": tiny_torchvision,
}


def test_completeness_on_digits_vit(digits_vit):
    torch.manual_seed(0)
    d = decompose(trace(digits_vit, torch.randn(4, 1, 64, 64), attention=STREAM), digits_vit)
    assert d.completeness_error() < 1e-4 and d.score_error() < 1e-4
    d.check()


@pytest.mark.parametrize("case", list(CASES))
def test_completeness_on_random_vits(case):
    model = load_model(CASES[case](), input_size=(32, 32))
    assert textspan_reason(model) is None
    torch.manual_seed(2)
    recorded = trace(model, torch.randn(3, 3, 32, 32), [0, 3, 6], attention=STREAM)
    d = decompose(recorded, model)
    assert d.completeness_error() < 1e-4, case
    assert d.score_error() < 1e-4, case
    weight, bias = model.transformer.stream.head.weight, model.transformer.stream.head.bias
    expected = recorded.logits[torch.arange(3), [0, 3, 6]] - bias[[0, 3, 6]]
    torch.testing.assert_close(d.total_scores().float(), expected, atol=1e-4, rtol=1e-4)
    assert weight.shape[1] == d.representation.shape[1]


def test_a_broken_decomposition_is_never_drawn(digits_vit):
    torch.manual_seed(0)
    d = decompose(trace(digits_vit, torch.randn(1, 1, 64, 64), attention=STREAM), digits_vit)
    d.mlp_vectors = d.mlp_vectors * 1.01  # a wrong MLP term: the representation no longer adds up
    with pytest.raises(MethodUnavailableError, match="do not add up"):
        d.check()


def test_the_method_map_is_the_sum_of_the_head_maps(digits_vit):
    image = Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    explanation = explain_many(digits_vit, image, ["textspan"], "B4")["textspan"]
    head_maps = explanation.extras["head_maps"]
    assert head_maps.shape == (4, 4, 8, 8)
    np.testing.assert_allclose(head_maps.sum(axis=(0, 1)), explanation.raw, rtol=1e-5, atol=1e-6)
    assert explanation.extras["completeness_error"] < 1e-4
    total = (explanation.extras["head_scores"].sum() + explanation.extras["mlp_scores"].sum()
             + explanation.extras["start_score"] + explanation.extras["bias_score"])
    assert total == pytest.approx(explanation.extras["logit_minus_bias"], rel=1e-4, abs=1e-5)


def test_one_layer_vit_without_mlp_equals_the_hand_computation():
    """Eq. 5 written out: m_{i,h} = LN-lin(W_O^h alpha_{cls,i} v_i), A_{i,h} = <m_{i,h}, c_j>, with the attention,
    the values and the final norm's std recomputed here from the modules, loop by loop."""
    net = tiny_vit(depth=1)
    with torch.no_grad():
        net.blocks[0].mlp.fc2.weight.zero_()
        net.blocks[0].mlp.fc2.bias.zero_()
    model = load_model(net, input_size=(32, 32))
    torch.manual_seed(3)
    x = torch.randn(1, 3, 32, 32)
    d = decompose(trace(model, x, 5, attention=STREAM), model)
    assert d.mlps.abs().max() == 0
    with torch.no_grad():
        z0 = net.norm_pre(net._pos_embed(net.patch_embed(x)))[0].double()  # (T, C)
        block, heads = net.blocks[0], 4
        h = block.norm1(z0.float()).double()
        qkv = h @ block.attn.qkv.weight.double().T + block.attn.qkv.bias.double()
        q, k, v = qkv.chunk(3, dim=-1)
        dh = q.shape[-1] // heads
        w_o, b_o = block.attn.proj.weight.double(), block.attn.proj.bias.double()
        z_final = z0.clone() + b_o
        alphas, values = [], []
        for head in range(heads):
            part = slice(head * dh, (head + 1) * dh)
            alpha = torch.softmax(q[:, part] @ k[:, part].T / math.sqrt(dh), dim=-1)
            alphas.append(alpha)
            values.append(v[:, part])
            z_final = z_final + (alpha @ v[:, part]) @ w_o[:, part].T
        cls = z_final[0]
        std = torch.sqrt(cls.var(unbiased=False) + net.norm.eps)
        gamma = net.norm.weight.double()
        c = net.head.weight.double()[5]
        for head in range(heads):
            part = slice(head * dh, (head + 1) * dh)
            for i in range(z0.shape[0]):
                u = w_o[:, part] @ (alphas[head][0, i] * values[head][i])
                m = gamma * (u - u.mean()) / std
                assert float(d.heads[0, 0, head, i]) == pytest.approx(float(m @ c), rel=1e-6, abs=1e-9)
        start = gamma * (z0[0] - z0[0].mean()) / std
        assert float(d.start[0]) == pytest.approx(float(start @ c), rel=1e-6, abs=1e-9)


def test_textspan_is_for_global_attention_transformers_only():
    cnn = load_model("digits")
    assert "not a transformer" in method_info("textspan").available(cnn, "B4")
    torch.manual_seed(0)
    deit = load_model(VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=7,
                                        global_pool="map").eval(), input_size=(32, 32))
    assert "pooling" in textspan_reason(deit)


# --- CHILI -----------------------------------------------------------------------------------------------------

def test_chili_weights_of_a_head_equal_to_the_masks_and_of_its_complement():
    masks = np.zeros((5, 8, 8), dtype=bool)
    for p in range(5):
        masks[p, :, : 2 + p] = True  # half-planes: a 3x3 median leaves them as they are
    maps = np.stack([masks, ~masks, np.random.default_rng(0).random((5, 8, 8))], axis=1)[:, None]  # (P, 1, 3, h, w)
    alpha = 5.0
    weights, overlap = head_weights(maps.astype(float), masks, alpha=alpha, kernel=3, threshold=0.5)
    assert weights.shape == (1, 3)
    assert weights[0, 0] == pytest.approx(1 - math.exp(-alpha))
    assert weights[0, 1] == 0.0 and overlap[0, 1] == 0.0
    assert np.all((weights >= 0) & (weights <= 1))


def test_chili_saliency_is_the_weighted_sum_of_filtered_head_maps():
    rng = np.random.default_rng(1)
    maps, weights = rng.normal(size=(2, 3, 4, 6, 6)), rng.random((3, 4))
    parts = chili_maps(maps, weights, kernel=3)
    expected = sum(weights[layer, h] * median_maps(maps[:, layer, h], 3) for layer in range(3) for h in range(4))
    np.testing.assert_allclose(parts["saliency"], expected)
    np.testing.assert_allclose(parts["object"] + parts["context"], median_maps(maps, 3))


def test_chili_on_digits_vit(digits_vit):
    image = Image.fromarray((np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    out = explain_many(digits_vit, image, ["chili"], "B4", method_settings={"chili": {"probes": 32}})["chili"]
    weights = out.extras["head_weights"]
    assert weights.shape == (4, 4) and np.all((weights >= 0) & (weights <= 1 - math.exp(-5.0) + 1e-12))
    assert out.raw.shape == (8, 8)


def test_chili_weights_are_kept_on_disk_for_the_next_start(digits_vit, tmp_path, monkeypatch):
    """Fitted once, written to .cache/chili/, and read back by a fresh store (a server restarted) without one
    pass over the probes (the probing is made to fail here)."""
    import explainers.fitted.chili as chili
    from explainers.fitted import store

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(store, "STORE", store.Store())
    monkeypatch.setattr(chili, "STORE", store.STORE)
    first = chili.fitted_chili(digits_vit, probes=16)
    assert len(list((tmp_path / chili.CHILI_KIND).glob("chili-*.npz"))) == 1

    def refused(*_):
        raise AssertionError("the probes were run again")

    monkeypatch.setattr(chili, "probe_head_maps", refused)
    monkeypatch.setattr(chili, "STORE", store.Store())
    again = chili.fitted_chili(digits_vit, probes=16)
    np.testing.assert_array_equal(again.weights, first.weights)
    np.testing.assert_array_equal(again.mean_iou, first.mean_iou)
    assert (again.alpha, again.kernel, again.threshold, again.probes, again.probing, again.constants) == \
           (first.alpha, first.kernel, first.threshold, first.probes, first.probing, first.constants)
    with pytest.raises(AssertionError, match="the probes were run again"):  # another setting: fitted anew
        chili.fitted_chili(digits_vit, probes=16, alpha=2.0)


def _folder(tmp_path, mask_size=(40, 30), levels=(0, 255), missing=False):
    for name in ("a", "b"):
        Image.new("RGB", (40, 30), (120, 30, 200)).save(tmp_path / f"{name}.jpg")
    (tmp_path / "masks").mkdir()
    for name in ("a",) if missing else ("a", "b"):
        mask = np.full(mask_size[::-1], levels[0], dtype=np.uint8)
        mask[:, : mask_size[0] // 2] = levels[-1]
        if len(levels) > 2:
            mask[0, 0] = levels[1]
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    return tmp_path


def test_a_mask_folder_is_read_and_a_misfit_mask_gets_a_clear_message(tmp_path, digits_vit):
    (tmp_path / "ok").mkdir()
    probing = read_probing_folder(digits_vit, _folder(tmp_path / "ok"))
    assert probing.masks.shape == (2, 8, 8) and probing.masks[:, :, :4].all() and not probing.masks[:, :, 4:].any()
    cases = {"missing": dict(missing=True), "size": dict(mask_size=(20, 30)), "binary": dict(levels=(0, 100, 255))}
    messages = {"missing": "b.jpg has no mask", "size": "must have its image's size", "binary": "not binary"}
    for case, options in cases.items():
        (tmp_path / case).mkdir()
        with pytest.raises(UserInputError, match=messages[case]):
            read_probing_folder(digits_vit, _folder(tmp_path / case, **options))


# --- the Heads page ------------------------------------------------------------------------------------------

def heads_page(model: str):
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    repo = Path(__file__).resolve().parents[1]
    script = ("import runpy\nfrom ui.sidebar import sidebar\nsidebar()\n"
              f"runpy.run_path({str(repo / 'pages/heads.py')!r}, run_name='__main__')\n")
    app = AppTest.from_string(script, default_timeout=120)
    app.query_params["model"] = model
    app.run()
    assert not app.exception, app.exception
    return app


def test_the_heads_page_shows_the_grid_and_chili_on_digits_vit():
    app = heads_page("digits_vit")
    assert not app.error, [e.value for e in app.error]
    assert not app.warning, [w.value for w in app.warning]
    assert len(app.get("plotly_chart")) == 4  # the head grid, one head's map, object and context weights
    assert any("alpha = 5" in c.value for c in app.caption)
    app.selectbox(key="heads_cell").set_value((2, 1)).run()
    assert not app.exception, app.exception
    assert any("Layer 2, head 1" in str(chart.proto.spec) for chart in app.get("plotly_chart"))


def test_the_heads_page_on_a_cnn_says_it_needs_a_transformer_and_offers_digits_vit():
    app = heads_page("digits")
    assert any("needs a Vision Transformer" in i.value for i in app.info)
    app.button(key="heads_switch").click().run()
    assert not app.exception, app.exception
    assert app.session_state["model"] == "digits_vit"
