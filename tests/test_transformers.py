"""Transformers (issue 20): token blocks on their grid, attention exposed without changing the model, and
attention rollout, Chefer and LeGrad against plain re-implementations of the papers' equations that run the
model's own modules step by step (not Protoscope's helpers). Random weights; nothing downloads."""
from __future__ import annotations

import json
import threading

import pytest
import timm
import torch
import torchvision
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

from explainers import explain_many, load_model
from explainers.engine.trace import trace
from explainers.methods.attention import chefer, legrad, rollout
from explainers.models.builtin.digits_vit import DIGITS_VIT_CARD, DIGITS_VIT_WEIGHTS
from explainers.runtime.attention import exposed_attention
from explainers.runtime.errors import MethodUnavailableError

ATTENTION = ("maps", "gradients", "layers")


def tiny_vit(**options) -> VisionTransformer:
    torch.manual_seed(0)
    config = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=7, **options)
    return VisionTransformer(**config).eval()


def tiny_deit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32, num_classes=7,
                             depth=4).eval()


@pytest.fixture(scope="module")
def timm_vit():
    return load_model(tiny_vit(), input_size=(32, 32))


@pytest.fixture(scope="module")
def tv_vit():
    torch.manual_seed(0)
    return load_model(torchvision.models.vit_b_16(weights=None).eval(), input_size=(224, 224))


# --- plain re-implementations, written from the papers with the model's own modules ---------------------------

