"""The trace engine (one forward, at most one backward, hooks removed, in-place safe) and the CAM family."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    ALL_METHODS,
    GRADIENT_FREE,
    count_passes,
    digits_model,
    digits_test_batch,
    hook_counts,
    one_thread,
    random_torchvision,
)
from torch import nn

from explainers import (
    MethodUnavailableError,
    Trace,
    explain,
    explain_batch,
    explain_many,
    load_model,
    method_info,
    method_names,
    trace,
)
from explainers.methods import cam as cam_methods
from explainers.runtime.hooks import dispatcher_installed


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


R_B4 = 16  # pixels of the digits model's B4 (4x4)


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    """Equal up to float error relative to the maps' scale."""
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1.0)
    return bool(np.allclose(a, b, rtol=0, atol=tol * scale))


# --- registry ----------------------------------------------------------------------------------

def test_registry_has_the_cam_family_with_the_right_flags():
    registered = method_names()
    assert set(ALL_METHODS) <= set(registered)
    assert len(registered) == len(set(registered))
    for name in ALL_METHODS:
        info = method_info(name)
        assert info.name == name
        assert info.needs_gradients == (name not in GRADIENT_FREE), name
    assert method_info("cam").last_block_only and method_info("cam").requires_gap_head
    assert method_info("cam").signed and method_info("hirescam").signed and not method_info("gradcam").signed
    with pytest.raises(ValueError, match="unknown method"):
        method_info("no-such-method")


# --- CAM, Grad-CAM and HiResCAM on a GAP + linear head -----------------------------------------

def test_gradcam_and_hirescam_are_cam_over_R_at_B4():
    """dy_j/dh_r = c_j / R with GAP + linear, so Grad-CAM * R = ReLU(CAM) and HiResCAM * R = CAM (signed)."""
    model = digits_model()
    images, _ = digits_test_batch(4)
    saw_negative = False
    for image in images:
        predicted = explain(model, image, "cam").target
        for target in (predicted, (predicted + 3) % 10):
            maps = explain_many(model, image, ["cam", "gradcam", "hirescam"], target=target)
            cam, gradcam, hirescam = maps["cam"].raw, maps["gradcam"].raw, maps["hirescam"].raw
            assert cam.shape == gradcam.shape == hirescam.shape == (4, 4)
            assert close(gradcam * R_B4, np.maximum(cam, 0))
            assert close(hirescam * R_B4, cam)
            assert all(m.target == target for m in maps.values())
            saw_negative |= bool((cam < 0).any())
    assert saw_negative, "the signed comparison was never exercised"


@pytest.mark.parametrize("block", ["B4", "B2"])
def test_shared_trace_gives_the_same_maps_as_single_calls(block):
    model = digits_model()
    images, _ = digits_test_batch(2)
    chosen = [m for m in ALL_METHODS if not (block != "B4" and method_info(m).last_block_only)]
    together = explain_many(model, images[1], chosen, block=block)
    assert set(together) == set(chosen)
    for name in ("gradcam", "eigengradcam", "layercam"):
        alone = explain(model, images[1], name, block=block)
        assert np.array_equal(together[name].raw, alone.raw), name
        assert np.array_equal(together[name].heatmap, alone.heatmap), name
    assert together["gradcam"].raw.shape == model.block_shapes[block][1:]
    assert together["gradcam"].heatmap.shape == (64, 64)


# --- pass counting -----------------------------------------------------------------------------

def test_all_methods_share_one_forward_and_one_backward(monkeypatch):
    model = digits_model()
    image = digits_test_batch(1)[0][0]
    with count_passes(model.net, monkeypatch) as counted:
        maps = explain_many(model, image, list(ALL_METHODS))
    assert (counted.forwards, counted.backwards, counted.grad_calls) == (1, 1, 1)
    for name, explanation in maps.items():
        assert explanation.forwards == 1, name
        assert explanation.backwards == (0 if name in GRADIENT_FREE else 1), name

    with count_passes(model.net, monkeypatch) as counted:
        maps = explain_many(model, image, list(GRADIENT_FREE))
    assert (counted.forwards, counted.backwards, counted.grad_calls) == (1, 0, 0)
    assert all(m.forwards == 1 and m.backwards == 0 for m in maps.values())


