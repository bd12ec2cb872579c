"""Every tensor follows the model's device, and what leaves the library is numpy on the CPU (issue 10, item 8).

This machine has no GPU, so the tests run on a simulated one (``tests/simulated_device.py``): a device of
its own whose tensors compute on the CPU but refuse, as CUDA and MPS do, any operation that mixes them with
CPU tensors, ``.numpy()``, and (as MPS does) float64. A method that runs there at all keeps every tensor on
the model's device; since the arithmetic is the CPU's, its maps must equal the CPU model's.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest
from torchvision import models as tv

from explainers import explain_batch, explain_many, load_dataset, load_model, method_names, predict
from explainers.evaluation import EvaluationSettings, evaluate, randomization_check, subset
from explainers.fitted.features import FeatureCache
from explainers.fitted.prototypes import PrototypeExplainer
from explainers.fitted.qsenn import QSENN, concept_table, full_mode_refusal
from explainers.methods import method_info
from explainers.runtime.devices import DEVICE_VARIABLE, DeviceUnavailableError, default_device, resolve_device
from tests.helpers import one_thread
from tests.simulated_device import DEVICE, on_device, refusals_in_backward
from tests.test_app import PAGES, panel_labels
from tests.test_families import SIZE, small_densenet, trained_like

REPO_APP = str(Path(__file__).resolve().parents[1] / "app.py")


def close(a: np.ndarray, b: np.ndarray, tol: float = 1e-5) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-12)
    return bool(np.allclose(a, b, rtol=0, atol=tol * scale))


def all_on(model, device: torch.device) -> bool:
    return all(t.device == device for t in [*model.net.parameters(), *model.net.buffers()])


@pytest.fixture(autouse=True)
def nothing_refused_in_backward():
    """Backward passes run on autograd's device thread, where the simulated device records what it refuses."""
    refusals_in_backward()
    yield
    assert refusals_in_backward() == []


@pytest.fixture(scope="module")
def digits_pair():
    """The digits model on the CPU and on the simulated device (same weights)."""
    return load_model("digits", device="cpu"), load_model("digits", device=DEVICE)


@pytest.fixture(scope="module")
def digit():
    return load_dataset("digits", "test")[0][0]


def test_the_simulated_device_refuses_what_a_gpu_refuses():
    x = torch.ones(2, 3, device=DEVICE)
    assert x.device == DEVICE and on_device(x * 2)
    with pytest.raises(RuntimeError, match="same device"):
        x + torch.ones(2, 3)
    with pytest.raises(RuntimeError):
        x.numpy()
    with pytest.raises(TypeError, match="float64"):
        x.double()
    assert torch.equal((x * 3).cpu(), torch.full((2, 3), 3.0))  # copies and scalars are allowed
    assert float(x.sum()) == 6.0 and x[torch.tensor([1])].shape == (1, 3)
    leaf = torch.ones(3, device=DEVICE, requires_grad=True)
    leaf.register_hook(lambda grad: grad + torch.ones(3))  # a CPU tensor met in the backward pass
    (leaf * 2).sum().backward()
    assert len(refusals_in_backward()) == 1


def test_a_device_is_chosen_or_refused_with_the_reason(monkeypatch):
    monkeypatch.delenv(DEVICE_VARIABLE, raising=False)
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert default_device().type == expected
    monkeypatch.setenv(DEVICE_VARIABLE, str(DEVICE))
    assert default_device() == DEVICE
    assert load_model("digits").device == DEVICE  # the environment chooses for load_model too
    with pytest.raises(DeviceUnavailableError, match="not a device name"):
        resolve_device("gpu please")
    monkeypatch.setenv(DEVICE_VARIABLE, "nonsense")
    with pytest.raises(DeviceUnavailableError, match="PROTOSCOPE_DEVICE"):
        load_model("digits")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="no CUDA GPU"):
            resolve_device("cuda")
    with pytest.raises(DeviceUnavailableError, match="keeps no values"):  # the weights would be lost there
        resolve_device("meta")
    if not (hasattr(torch, "xpu") and torch.xpu.is_available()):  # a backend not built in raises its own error
        with pytest.raises(DeviceUnavailableError, match="cannot place a tensor"):
            resolve_device("xpu")