def timm_reference(net: VisionTransformer, x: torch.Tensor):
    """timm ViT forward, attention written out: A = softmax(q k^T * scale). Returns logits, A^l, Z^l, and the
    function giving LeGrad's layer prediction from Z^l."""
    z = net.norm_pre(net.patch_drop(net._pos_embed(net.patch_embed(x))))
    maps, outputs = [], []
    for block in net.blocks:
        attn = block.attn
        h = block.norm1(z)
        n, t, c = h.shape
        qkv = attn.qkv(h).reshape(n, t, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = attn.q_norm(qkv[0]), attn.k_norm(qkv[1]), qkv[2]
        a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(dim=-1)
        maps.append(a)
        o = attn.proj(attn.norm((a @ v).transpose(1, 2).reshape(n, t, c)))
        z = z + block.ls1(o)
        z = z + block.ls2(block.mlp(block.norm2(z)))
        outputs.append(z)
    logits = net.forward_head(net.norm(z))

    def layer_prediction(tokens):
        pooled = net.norm(tokens).mean(dim=1) if net.global_pool == "token" else net.norm(tokens).mean(dim=1)
        if getattr(net, "head_dist", None) is not None:
            return (net.head(pooled) + net.head_dist(pooled)) / 2
        return net.head(net.fc_norm(pooled))

    return logits, maps, outputs, layer_prediction


def tv_reference(net: torchvision.models.VisionTransformer, x: torch.Tensor):
    """torchvision ViT forward, nn.MultiheadAttention written out (Vaswani et al. eq. 1)."""
    z = net._process_input(x)
    z = torch.cat([net.class_token.expand(z.shape[0], -1, -1), z], dim=1) + net.encoder.pos_embedding
    maps, outputs = [], []
    for layer in net.encoder.layers:
        mha = layer.self_attention
        h = layer.ln_1(z)
        n, t, c = h.shape
        heads = mha.num_heads
        q, k, v = (torch.nn.functional.linear(h, w, b).reshape(n, t, heads, c // heads).transpose(1, 2)
                   for w, b in zip(mha.in_proj_weight.chunk(3), mha.in_proj_bias.chunk(3)))
        a = (q @ k.transpose(-2, -1) / (c // heads) ** 0.5).softmax(dim=-1)
        maps.append(a)
        z = z + mha.out_proj((a @ v).transpose(1, 2).reshape(n, t, c))
        z = z + layer.mlp(layer.ln_2(z))
        outputs.append(z)
    logits = net.heads(net.encoder.ln(z)[:, 0])
    return logits, maps, outputs, lambda tokens: net.heads(net.encoder.ln(tokens).mean(dim=1))


def reference_maps(logits, maps, outputs, layer_prediction, target, rows, prefix, grid):
    """Rollout (Abnar & Zuidema 2020), Chefer et al. 2021 eq. 5-6 and LeGrad (Bousselham et al. eq. 4-8)."""
    t = maps[0].shape[-1]
    eye = torch.eye(t)
    joint = eye
    for a in maps:
        mixed = 0.5 * a[0].mean(dim=0) + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        assert torch.allclose(mixed.sum(dim=-1), torch.ones(t), atol=1e-5)  # row-stochastic
        joint = mixed @ joint
        assert torch.allclose(joint.sum(dim=-1), torch.ones(t), atol=1e-4)  # products stay row-stochastic
    grads = torch.autograd.grad(logits[0, target], maps, retain_graph=True)
    relevance = eye
    for a, g in zip(maps, grads):
        relevance = relevance + (g[0] * a[0]).clamp_min(0).mean(dim=0) @ relevance
    legrad_tokens = torch.zeros(t)
    for a, z in zip(maps, outputs):
        (g,) = torch.autograd.grad(layer_prediction(z)[0, target], a, retain_graph=True)
        legrad_tokens += g[0].clamp_min(0).mean(dim=(0, 1)) / len(maps)

    def read(matrix):
        row = matrix[rows].mean(dim=0) if rows is not None else matrix[prefix:].mean(dim=0)
        return row[prefix:].reshape(grid)

    return read(joint), read(relevance), legrad_tokens[prefix:].reshape(grid)


def check_against_reference(model, reference, x, rows):
    logits, maps, outputs, layer_prediction = reference(model.net, x)
    target = int(logits[0].argmax())
    info = model.transformer
    expected = reference_maps(logits, maps, outputs, layer_prediction, target, rows, info.prefix, info.grid)
    shared = trace(model, x, target, gradients=True, blocks=["B4"], attention=ATTENTION)
    assert torch.allclose(shared.logits, logits.detach(), atol=1e-4)
    got = (rollout(shared, "B4", model)[0], chefer(shared, "B4", model)[0], legrad(shared, "B4", model)[0])
    for name, mine, theirs in zip(("rollout", "chefer", "legrad"), got, expected):
        scale = theirs.abs().max().clamp_min(1e-12)
        assert torch.allclose(mine / scale, theirs.detach() / scale, atol=1e-4), name
    assert shared.attention.layer_backwards == len(maps)


def test_methods_equal_the_papers_on_a_timm_vit(timm_vit):
    torch.manual_seed(1)
    check_against_reference(timm_vit, timm_reference, torch.randn(1, 3, 32, 32), rows=[0])


def test_methods_equal_the_papers_on_a_gap_vit_without_class_token():
    model = load_model(tiny_vit(class_token=False, global_pool="avg", fc_norm=False), input_size=(32, 32))
    assert model.gap_head and model.transformer.readout is None
    torch.manual_seed(2)
    check_against_reference(model, timm_reference, torch.randn(1, 3, 32, 32), rows=None)


def test_methods_equal_the_papers_on_torchvision_vit_b_16(tv_vit):
    torch.manual_seed(3)
    check_against_reference(tv_vit, tv_reference, torch.randn(1, 3, 224, 224), rows=[0])


@pytest.mark.parametrize("make", [tiny_vit, tiny_deit, "tv"])
def test_exposed_attention_leaves_logits_and_modules_as_they_were(make, tv_vit):
    net = tv_vit.net if make == "tv" else make()
    size = 224 if make == "tv" else 32
    x = torch.randn(2, 3, size, size)
    hooks_before = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in net.named_modules()}
    with torch.no_grad():
        plain = net(x)
        with exposed_attention() as maps:
            exposed = net(x)
        again = net(x)
    assert torch.allclose(plain, exposed, atol=1e-5)
    assert torch.equal(plain, again)
    depth = len(net.encoder.layers) if make == "tv" else len(net.blocks)
    assert len(maps) == depth
    assert all(torch.allclose(m.weights.sum(dim=-1), torch.ones(()), atol=1e-5) for m in maps)
    assert torch._C._len_torch_function_stack() == 0  # the switch is gone
    assert hooks_before == {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in net.named_modules()}


def test_two_threads_at_once_get_their_own_maps():
    net = tiny_vit()
    inputs = [torch.randn(1, 3, 32, 32) for _ in range(2)]
    with torch.no_grad():
        alone = []
        for x in inputs:
            with exposed_attention() as maps:
                net(x)
            alone.append([m.weights for m in maps])
    barrier, results = threading.Barrier(2), {}

    def run(index):
        with torch.no_grad(), exposed_attention() as maps:
            for _ in range(5):
                barrier.wait(timeout=30) if _ == 0 else None
                maps.clear()
                net(inputs[index])
        results[index] = [m.weights for m in maps]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index in range(2):
        assert len(results[index]) == len(net.blocks)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[index], alone[index]))


def test_cam_family_on_token_grids_equals_gradients_of_the_patch_tokens(timm_vit):
    torch.manual_seed(4)
    x = torch.randn(1, 3, 32, 32)
    logits, _, outputs, _ = timm_reference(timm_vit.net, x)
    target = int(logits[0].argmax())
    for block, index in (("B2", 1),):  # blocks.1 of four
        tokens = outputs[index]
        (g,) = torch.autograd.grad(logits[0, target], tokens, retain_graph=True)
        grid = lambda t: t[0, 1:].T.reshape(1, -1, 4, 4)  # noqa: E731 - class token apart, 4x4 patches
        weights = grid(g).mean(dim=(2, 3))
        expected = torch.einsum("nk,nkhw->nhw", weights, grid(tokens)).clamp_min(0)[0]
        got = explain_many(timm_vit, x[0], ["gradcam"], block=block, target=target)["gradcam"].raw
        assert torch.allclose(torch.from_numpy(got), expected.detach(), atol=1e-5)
    maps = explain_many(timm_vit, x[0], ["gradcam", "gradcampp"], block="B4")
    assert maps["gradcam"].raw.shape == (4, 4)


def test_swin_gets_the_cam_family_and_a_reason_for_no_attention():
    torch.manual_seed(0)
    net = SwinTransformer(img_size=64, patch_size=4, window_size=4, embed_dim=16, depths=(1, 1, 1, 1),
                          num_heads=(1, 1, 2, 2), num_classes=5).eval()
    model = load_model(net, input_size=(64, 64))
    assert model.family == "swin" and model.gap_head  # a per-token norm, then the mean of the tokens
    assert [model.block_shapes[b][1] for b in model.blocks] == [16, 8, 4, 2]
    maps = explain_many(model, torch.randn(3, 64, 64), ["gradcam", "cam"], block="B4")
    assert maps["cam"].raw.shape == (2, 2)
    with pytest.raises(MethodUnavailableError, match="windows"):
        explain_many(model, torch.randn(3, 64, 64), ["rollout"], block="B4")


@pytest.mark.skipif(not DIGITS_VIT_WEIGHTS.exists(), reason="digits_vit weights not trained yet")
def test_digits_vit_is_accurate_and_theorem_1_holds_on_tokens():
    from explainers.cli import accuracy, digits_tensors

    model = load_model("digits_vit")
    card = json.loads(DIGITS_VIT_CARD.read_text())
    assert card["test_accuracy"] >= 0.97
    images, labels = digits_tensors("test")
    assert accuracy(model.net, images, labels) == pytest.approx(card["test_accuracy"], abs=1e-3)
    assert DIGITS_VIT_WEIGHTS.stat().st_size < 5e6
    shared = trace(model, images[:16], gradients=True)
    h = shared.activations["B4"]  # (N, C, 8, 8): the per-token outputs of the final norm
    c, b = model.classifier.weight, model.classifier.bias
    rebuilt = torch.einsum("nkhw,jk->nj", h, c) / (h.shape[2] * h.shape[3]) + b  # Theorem 1: mean_r h_r . c_j + b
    assert torch.allclose(rebuilt, shared.logits, atol=1e-4)
    assert model.gap_head and model.family == "timm_vit"
    maps = explain_many(model, images[0], ["gradcam", "legrad", "rollout", "chefer"], block="B2")
    assert all(e.raw.shape == (8, 8) for e in maps.values())


def test_the_saliency_page_shows_digits_vit_with_attention_methods():
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    from explainers import method_info

    repo = Path(__file__).resolve().parents[1]
    script = ("import runpy\nfrom ui.sidebar import sidebar\nsidebar()\n"
              f"runpy.run_path({str(repo / 'pages/saliency.py')!r}, run_name='__main__')\n")
    app = AppTest.from_string(script, default_timeout=120)
    app.query_params["model"] = "digits_vit"
    app.query_params["methods"] = "gradcam,legrad,rollout,chefer"
    app.run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    titles = [m.value.split("**")[1] for m in app.markdown if m.value.startswith("**")]
    for name in ("gradcam", "legrad", "rollout", "chefer"):
        assert method_info(name).label in titles
