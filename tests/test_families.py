"""Family adapters (explainers/families.py): for every CNN family, the blocks are the stage outputs,
Grad-CAM at B3 equals a plain hook's, Ablation-CAM's tail equals brute force, LRP conserves or says
why not; the generic fallback; timm models by name; refusing a module that runs twice.

Random weights (nothing is downloaded), with batch-norm statistics and affine parameters drawn at
random as a stand-in for trained ones (a freshly initialised EfficientNet has logits near 1e-14,
which would make every comparison trivial). Inputs 64x64: every family still has four stages.
"""
from __future__ import annotations

import copy
import functools
import math
import socket
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import page_test
from torch import nn
from torchvision import models as tv

from explainers import MethodUnavailableError, ModelUnavailableError, explain, load_model, trace
from explainers.methods import ablation_cam as P
from explainers.methods import lrp as L
from explainers.models import families as FAM
from explainers.models import from_module, timm_model
from explainers.models.loading import _rebuild_with_classes
from tests.test_app import panel_labels

SIZE = (64, 64)


def trained_like(net: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return net.eval()


def small_densenet() -> nn.Module:
    return tv.DenseNet(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16, bn_size=2, num_classes=10)


def small_resnext() -> nn.Module:
    from torchvision.models.resnet import Bottleneck

    return tv.ResNet(Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8, num_classes=10)


# family id -> (builder, expected family, hand-written B1..B4, whether LRP covers it)
TORCHVISION = {
    "resnet18": (lambda: tv.resnet18(), "resnet", ["layer1", "layer2", "layer3", "layer4"], True),
    "resnext": (small_resnext, "resnet", ["layer1", "layer2", "layer3", "layer4"], True),
    "vgg11_bn": (lambda: tv.vgg11_bn(), "vgg", ["features.7", "features.14", "features.21", "features.28"], True),
    "densenet": (small_densenet, "densenet", [f"features.denseblock{i}" for i in range(1, 5)], True),
    "efficientnet_b0": (lambda: tv.efficientnet_b0(), "efficientnet",
                        ["features.2", "features.3", "features.5", "features.8"], False),
    "efficientnet_v2_s": (lambda: tv.efficientnet_v2_s(), "efficientnet",
                          ["features.2", "features.3", "features.5", "features.7"], False),
    "mobilenet_v2": (lambda: tv.mobilenet_v2(), "mobilenet",
                     ["features.3", "features.6", "features.13", "features.18"], False),
    "mobilenet_v3_small": (lambda: tv.mobilenet_v3_small(), "mobilenet",
                           ["features.1", "features.3", "features.8", "features.12"], False),
    "convnext_tiny": (lambda: tv.convnext_tiny(), "convnext",
                      ["features.1", "features.3", "features.5", "features.7"], False),
    "regnet_y_400mf": (lambda: tv.regnet_y_400mf(), "regnet",
                       [f"trunk_output.block{i}" for i in range(1, 5)], False),
}
TIMM = {
    "timm:resnet18": ("resnet", ["layer1", "layer2", "layer3", "layer4"], True),
    "timm:convnext_atto": ("timm", ["stages.0", "stages.1", "stages.2", "stages.3"], False),
    "timm:tf_efficientnet_lite0": ("efficientnet", ["blocks.1", "blocks.2", "blocks.4", "bn2"], True),
}
FAMILY_CASES = ["digits", *TORCHVISION, *TIMM]


@functools.lru_cache(maxsize=None)
def built(case: str):
    """(ModelSpec, expected family, expected block paths, LRP covered), built once per session."""
    torch.manual_seed(0)
    if case == "digits":
        return load_model("digits"), "digits", ["layer1", "layer2", "layer3", "layer4"], True
    if case in TORCHVISION:
        make, family, paths, covered = TORCHVISION[case]
        return load_model(trained_like(make(), 1), input_size=SIZE), family, paths, covered
    family, paths, covered = TIMM[case]
    spec = timm_model(case.split(":", 1)[1], weights=None, input_size=SIZE)
    trained_like(spec.net, 1)  # before anything is computed from the weights (the inference copy, ...)
    return spec, family, paths, covered


def inputs_for(model, count: int = 1, seed: int = 3) -> torch.Tensor:
    if model.name == "digits":
        from helpers import digits_test_batch

        return digits_test_batch(count)[0]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, len(model.transform.mean), *model.input_size, generator=generator)


