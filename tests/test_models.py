"""Models: the shipped digits weights, Theorem 1 of seed 000, block discovery, offline weights, checkpoints."""
from __future__ import annotations

import json
import socket
import urllib.error

import pytest
import torch
from helpers import digits_model, digits_test_batch, one_thread, random_torchvision
from torch import nn

from explainers import CheckpointError, ModelUnavailableError, explain, explain_many, load_model, trace
from explainers.cli import DIGITS_CARD, DigitsResNet, accuracy, digits_tensors


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


DIGITS_SHAPES = {"B1": (16, 32, 32), "B2": (32, 16, 16), "B3": (64, 8, 8), "B4": (128, 4, 4)}


# --- the shipped digits model ------------------------------------------------------------------

def test_digits_weights_reach_98_percent_and_match_their_card():
    model = digits_model()
    images, labels = digits_tensors("test")
    assert len(labels) == 360 and set(labels.tolist()) == set(range(10))
    measured = accuracy(model.net, images, labels)
    assert measured >= 0.98, f"shipped digits weights reach only {measured:.4f} test accuracy"
    card = json.loads(DIGITS_CARD.read_text())
    assert abs(measured - card["test_accuracy"]) <= 0.005, (measured, card["test_accuracy"])
    assert model.card.get("test_accuracy") == card["test_accuracy"]


def test_theorem_1_logits_are_mean_of_pixelwise_prototype_scores():
    """Seed 000, eq. 4-5: logit_j = 1/R sum_r h_r . c_j (+ b_j), h = B4 output, c_j = classifier row j."""
    model = digits_model()
    images, labels = digits_test_batch(16)
    recorded = trace(model, images)
    h = recorded.activations["B4"]
    assert h.shape == (16, 128, 4, 4)
    c, b = model.classifier.weight.detach(), model.classifier.bias.detach()
    per_pixel = torch.einsum("nkhw,jk->njhw", h, c)  # h_r . c_j for every pixel r and class j
    rebuilt = per_pixel.mean(dim=(2, 3)) + b
    with torch.no_grad():
        plain = model.net(images)  # an independent forward pass without any hook
    torch.testing.assert_close(rebuilt, recorded.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(rebuilt, plain, atol=1e-4, rtol=0)
    # The identity is not vacuous: the logits classify the real images.
    assert (rebuilt.argmax(1) == labels).float().mean() >= 0.9
    assert per_pixel.std() > 0.1
    # CAM is R times the per-pixel term, so the mean of its map plus the bias is the logit.
    for i in range(3):
        target = int(labels[i])
        cam = explain(model, images[i], "cam", target=target)
        assert cam.raw.mean() + float(b[target]) == pytest.approx(float(plain[i, target]), abs=1e-4)


# --- blocks ------------------------------------------------------------------------------------

def test_digits_blocks_are_layer1_to_layer4_with_known_shapes():
    model = digits_model()
    assert list(model.blocks) == ["B1", "B2", "B3", "B4"]
    assert model.block_paths == {"B1": "layer1", "B2": "layer2", "B3": "layer3", "B4": "layer4"}
    for i, name in enumerate(model.blocks, start=1):
        assert model.blocks[name] is getattr(model.net, f"layer{i}")
    assert model.block_shapes == DIGITS_SHAPES
    assert model.input_size == (64, 64)
    images, _ = digits_test_batch(2)
    assert images.shape == (2, 1, 64, 64)
    recorded = trace(model, images)
    assert {k: tuple(v.shape[1:]) for k, v in recorded.activations.items()} == DIGITS_SHAPES
    assert model.gap_head is True
    assert model.classifier is model.net.fc and model.num_classes == 10


@pytest.mark.parametrize("name", ["resnet18", "vgg16_bn", "densenet121"])
def test_torchvision_blocks_go_shallow_to_deep(name):
    model = random_torchvision(name)
    assert list(model.blocks) == ["B1", "B2", "B3", "B4"]
    shapes = model.block_shapes
    sides = [shapes[b][1] for b in model.blocks]
    assert all(a > b for a, b in zip(sides, sides[1:])), shapes
    assert sides == [56, 28, 14, 7]
    assert all(shapes[b][1] == shapes[b][2] for b in model.blocks)
    # the blocks are distinct modules, in the order the network registers (and runs) them
    order = [m for m in model.net.modules()]
    positions = [next(i for i, m in enumerate(order) if m is model.blocks[b]) for b in model.blocks]
    assert positions == sorted(positions) and len(set(positions)) == 4
    assert model.num_classes == 1000 and len(model.classes) == 1000
    if name == "resnet18":
        assert model.block_paths == {"B1": "layer1", "B2": "layer2", "B3": "layer3", "B4": "layer4"}
        assert model.gap_head is True
    elif name == "vgg16_bn":
        assert all(isinstance(model.blocks[b], nn.MaxPool2d) for b in model.blocks)
        assert model.gap_head is False  # VGG has three linear layers after the last conv stage
    else:
        assert model.block_paths["B4"] == "features.denseblock4"


def small_generic_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),  # same resolution: the later module wins
        nn.Conv2d(16, 20, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(20, 5),
    )