def test_a_list_mixing_a_picture_and_a_device_tensor_is_one_batch(digits_pair):
    cpu, device = digits_pair
    digits = load_dataset("digits", "test")
    picture, tensor = digits[0][0], cpu.transform(digits[1][0])
    with one_thread():
        found = explain_batch(device, [picture, tensor.to(DEVICE)], ["gradcam"], block="B3")
        expected = explain_batch(cpu, [picture, tensor], ["gradcam"], block="B3")
    for f, e in zip(found, expected, strict=True):
        assert close(f["gradcam"].raw, e["gradcam"].raw)


def test_a_module_stays_where_it_is_unless_a_device_is_given():
    net = small_densenet().eval()
    assert load_model(net, input_size=SIZE).device.type == "cpu"
    moved = load_model(copy.deepcopy(net), input_size=SIZE, device=DEVICE)
    assert moved.device == DEVICE and all_on(moved, DEVICE)


@pytest.mark.parametrize("block", ["B4", "B3"])
def test_every_method_on_the_device_gives_the_cpu_map_as_numpy(digits_pair, digit, block):
    cpu, device = digits_pair
    names = [n for n in method_names() if method_info(n).available(cpu, block) is None]
    same_batches = {"scorecam": {"batch_size": 16}, "ablationcam": {"batch_size": 16}}  # each device times its own
    with one_thread():
        found = explain_many(device, digit, names, block=block, method_settings=same_batches)
        expected = explain_many(cpu, digit, names, block=block, method_settings=same_batches)
    for name in names:
        assert isinstance(found[name].raw, np.ndarray) and isinstance(found[name].heatmap, np.ndarray), name
        assert close(found[name].raw, expected[name].raw), name
        assert found[name].target == expected[name].target
    assert all_on(device, DEVICE), "a request moved the shared model"
    found_top, expected_top = predict(device, digit), predict(cpu, digit)
    assert [c for c, _ in found_top] == [c for c, _ in expected_top]
    assert [p for _, p in found_top] == pytest.approx([p for _, p in expected_top], abs=1e-6)


FAMILIES = {
    "densenet": lambda: small_densenet(),
    "efficientnet_b0": lambda: tv.efficientnet_b0(),
    "mobilenet_v3_small": lambda: tv.mobilenet_v3_small(),
    "convnext_tiny": lambda: tv.convnext_tiny(),
    "regnet_y_400mf": lambda: tv.regnet_y_400mf(),
}


@pytest.mark.parametrize("family", [*FAMILIES, "timm:tf_efficientnet_lite0", "timm:resnet18"])
def test_each_family_on_the_device_gives_the_cpu_maps(family):
    """Gradient, gradient-free, the perturbation tail at B3 (the family adapter's cut of the inference copy)
    and LRP where the family's rules cover it."""
    torch.manual_seed(0)
    if family.startswith("timm:"):
        cpu = load_model(family, weights=None, device="cpu")
        cpu = load_model(trained_like(cpu.net, 1), input_size=cpu.input_size)
    else:
        cpu = load_model(trained_like(FAMILIES[family](), 1), input_size=SIZE)
    device = load_model(copy.deepcopy(cpu.net), input_size=cpu.input_size, device=DEVICE)
    image = torch.randn(3, *cpu.input_size, generator=torch.Generator().manual_seed(3))
    cases = [("B3", ["gradcam", "eigencam", "ablationcam"]), ("B4", ["layercam", "lrp_epsilon", "clustercam"])]
    # One batch size on both sides: each device times its own, and another batch size changes the convolutions'
    # rounding, which Ablation-CAM's differences of nearly equal logits magnify past the tolerance.
    fixed = {"ablationcam": {"batch_size": 16}, "clustercam": {"q": 3}}
    with one_thread():
        for block, names in cases:
            names = [n for n in names if method_info(n).available(cpu, block) is None]
            settings = {name: fixed[name] for name in names if name in fixed} or None
            found = explain_many(device, image, names, block=block, method_settings=settings)
            expected = explain_many(cpu, image, names, block=block, method_settings=settings)
            for name in names:
                if name == "clustercam":  # its clusters' scores: base and scissors are their argmax and argmin,
                    parts, reference = found[name].extras["cluster_cam"], expected[name].extras["cluster_cam"]
                    assert (parts.labels == reference.labels).all()  # which a random network's near-ties leave
                    assert close(parts.scores, reference.scores, 1e-4), family  # to rounding (and batch size)
                    continue
                assert close(found[name].raw, expected[name].raw, 1e-4), f"{family} {name} at {block}"