def test_pass_counter_counts_real_passes(monkeypatch):
    """The counter itself: two explain calls are two forwards and two backwards."""
    model = digits_model()
    image = digits_test_batch(1)[0][0]
    with count_passes(model.net, monkeypatch) as counted:
        explain(model, image, "gradcam")
        explain(model, image, "layercam")
        with torch.no_grad():
            model.net(image[None])
    assert (counted.forwards, counted.backwards) == (3, 2)


# --- hooks and failures ------------------------------------------------------------------------

def test_hooks_are_removed_when_a_pass_raises():
    model = digits_model()
    image = digits_test_batch(1)[0][0]
    before = hook_counts(model.net)
    assert all(counts == (0, 0, 0, 0) for counts in before.values())
    assert all(dispatcher_installed(module) for module in model.blocks.values())
    assert all(len(module._forward_hooks) == 1 for module in model.blocks.values()), "one dispatcher, nothing more"
    reference = explain(model, image, "gradcam", block="B3")

    def explode(*_args):
        raise RuntimeError("boom in layer3")

    handle = model.net.layer3.register_forward_hook(explode)
    try:
        with pytest.raises(RuntimeError, match="boom in layer3"):
            explain_many(model, image, ["gradcam", "cam"], block="B4")
    finally:
        handle.remove()
    assert hook_counts(model.net) == before

    with pytest.raises(ValueError, match="out of range"):  # raises after the forward, inside the hooks
        trace(model, image, targets=10, gradients=True)
    assert hook_counts(model.net) == before

    again = explain(model, image, "gradcam", block="B3")
    assert np.array_equal(again.raw, reference.raw)
    assert again.target == reference.target


class InplaceNet(nn.Module):
    """Every block's output goes straight into ReLU(inplace=True)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer1 = nn.Conv2d(4, 4, 3, padding=1)
        self.layer2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)
        self.layer3 = nn.Conv2d(6, 6, 3, stride=2, padding=1)
        self.layer4 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = self.act(layer(x))
        return self.fc(torch.flatten(self.pool(x), 1))

    def manual(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Block outputs (before the ReLU) and logits, computed without in-place operations."""
        outputs = []
        x = torch.relu(self.stem(x))
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = layer(x)
            outputs.append(out)
            x = torch.relu(out)
        return outputs, self.fc(torch.flatten(self.pool(x), 1))


def test_trace_records_block_outputs_before_an_inplace_relu():
    torch.manual_seed(0)
    net = InplaceNet()
    model = load_model(net, input_size=(16, 16))
    assert model.block_paths == {f"B{i}": f"layer{i}" for i in range(1, 5)}
    x = torch.randn(2, 1, 16, 16)
    target = 1

    recorded = trace(model, x, targets=target, gradients=True)
    xm = x.clone().requires_grad_(True)
    outputs, logits = net.manual(xm)
    manual_grads = torch.autograd.grad(logits[:, target].sum(), outputs)
    torch.testing.assert_close(recorded.logits, logits.detach())
    for i, (out, grad) in enumerate(zip(outputs, manual_grads), start=1):
        block = f"B{i}"
        assert (out < 0).any(), "the test needs negative values that the ReLU would erase"
        torch.testing.assert_close(recorded.activations[block], out.detach(), atol=1e-6, rtol=0)
        torch.testing.assert_close(recorded.gradients[block], grad, atol=1e-6, rtol=0)

    without_grad = trace(model, x)  # inference path: no autograd to complain about in-place ops
    for i, out in enumerate(outputs, start=1):
        torch.testing.assert_close(without_grad.activations[f"B{i}"], out.detach(), atol=1e-6, rtol=0)
    assert all(counts == (0, 0, 0, 0) for counts in hook_counts(net).values())


# --- targets and batches -----------------------------------------------------------------------