def private_copy(net: nn.Module) -> nn.Module:
    """A copy of the network without any hook (the library's dispatchers included): the independent side."""
    twin = copy.deepcopy(net).eval()
    for module in twin.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
    return twin


def close(a, b, tol: float = 1e-4) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-12)
    return bool(np.allclose(a, b, rtol=0, atol=tol * scale))


# --- blocks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", FAMILY_CASES)
def test_blocks_are_the_stage_outputs_once_each_at_decreasing_resolutions(case):
    model, family, paths, _ = built(case)
    assert model.family == family
    assert model.block_paths == dict(zip(["B1", "B2", "B3", "B4"], paths)), "the hand-written stage outputs"
    sides = [model.block_shapes[b][1:] for b in model.blocks]
    assert all(h2 < h1 and w2 < w1 for (h1, w1), (h2, w2) in zip(sides, sides[1:])), sides

    twin = private_copy(model.net)
    calls = {path: 0 for path in paths}
    outputs = {}

    def counter(path):
        def count(_module, _inputs, output):
            calls[path] += 1
            outputs[path] = output.detach().clone()
        return count

    handles = [twin.get_submodule(path).register_forward_hook(counter(path)) for path in paths]
    x = inputs_for(model)
    with torch.no_grad():
        twin(x)
    for handle in handles:
        handle.remove()
    assert calls == {path: 1 for path in paths}, "each block module runs exactly once per forward"
    recorded = trace(model, x)  # on the compute thread: another OpenMP team may sum in another order
    for block, path in zip(model.blocks, paths):
        reference = outputs[path]
        scale = float(reference.abs().max().clamp_min(1))
        assert torch.allclose(recorded.activations[block], reference, rtol=1e-4, atol=1e-5 * scale), block
        assert recorded.activations[block].shape[1:] == model.block_shapes[block]


@pytest.mark.parametrize("case", [c for c in TORCHVISION if c not in ("vgg11_bn", "densenet")]
                         + ["timm:resnet18", "timm:convnext_atto", "timm:tf_efficientnet_lite0"])
def test_the_generic_graph_rule_finds_the_same_stage_outputs(case):
    """Without the adapter's knowledge, the rule for unknown modules (stage outputs in the traced graph)
    finds the adapter's blocks: never the expansion convolution that opens the next stage, never a layer
    inside a residual block. (VGG's adapter names the max pools and DenseNet's the dense blocks, where the
    graph rule would take the last layer at each resolution.)"""
    model, _, paths, _ = built(case)
    observed = FAM.probe(model.net, 3, SIZE)
    assert FAM.graph_blocks(model.net, observed) == paths


# --- Grad-CAM and Ablation-CAM at B3 -------------------------------------------------------------

def plain_gradcam(net: nn.Module, path: str, x: torch.Tensor, target: int) -> torch.Tensor:
    """Grad-CAM by hand: a plain forward hook on the module of a private copy, autograd, channel means."""
    twin = private_copy(net)
    store = {}
    handle = twin.get_submodule(path).register_forward_hook(lambda _m, _i, output: store.__setitem__("a", output))
    try:
        logits = twin(x)
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(logits[0, target], store["a"])
    weights = grad.mean(dim=(2, 3), keepdim=True)
    return F.relu((weights * store["a"]).sum(dim=1))[0].detach()


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_gradcam_at_b3_equals_a_plain_hook_on_the_same_module(case):
    model, _, paths, _ = built(case)
    x = inputs_for(model)
    logits = model.net(x)[0].detach()
    saw_positive = False
    for target in logits.argsort(descending=True)[:3].tolist():
        ours = explain(model, x[0], "gradcam", block="B3", target=target)
        expected = plain_gradcam(model.net, paths[2], x, target)
        assert close(ours.raw, expected.numpy(), 1e-4), (case, target)
        saw_positive |= bool(expected.max() > 0)
    assert saw_positive, "every map was zero: the comparison proved nothing"