def test_generic_module_blocks_by_resolution_and_explain_works():
    from PIL import Image

    net = small_generic_net()
    model = load_model(net, input_size=(32, 32))
    assert model.block_paths == {"B1": "1", "B2": "3", "B3": "7", "B4": "9"}
    assert model.block_shapes == {"B1": (8, 32, 32), "B2": (12, 16, 16), "B3": (16, 8, 8), "B4": (20, 4, 4)}
    assert model.classifier is net[12] and model.num_classes == 5
    assert model.gap_head is True

    generator = torch.Generator().manual_seed(1)
    pixels = (torch.rand(40, 40, 3, generator=generator) * 255).to(torch.uint8).numpy()
    image = Image.fromarray(pixels, mode="RGB")
    maps = explain_many(model, image, ["cam", "gradcam", "hirescam"], target=2)
    assert maps["gradcam"].raw.shape == (4, 4) and maps["gradcam"].heatmap.shape == (32, 32)
    assert all(m.target == 2 for m in maps.values())
    # With the GAP + linear head, HiResCAM * R equals CAM, and CAM is the hand computation.
    x = model.transform(image).unsqueeze(0)
    with torch.no_grad():
        h = net[:10](x)[0]
        expected = torch.einsum("k,khw->hw", net[12].weight[2], h).numpy()
    torch.testing.assert_close(torch.from_numpy(maps["cam"].raw), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(maps["hirescam"].raw * 16), torch.from_numpy(expected),
                               atol=1e-5, rtol=1e-4)


# --- offline torchvision weights ---------------------------------------------------------------

def test_torchvision_weights_offline_give_a_clear_error(tmp_path, monkeypatch):
    cache = tmp_path / "torch-home"
    cache.mkdir()
    attempts: list[str] = []

    def offline_download(url, dst, *args, **kwargs):
        attempts.append(url)
        raise urllib.error.URLError("offline")

    def no_network(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setenv("TORCH_HOME", str(cache))
    monkeypatch.setattr(torch.hub, "_hub_dir", torch.hub._hub_dir)  # restored after the test
    torch.hub.set_dir(str(cache / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline_download)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)

    with pytest.raises(ModelUnavailableError) as caught:
        load_model("resnet18")
    message = str(caught.value)
    assert attempts and attempts[0].startswith("https://"), "the empty cache should have led to a download attempt"
    assert "cache" in message and str(cache / "hub") in message
    assert "weights=None" not in message and "URLError" not in message  # meant for a person (issue 9)
    assert "Random weights" in message
    assert "offline" in str(caught.value.__cause__)  # the technical cause is kept for programmers
    assert not any(p.is_file() for p in cache.rglob("*"))


# --- checkpoints -------------------------------------------------------------------------------

def test_checkpoint_of_digits_weights_gives_the_same_logits(tmp_path):
    builtin = digits_model()
    path = tmp_path / "copy.pt"
    torch.save(builtin.net.state_dict(), path)
    loaded = load_model(path)
    assert loaded.card["arch"] == "digits" and loaded.num_classes == 10
    assert loaded.block_paths == builtin.block_paths
    images, _ = digits_test_batch(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(images), builtin.net(images), atol=0, rtol=0)


def test_checkpoint_with_metadata_keeps_its_classes(tmp_path):
    builtin = digits_model()
    names = [f"digit {d}" for d in range(10)]
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": builtin.net.state_dict(), "arch": "digits", "classes": names}, path)
    loaded = load_model(str(path))
    assert loaded.classes == names and loaded.class_name(3) == "digit 3"


def test_checkpoint_of_other_architecture_does_not_fit(tmp_path):
    path = tmp_path / "resnet18.pt"
    torch.save(random_torchvision("resnet18").net.state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit the digits architecture") as caught:
        load_model(path, arch="digits")
    assert "resnet18.pt" in str(caught.value)


def test_text_file_named_pt_is_refused(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="could not be read") as caught:
        load_model(path)
    assert "notes.pt" in str(caught.value)


def test_checkpoint_with_other_class_count_loads(tmp_path):
    torch.manual_seed(3)
    net = DigitsResNet(num_classes=3).eval()
    path = tmp_path / "three.pt"
    torch.save(net.state_dict(), path)
    loaded = load_model(path)
    assert loaded.num_classes == 3 and loaded.classes == ["0", "1", "2"]
    images, _ = digits_test_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(images), net(images), atol=1e-6, rtol=0)
    assert explain(loaded, images[0], "gradcam", target=2).target == 2
    with pytest.raises(ValueError, match="0..2"):
        explain(loaded, images[0], "gradcam", target=3)


UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("code ran")
    return "payload"


class Payload:
    """An object whose unpickling runs code (it calls ``_record_unpickling``)."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_checkpoint_holding_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": Payload(), "fc.weight": torch.zeros(10, 128)}, path)
    UNPICKLED.clear()
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)
    assert UNPICKLED == [], "the checkpoint's code was executed"


def test_pixel_values_undo_the_models_normalisation():
    """pixel_values(transform(image)) is the resized image in [0, 1]; model_values goes back."""
    import numpy as np
    from PIL import Image
    from torchvision.transforms import functional as TF

    model = load_model("resnet18", weights=None)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8))
    inputs = model.transform(image)[None]
    expected = TF.to_tensor(model.transform.geometry(image))[None]
    assert torch.allclose(model.transform.pixel_values(inputs), expected, atol=1e-6)
    assert torch.allclose(model.transform.model_values(expected), inputs, atol=1e-5)