def test_target_out_of_range_and_explicit_targets():
    model = digits_model()
    image = digits_test_batch(1)[0][0]
    for bad in (10, -1):
        with pytest.raises(ValueError, match=r"out of range.*0\.\.9"):
            explain(model, image, "gradcam", target=bad)
    predicted = explain(model, image, "hirescam")
    with torch.no_grad():
        assert predicted.target == int(model.net(image[None]).argmax())
    other = (predicted.target + 1) % 10
    a = explain(model, image, "gradcam", target=predicted.target)
    b = explain(model, image, "gradcam", target=other)
    assert (a.target, b.target) == (predicted.target, other)
    assert not np.allclose(a.raw, b.raw)
    assert not np.allclose(explain(model, image, "hirescam", target=other).raw, predicted.raw)


def test_batch_equals_separate_calls():
    model = digits_model()
    images, _ = digits_test_batch(4)
    batched = explain_batch(model, images, list(ALL_METHODS))
    assert len(batched) == 4
    for image, maps in zip(images, batched):
        single = explain_many(model, image, list(ALL_METHODS))
        for name in ALL_METHODS:
            assert maps[name].target == single[name].target
            assert close(maps[name].raw, single[name].raw, tol=1e-4), name
    targets = [m["cam"].target for m in batched]
    assert len(set(targets)) > 1, "the batch should hold several predicted classes"
    per_image = explain_batch(model, images, ["gradcam"], target=[1, 2, 3, 4])
    assert [m["gradcam"].target for m in per_image] == [1, 2, 3, 4]


# --- closed forms on hand-built traces ---------------------------------------------------------

def hand_trace(activations: torch.Tensor, gradients: torch.Tensor | None = None) -> Trace:
    n = activations.shape[0]
    return Trace(inputs=torch.zeros(n, 1, 1, 1), logits=torch.zeros(n, 2), targets=torch.zeros(n, dtype=torch.long),
                 activations={"B": activations}, gradients=None if gradients is None else {"B": gradients},
                 forwards=1, backwards=int(gradients is not None), seconds=0.0)


def test_gradcampp_and_xgradcam_closed_forms_for_one_channel():
    torch.manual_seed(0)
    h, w = 5, 6
    A = torch.rand(1, 1, h, w, dtype=torch.float64) + 0.1
    S = float(A.sum())
    for g in (0.3, 2.0):
        recorded = hand_trace(A, torch.full_like(A, g))
        # Grad-CAM++ (eq. 19): alpha = g^2 / (2 g^2 + S g^3) everywhere, w = h*w*alpha*g = h*w*g / (2 + S*g)
        weight = h * w * g / (2 + S * g)
        torch.testing.assert_close(cam_methods.gradcampp(recorded, "B", None), weight * A[:, 0])
        # XGrad-CAM: alpha = sum_ij (A_ij / S) g = g
        torch.testing.assert_close(cam_methods.xgradcam(recorded, "B", None), g * A[:, 0])
        torch.testing.assert_close(cam_methods.gradcam(recorded, "B", None), g * A[:, 0])
    negative = hand_trace(A, torch.full_like(A, -0.5))
    assert torch.equal(cam_methods.gradcampp(negative, "B", None), torch.zeros(1, h, w, dtype=torch.float64))
    assert torch.equal(cam_methods.xgradcam(negative, "B", None), torch.zeros(1, h, w, dtype=torch.float64))
    # XGrad-CAM with a varying gradient: alpha = sum_ij A_ij g_ij / S
    G = torch.rand_like(A)
    alpha = float((A * G).sum()) / S
    torch.testing.assert_close(cam_methods.xgradcam(hand_trace(A, G), "B", None), alpha * A[:, 0])


def test_eigencam_of_a_rank_one_tensor_is_its_spatial_factor():
    torch.manual_seed(0)
    k, h, w = 7, 5, 4
    spatial = torch.rand(2, h, w, dtype=torch.float64)
    spatial[:, 0, 0] = 0
    channels = torch.stack([torch.rand(k, dtype=torch.float64) + 0.05,  # post-ReLU: non-negative
                            torch.tensor([1.0, -0.4, 0.8, 0.3, -0.2, 0.6, 0.1], dtype=torch.float64)])
    A = channels[:, :, None, None] * spatial[:, None]
    maps = cam_methods.eigencam(hand_trace(A), "B", None)
    for i in range(2):
        s = spatial[i]
        scale = float((maps[i] * s).sum() / (s * s).sum())
        assert scale > 0
        assert scale == pytest.approx(float(channels[i].norm()), rel=1e-9)
        torch.testing.assert_close(maps[i], scale * s)