def test_prototypes_fit_and_explain_on_the_device_as_on_the_cpu(digits_pair, digit, tmp_path):
    cpu, device = digits_pair
    train = subset(load_dataset("digits", "train"), 200)
    with one_thread():
        with FeatureCache(device, train, folder=tmp_path / "device") as features:
            on_device_fit = PrototypeExplainer("B34", per_class=2).fit(device, train, features=features)
        with FeatureCache(cpu, train, folder=tmp_path / "cpu") as features:
            on_cpu_fit = PrototypeExplainer("B34", per_class=2).fit(cpu, train, features=features)
        np.testing.assert_allclose(on_device_fit.prototypes_, on_cpu_fit.prototypes_, atol=1e-6)
        found, expected = on_device_fit.explain(digit), on_cpu_fit.explain(digit)
    np.testing.assert_array_equal(found.segments, expected.segments)
    assert close(found.attribution, expected.attribution)
    assert on_device_fit.predict([digit]).tolist() == on_cpu_fit.predict([digit]).tolist()


def test_evaluation_and_sanity_checks_on_the_device_as_on_the_cpu(digits_pair):
    cpu, device = digits_pair
    images = subset(load_dataset("digits", "test"), 2)
    settings = EvaluationSettings(steps=5, road_fractions=(0.5,), blur_sigma=20.0)
    with one_thread():
        found = evaluate(device, images, ["gradcam", "scorecam"], block="B3", settings=settings)
        expected = evaluate(cpu, images, ["gradcam", "scorecam"], block="B3", settings=settings)
        for key in ("deletion", "insertion", "morf"):
            for name in ("gradcam", "scorecam"):
                assert close(getattr(found, key)[name], getattr(expected, key)[name], 1e-4), (key, name)
        checked = randomization_check(device, images, ["gradcam", "lrp_epsilon"], mode="independent", keep=2)
        reference = randomization_check(cpu, images, ["gradcam", "lrp_epsilon"], mode="independent", keep=2)
    np.testing.assert_allclose(checked.table["spearman"], reference.table["spearman"], atol=1e-4)
    assert all_on(device, DEVICE)


def test_full_q_senn_fine_tunes_a_copy_on_the_model_device(digits_pair):
    cpu, device = digits_pair
    assert full_mode_refusal(device) is None  # a model on an accelerator is never refused for its size
    train = subset(load_dataset("digits", "train"), 120)
    settings = dict(mode="full", iterations=1, epochs=1, lr=1e-3, path_steps=4, n_features=12)
    with one_thread():
        on_device_layer = QSENN(**settings).fit(device, train)
        on_cpu_layer = QSENN(**settings).fit(cpu, train)
    np.testing.assert_allclose(on_device_layer.weights_, on_cpu_layer.weights_, atol=1e-5)
    test = subset(load_dataset("digits", "test"), 20)
    with one_thread():  # what the Concepts page shows: Table 1, the prediction and the current image's features
        found_table = concept_table(on_device_layer, {"test": test})
        expected_table = concept_table(on_cpu_layer, {"test": test})
        for found_row, expected_row in zip(found_table, expected_table, strict=True):  # rounded to 0.1-0.01 points
            assert found_row == pytest.approx(expected_row, abs=0.2)
        image = test[0][0]
        assert on_device_layer.predict([image]).tolist() == on_cpu_layer.predict([image]).tolist()
        found, expected = on_device_layer.explain(image), on_cpu_layer.explain(image)
    assert [e.feature for e in found.positive] == [e.feature for e in expected.positive]
    assert close(found.logits, expected.logits, 1e-3)  # through the fine-tuned copies: a few steps of rounding apart
    assert all_on(device, DEVICE), "the shared model was moved or trained"


def test_the_app_runs_on_the_device_and_says_where(monkeypatch):
    monkeypatch.setenv(DEVICE_VARIABLE, str(DEVICE))
    app = AppTest.from_file(REPO_APP, default_timeout=180)
    app.query_params["model"] = "digits"
    app.run()
    app.switch_page("pages/saliency.py").run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert any(f"Runs on {DEVICE}" in c.value for c in app.sidebar.caption)
    assert panel_labels(app) == [method_info(m).label for m in app.session_state["methods"]]  # every map drawn
    for path in PAGES:  # every other page, on what ships with digits (prototypes, Q-SENN layer, tables)
        app.switch_page(path).run()
        assert not app.exception, (path, app.exception)
        assert not app.error, (path, [e.value for e in app.error])