@torch.no_grad()
def brute_force_drops(net: nn.Module, path: str, x: torch.Tensor, target: int, channels: int) -> torch.Tensor:
    """S_c - S_c,k by the definition: the whole network (a private copy) with channel k of the block's
    output zeroed by a plain hook, row k of a batch zeroing channel k."""
    twin = private_copy(net)
    score = twin(x)[0, target]
    drops = torch.zeros(channels)
    for start in range(0, channels, 128):
        rows = list(range(start, min(start + 128, channels)))

        def zero(_m, _i, output, rows=rows):
            output = output.clone()
            output[torch.arange(len(rows)), rows] = 0
            return output

        handle = twin.get_submodule(path).register_forward_hook(zero)
        try:
            drops[rows] = score - twin(x.expand(len(rows), *x.shape[1:]))[:, target]
        finally:
            handle.remove()
    return drops


@pytest.mark.parametrize("case", FAMILY_CASES)
def test_ablation_at_b3_runs_only_the_tail_and_equals_brute_force(case, monkeypatch):
    model, _, paths, _ = built(case)
    x = inputs_for(model)
    recorded = trace(model, x, blocks=["B3"])
    assert P.tail_after(model, "B3") is not None, "every family with an adapter has a tail after B3"

    def no_fallback(*_args, **_kwargs):
        raise AssertionError("the tail did not reproduce the logits: the whole network ran instead")

    monkeypatch.setattr(P, "substituted_forward", no_fallback)
    drops, scores, _ = P.ablation_drops(recorded, "B3", model)
    target = int(recorded.targets[0])
    expected = brute_force_drops(model.net, paths[2], x, target, model.block_shapes["B3"][0])
    scale = max(float(expected.abs().max()), abs(float(scores[0])))
    assert torch.allclose(drops[0], expected, rtol=0, atol=1e-4 * scale), case
    assert float(expected.abs().max()) > 0