# --- availability ------------------------------------------------------------------------------

def test_cam_is_unavailable_off_the_last_block_and_without_gap_head():
    model = digits_model()
    image = digits_test_batch(1)[0][0]
    with pytest.raises(MethodUnavailableError, match="last block"):
        explain(model, image, "cam", block="B2")
    with pytest.raises(MethodUnavailableError):
        explain_many(model, image, list(ALL_METHODS), block="B3")
    assert explain(model, image, "cam", block="B4").raw.shape == (4, 4)

    vgg = random_torchvision("vgg16_bn")
    with pytest.raises(MethodUnavailableError, match="global-average-pooling"):
        explain(vgg, torch.zeros(3, 224, 224), "cam", block="B4")
    with pytest.raises(ValueError, match="not in this model"):
        explain(model, image, "gradcam", block="B5")


@pytest.mark.parametrize("shape", [(2, 64, 3, 3), (2, 5, 6, 7)])
def test_first_component_equals_the_svd_projection(shape):
    """Eigen-CAM's A V_1 from the smaller Gram matrix equals the SVD's, up to the sign fixed afterwards."""
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(5)).relu()
    n, k, h, w = shape
    rows = matrix.permute(0, 2, 3, 1).reshape(n, h * w, k).double()
    _, _, vh = torch.linalg.svd(rows, full_matrices=False)
    expected = (rows @ vh[:, 0, :, None]).reshape(n, h, w).float()
    found = cam_methods.first_component(matrix, matrix.sum(dim=1))
    for one, reference in zip(found, expected):
        sign = 1.0 if float((one * reference).sum()) >= 0 else -1.0
        torch.testing.assert_close(one, sign * reference, atol=1e-5, rtol=1e-5)


def test_a_map_with_non_finite_values_is_refused_with_the_reason(monkeypatch):
    from explainers.methods import explanation

    model = digits_model()
    image = digits_test_batch(1)[0][0]
    real = explanation._compute

    def overflowing(method, shared, block, model, settings):
        maps = real(method, shared, block, model, settings)
        maps = maps.clone()
        maps[..., 0, 0] = float("inf")
        return maps

    monkeypatch.setattr(explanation, "_compute", overflowing)
    with pytest.raises(MethodUnavailableError, match="non-finite"):
        explain(model, image, "gradcam", block="B3")


def test_a_deep_copy_of_a_tapped_module_runs_each_tap_once():
    """A copy of a model already used keeps the original's dispatcher in its hooks; tapping the copy
    must not add a second one (each tap would then see every call twice)."""
    import copy

    from explainers.runtime.hooks import tapped

    model = digits_model()
    image = digits_test_batch(1)[0]
    trace(model, image)  # the blocks get their dispatchers
    twin = copy.deepcopy(model.net)
    seen = []
    with tapped({twin.layer3: seen.append}):
        with torch.no_grad():
            twin(image)
    assert len(seen) == 1
    assert sum(1 for hook in twin.layer3._forward_hooks.values()) == 1


def test_the_top_classes_are_ranked_by_logits_so_the_first_is_the_class_explained():
    """An untrained network can give logits of 1e-14, whose float32 probabilities all round to 1/C: ranked by
    probability, the sidebar showed one class as predicted while "the predicted class" explained the argmax."""
    from explainers import predict
    from explainers.engine.trace import ranked

    logits = torch.zeros(1000, dtype=torch.float64)
    logits[757], logits[3] = 3.7e-14, 1e-15
    assert len(set(logits.float().softmax(0).tolist())) == 1, "the probabilities tie in float32"
    top = ranked(logits.float(), 5)
    assert [c for c, _ in top[:2]] == [757, 3] and int(logits.float().argmax()) == 757
    assert top[0][1] == pytest.approx(1e-3)

    model = digits_model()
    images, _ = digits_test_batch(2)
    recorded = trace(model, images)
    for i in range(2):
        assert recorded.top(3, image=i)[0][0] == int(recorded.targets[i])
        assert [c for c, _ in predict(model, images[i], top=3)] == [c for c, _ in recorded.top(3, image=i)]