class InsideUnits(nn.Module):
    """Blocks inside residual units, as timm's Xception features are (``blocks.11.stack.act3``): a unit is
    conv_b(act(conv_a(x))) + skip(x) with conv_b downsampling, and B1..B3 are the ``act`` of three units,
    so each unit's input crosses the cut at its block through the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU())
        self.units = nn.ModuleList(InsideUnits.Unit(a, b) for a, b in ((8, 16), (16, 32), (32, 48)))
        self.act = nn.ReLU()
        self.head = nn.Linear(48, 5)

    class Unit(nn.Module):
        def __init__(self, a: int, b: int) -> None:
            super().__init__()
            self.conv_a, self.act, self.conv_b = nn.Conv2d(a, a, 3, padding=1), nn.ReLU(), nn.Conv2d(a, b, 3, 2, 1)
            self.skip = nn.Conv2d(a, b, 1, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv_b(self.act(self.conv_a(x))) + self.skip(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for unit in self.units:
            x = unit(x)
        return self.head(self.act(x).mean(dim=(2, 3)))


def test_ablation_inside_a_residual_unit_runs_the_tail_with_the_skip_computed_once(monkeypatch):
    torch.manual_seed(5)
    model = from_module(InsideUnits().eval(), "inside", input_size=(64, 64),
                        blocks=["units.0.act", "units.1.act", "units.2.act", "act"])
    x = inputs_for(model)
    calls = []
    model.inference_net.stem.register_forward_hook(lambda *_: calls.append(1))
    monkeypatch.setattr(P, "substituted_forward", lambda *_a, **_k: pytest.fail("the whole network ran instead"))
    for block, path in list(model.block_paths.items())[:3]:
        assert P.tail_after(model, block) is not None
        recorded = trace(model, x, blocks=[block])
        calls.clear()
        drops, scores, _ = P.ablation_drops(recorded, block, model, batch_size=8)
        assert len(calls) == 1, "the values crossing the cut are made once per image, not per batch of rows"
        target = int(recorded.targets[0])
        expected = brute_force_drops(model.net, path, x, target, model.block_shapes[block][0])
        scale = max(float(expected.abs().max()), abs(float(scores[0])))
        assert torch.allclose(drops[0], expected, rtol=0, atol=1e-4 * scale) and float(expected.abs().max()) > 0


# --- LRP -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", FAMILY_CASES)
def test_lrp_conserves_or_says_why_not(case):
    model, family, _, covered = built(case)
    x = inputs_for(model)[0]
    for method in ("lrp_epsilon", "lrp_gamma"):
        if not covered:
            with pytest.raises(MethodUnavailableError, match=f"LRP is not available .*{family} family") as caught:
                explain(model, x, method, block="B3")
            assert "would not be conserved" in str(caught.value)
            continue
        result = explain(model, x, method, block="B3")
        total, absorbed, logit = (result.extras[k] for k in ("relevance_total", "relevance_absorbed", "logit"))
        assert np.isfinite(result.raw).all() and np.abs(result.raw).max() > 0
        assert abs(total + absorbed - logit) <= L.LEAK * (abs(total) + abs(absorbed) + abs(logit)), (method, case)


@pytest.mark.parametrize("case", ["timm:resnet18", "timm:tf_efficientnet_lite0"])
def test_lrp_forced_through_residual_sums_without_canonizers_is_caught_by_the_conservation_check(case):
    """The static refusal is not the only guard: LRP run anyway through residual sums written in forward
    (timm's ResNet and Lite0 without their canonizers) makes relevance outside the rules, and the check on
    every call says so."""
    model = built(case)[0]
    x = inputs_for(model, 2)
    targets = model.net(x).argmax(1)
    for rule in ("epsilon", "gamma"):
        result = L.relevance(model, x, targets, rule=rule, canonize=False)
        problems = L.conservation(result, targets)
        assert all(p and ("outside the rules" in p or "blew up" in p) for p in problems), problems


def test_lite0_canonizers_keep_the_function_exactly_and_make_its_residual_sums_modules():
    """The merged batch norms of a tf_ model (eps = 1e-3) are exact identities, so the canonized network
    is the model (zennit's own merge would be off by 2% on Lite0); each block with a skip adds through
    zennit's Sum module."""
    model = built("timm:tf_efficientnet_lite0")[0]
    skips = [m for m in model.net.modules() if getattr(m, "has_skip", False)]
    assert canonized_sums(model, tolerance=1e-5) == len(skips) > 0


def canonized_sums(model, tolerance: float) -> int:
    """Apply the family's canonizers to a copy of ``model.net``: its logits must equal the model's to
    ``tolerance`` while canonized and exactly once the canonizers are removed. Returns its Sum modules."""
    from zennit.layer import Sum

    x = inputs_for(model, 2)
    twin = L.structural_copy(model.net)
    applied = [c for canonizer in L.canonizers_for(model) for c in canonizer.apply(twin)]
    try:
        sums = len([m for m in twin.modules() if isinstance(m, Sum)])
        with torch.no_grad():
            torch.testing.assert_close(twin(x), model.net(x), rtol=tolerance, atol=tolerance)
    finally:
        for canonizer in applied:
            canonizer.remove()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model.net(x), rtol=0, atol=0)  # undone
    return sums


@pytest.mark.parametrize("name", ["resnet18", "resnet50d"])  # basic blocks; bottlenecks, deep stem, pooled shortcut
def test_timm_resnet_canonizers_keep_the_function_and_make_every_shortcut_sum_a_module(name):
    """timm's blocks add their shortcut in forward (``x += shortcut``); canonized, each block adds through
    zennit's Sum module, the network computes the same logits, and removing the canonizers restores it."""
    torch.manual_seed(0)
    model = load_model(trained_like(timm_model(name, weights=None, input_size=SIZE).net, 2), input_size=SIZE)
    assert model.family == "resnet" and FAM.family_of(model).lrp_gap(model.net) is None
    blocks = [b for i in range(1, 5) for b in getattr(model.net, f"layer{i}").children()]
    assert canonized_sums(model, tolerance=1e-4) == len(blocks) > 0
    assert "SEModule" in FAM.family_of(load_model("timm:seresnet18", weights=None)).lrp_gap(
        load_model("timm:seresnet18", weights=None).net), "a gated block is refused with the reason"


def test_conservation_check_fails_a_blow_up_and_non_finite_values_and_passes_a_conserving_result():
    logits = torch.tensor([[10.0, -2.0, 1.0]])
    target = torch.tensor([0])
    good = L.Relevance(pixels=torch.full((1, 3, 2, 2), 0.5), block=None, logits=logits,
                       absorbed=torch.tensor([4.0], dtype=torch.float64))
    assert L.conservation(good, target) == [None]
    blown = L.Relevance(pixels=torch.full((1, 3, 2, 2), 2e12 / 12), block=None, logits=logits,
                        absorbed=torch.tensor([10.0 - 2e12], dtype=torch.float64))  # Lite0's 2e12 for a logit ~10
    assert "blew up" in L.conservation(blown, target)[0]
    nan = L.Relevance(pixels=torch.full((1, 3, 2, 2), float("nan")), block=None, logits=logits,
                      absorbed=torch.tensor([0.0], dtype=torch.float64))
    assert "not finite" in L.conservation(nan, target)[0]
    doubled = L.Relevance(pixels=torch.full((1, 3, 2, 2), 1.0), block=None, logits=logits,
                          absorbed=torch.tensor([4.0], dtype=torch.float64))  # 12 + 4 != 10: counted twice
    assert "outside the rules" in L.conservation(doubled, target)[0]


# --- generic fallback and a module used twice ---------------------------------------------------

class StaticPadConv(nn.Conv2d):
    """efficientnet_pytorch's Conv2dStaticSamePadding: a padding module (its output larger than the
    feature map) before an unpadded convolution."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride=stride, groups=groups, bias=False)
        pad = max(kernel - stride, 0)
        self.static_padding = nn.ZeroPad2d((pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.static_padding(x))


class MBBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        mid = cin * 4
        self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid)
        self._depthwise_conv, self._bn1 = StaticPadConv(mid, mid, 3, stride, groups=mid), nn.BatchNorm2d(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x)))
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class LiteLike(nn.Module):
    """The efficientnet_pytorch layout of the issue: static 'same' padding, a flat list of blocks, and ONE
    top-level ReLU6 applied after the stem and again after the head."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem, self._bn0 = StaticPadConv(3, 16, 3, 2), nn.BatchNorm2d(16)
        shape = [(16, 16, 1), (16, 24, 2), (24, 24, 1), (24, 40, 2), (40, 80, 2), (80, 80, 1), (80, 112, 2)]
        self._blocks = nn.ModuleList(MBBlock(*s) for s in shape)
        self._conv_head, self._bn1 = nn.Conv2d(112, 256, 1, bias=False), nn.BatchNorm2d(256)
        self._relu = nn.ReLU6()
        self._avg_pooling, self._dropout, self._fc = nn.AdaptiveAvgPool2d(1), nn.Dropout(0.2), nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._relu(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(self._avg_pooling(x).flatten(1)))


def test_generic_fallback_takes_stage_outputs_never_a_padding_or_a_shared_activation():
    torch.manual_seed(4)
    model = load_model(trained_like(LiteLike(), 5), input_size=SIZE)
    assert model.family == "generic"
    # 64 -> stem 32 -> blocks 32, 16, 16, 8, 4, 4, 2 -> head 2: the last block of each resolution, and at 2x2
    # the head's batch norm, since the ReLU6 after it is the shared one.
    assert model.block_paths == {"B1": "_blocks.2", "B2": "_blocks.3", "B3": "_blocks.5", "B4": "_bn1"}
    assert not any("padding" in p or p == "_relu" for p in model.block_paths.values())
    x = inputs_for(model)
    ours = explain(model, x[0], "gradcam", block="B3", target=2)
    assert close(ours.raw, plain_gradcam(model.net, "_blocks.5", x, 2).numpy())
    recorded = trace(model, x, blocks=["B3"])
    drops, _, _ = P.ablation_drops(recorded, "B3", model)
    expected = brute_force_drops(model.net, "_blocks.5", x, int(recorded.targets[0]), model.block_shapes["B3"][0])
    assert torch.allclose(drops[0], expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    with pytest.raises(MethodUnavailableError, match="residual sum"):
        explain(model, x[0], "lrp_epsilon", block="B3")


def test_a_module_the_network_calls_twice_is_refused_as_a_block_with_the_reason():
    net = trained_like(LiteLike(), 6)
    with pytest.raises(FAM.BlockError) as caught:
        from_module(net, "lite-like", input_size=SIZE, blocks=["_blocks.2", "_blocks.3", "_blocks.5", "_relu"])
    message = str(caught.value)
    assert "_relu (ReLU6) cannot be block B4" in message and "calls it 2 times per forward pass" in message
    assert "depends on which call it keeps" in message
    with pytest.raises(FAM.BlockError, match="not a feature map"):
        from_module(net, "lite-like", input_size=SIZE, blocks=["_blocks.2", "_blocks.3", "_blocks.5", "_fc"])
    with pytest.raises(FAM.BlockError, match="decreasing resolutions"):
        from_module(net, "lite-like", input_size=SIZE, blocks=["_blocks.3", "_blocks.2"])
    chosen = from_module(net, "lite-like", input_size=SIZE, blocks={"B1": "_blocks.1", "B2": "_blocks.4"})
    assert chosen.block_paths == {"B1": "_blocks.1", "B2": "_blocks.4"}


class Branchy(nn.Module):
    """A forward with data-dependent control flow, which torch.fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if float(x.detach().mean()) > -1e9:  # data-dependent: symbolic tracing fails here
            x = x.mean(dim=(2, 3))
        return self.head(x)


def test_an_untraceable_forward_falls_back_to_the_children_and_still_works():
    torch.manual_seed(7)
    model = load_model(Branchy().eval(), input_size=(32, 32))
    assert model.block_paths == {"B1": "features.1", "B2": "features.4", "B3": "features.7"}
    x = inputs_for(model)
    ours = explain(model, x[0], "gradcam", block="B2", target=1)
    assert close(ours.raw, plain_gradcam(model.net, "features.4", x, 1).numpy())
    assert P.tail_after(model, "B2") is None  # no traced graph: Ablation-CAM substitutes the block's output
    with pytest.raises(MethodUnavailableError, match="could not be traced"):
        explain(model, x[0], "lrp_epsilon", block="B2")


# --- timm by name, weights only from the cache -----------------------------------------------------

@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """Hugging Face's and torch's caches pointed at empty folders, and no network at all."""
    def no_network(*_args, **_kwargs):
        raise AssertionError("a test tried to open a network connection")

    hf = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch" / "hub"))
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    return tmp_path


def test_timm_model_by_name_with_random_weights_and_its_pretrained_preprocessing(empty_caches):
    model = load_model("timm:convnext_atto", weights=None)
    assert model.name == "timm:convnext_atto" and model.family == "timm" and model.num_classes == 1000
    assert model.block_paths == {"B1": "stages.0", "B2": "stages.1", "B3": "stages.2", "B4": "stages.3"}
    config = model.net.pretrained_cfg
    assert model.input_size == tuple(config["input_size"][1:]) == (224, 224)
    assert model.transform.mean == tuple(config["mean"]) and model.transform.std == tuple(config["std"])
    assert model.transform.resize == math.floor(224 / config["crop_pct"])  # resize, then the centre crop (timm's floor)
    assert model.transform.interpolation == config["interpolation"]
    assert model.classes[285] == "Egyptian cat"
    lite = timm_model("tf_efficientnet_lite0", weights=None, input_size=SIZE)
    assert lite.transform.mean == (0.5, 0.5, 0.5), "Lite0's pretrained config normalises to [-1, 1]"
    with pytest.raises(ValueError, match="unknown timm model 'convnext_tinyy'"):
        load_model("timm:convnext_tinyy", weights=None)


def test_timm_pretrained_weights_offline_and_uncached_give_a_clear_error(empty_caches):
    with pytest.raises(ModelUnavailableError) as caught:
        load_model("timm:convnext_tiny")
    message = str(caught.value)
    assert "convnext_tiny" in message and str(empty_caches / "hf" / "hub") in message
    assert "never downloads" in message and "Random weights" in message and "checkpoint" in message
    assert not any(p.is_file() for p in empty_caches.rglob("*")), "nothing may have been written to the caches"


def test_timm_pretrained_weights_are_read_from_the_local_cache(empty_caches):
    """A Hugging Face cache laid out as the hub leaves it: the weights load from it, offline."""
    import timm
    from safetensors.torch import save_file
    from timm.models import get_pretrained_cfg

    torch.manual_seed(9)
    source = timm.create_model("resnet18", pretrained=False).eval()
    repo = get_pretrained_cfg("resnet18").hf_hub_id
    folder = empty_caches / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = folder / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("0" * 40)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    model = load_model("timm:resnet18")
    assert str(snapshot / "model.safetensors") in model.card["weights"]
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in source.state_dict().items())


# --- rebuilding for another class count -----------------------------------------------------------

@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "timm:resnet18"])
def test_a_checkpoint_with_another_class_count_is_rebuilt_by_the_family(arch, tmp_path):
    rebuilt = _rebuild_with_classes(arch, 7)
    assert rebuilt.num_classes == 7 and len(rebuilt.classes) == 7
    base = load_model(arch, weights=None)
    assert rebuilt.family == base.family and rebuilt.block_paths == base.block_paths
    assert rebuilt.classifier.in_features == base.classifier.in_features
    if arch == "mobilenet_v3_small":  # the checkpoint path end to end
        path = tmp_path / "seven.pt"
        torch.save(rebuilt.net.state_dict(), path)
        loaded = load_model(path, arch=arch)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            assert torch.equal(loaded.net(x), rebuilt.net(x))


def test_every_family_is_registered_once_with_generic_last():
    names = FAM.families()
    assert names[-1] == "generic" and len(names) == len(set(names))
    assert {"digits", "resnet", "vgg", "densenet", "efficientnet", "mobilenet", "convnext", "regnet",
            "timm"} <= set(names)
    assert FAM.family_for(nn.Sequential(nn.Conv2d(1, 1, 1))).name == "generic"


# --- the sidebar's model box ------------------------------------------------------------------------

def test_the_sidebar_takes_any_timm_or_torchvision_name_typed_in_its_model_box(empty_caches):

    app = page_test("pages/saliency.py", 120)
    app.run()
    assert not app.exception, app.exception
    app.text_input(key="model_name").set_value("timm:resnet18").run()
    assert not app.exception, app.exception
    errors = " ".join(e.value for e in app.sidebar.error)
    assert "never downloads" in errors and "Random weights" in errors, "offline and uncached: say what to do"
    app.checkbox(key="random_weights").check().run()
    assert not app.exception, app.exception
    assert not app.sidebar.error
    assert any("Using **timm:resnet18**" in c.value for c in app.sidebar.caption)
    app.sidebar.multiselect(key="methods").set_value(["gradcam", "lrp_epsilon"]).run()
    assert not app.exception, app.exception
    assert panel_labels(app) == ["Grad-CAM", "LRP-ε"], "timm's ResNet: its residual sums canonized, LRP drawn"
    app.text_input(key="model_name").set_value("timm:convnext_atto").run()
    assert not app.exception, app.exception
    shown = " ".join(c.value for c in app.caption)
    assert "LRP is not available for timm:convnext_atto (timm family)" in shown, "refused with the reason, no map"
    assert any("Grad-CAM" in m.value for m in app.markdown)
    app.text_input(key="model_name").set_value("../weights/model.pt").run()
    assert "is not a model name" in " ".join(e.value for e in app.sidebar.error), "a path typed there is refused"
