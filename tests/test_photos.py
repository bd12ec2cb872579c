"""Photos that look right on real networks: the border of EfficientNet-Lite0's maps is the network's
(and our pipeline adds nothing to it), timm models preprocess as timm does, and checkpoints of timm
models load by path.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from explainers import CheckpointError, explain_many, load_model
from explainers.data.datasets import PHOTOS
from explainers.models.builtin.imagenet import BORDER_NOTE, lite0_state_dict, lite0_weights_file
from explainers.models.preprocess import imagenet_preprocess, torchvision_preprocess


@functools.lru_cache(maxsize=None)
def lite0():
    return load_model("efficientnet_lite0")


def photo(name: str) -> Image.Image:
    return next(p for p in PHOTOS if p.name == name).load()


def a_photo() -> Image.Image:
    """Neither square nor any model's input size, so every resize and crop does something."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 410, 3), dtype=np.uint8))


# --- 1. the bright border of Lite0's B4 maps ------------------------------------------------------

def test_lite0_cam_is_the_one_computed_straight_from_timms_forward():
    """Our pass (preprocessing, taps, B4 = ``bn2``) against timm's own ``forward_features`` on a second
    copy of the network: CAM_j = sum_k c_jk A_k (Zhou et al. 2016, eq. 2) from both."""
    import timm

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    net.load_state_dict(lite0_state_dict(torch.load(lite0_weights_file(), weights_only=True), net))
    model = lite0()
    inputs = model.transform(photo("chelsea"))[None]
    with torch.inference_mode():
        features = net.forward_features(inputs)
        target = int(net.forward_head(features).argmax())
        theirs = torch.einsum("k,khw->hw", net.classifier.weight[target], features[0]).numpy()
    ours = explain_many(model, inputs, ["cam"], "B4", target=target)["cam"].raw
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())


def horizontal_shift(a: np.ndarray, b: np.ndarray, reach: int = 40) -> tuple[int, float]:
    """The shift of ``b``'s columns (pixels) that best matches ``a`` (Pearson correlation on the overlap),
    and the correlation at no shift."""
    def correlation(shift: int) -> float:
        left, right = (a[:, shift:], b[:, :b.shape[1] - shift]) if shift >= 0 else (a[:, :shift], b[:, -shift:])
        return float(np.corrcoef(left.ravel(), right.ravel())[0, 1])

    scores = {shift: correlation(shift) for shift in range(-reach, reach + 1)}
    return max(scores, key=scores.get), scores[0]


@pytest.mark.parametrize("name", ["chelsea", "coffee", "rocket"])
def test_a_mirrored_photos_map_mirrored_back_lies_on_the_photos_map(name):
    """Content moves with the photo; anything of ours that is not mirror-symmetric would not: a block
    drawn half a cell (16 px) off by the upsampling shows as a 32 px shift between the two, a crop off
    centre as twice its offset. Measured: 1, 2 and 7 px (the network itself is not exactly symmetric:
    TF "same" padding)."""
    model, image = lite0(), photo(name)
    upright = explain_many(model, image, ["gradcam"], "B4")["gradcam"]
    mirrored = explain_many(model, ImageOps.mirror(image), ["gradcam"], "B4", target=upright.target)["gradcam"]
    shift, at_zero = horizontal_shift(upright.heatmap, mirrored.heatmap[:, ::-1])
    assert abs(shift) <= 8, (name, shift)
    assert at_zero > 0.9, (name, at_zero)


def rings(heatmap: np.ndarray) -> list[float]:
    """Mean of a (7, 7) map, scaled so that a uniform map is 1, on each ring from the border inwards."""
    scaled = np.maximum(heatmap, 0) / np.maximum(heatmap, 0).mean()
    distance = np.maximum(*np.abs(np.mgrid[0:7, 0:7] - 3)[::-1])
    return [float(scaled[distance == ring].mean()) for ring in (3, 2, 1, 0)]


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (200, 60, 40), (40, 90, 200)])
def test_the_ring_and_the_bottom_of_the_border_note_are_the_network_s_on_a_blank_image(colour):
    """What the Saliency page's note says, on images with no content at all: the cells one in from the
    border light up (1.5-1.6x a uniform map), more at the bottom than at the top (TF "same" padding)."""
    model = lite0()
    assert "1.5-1.6x" in model.card[BORDER_NOTE] and "1.07-1.21x" in model.card[BORDER_NOTE]
    cam = explain_many(model, Image.new("RGB", (300, 300), colour), ["cam"], "B4")["cam"].raw
    outer, one_in, *inner = rings(cam)
    assert 1.45 <= one_in <= 1.65 and one_in > max(outer, *inner), rings(cam)
    scaled = np.maximum(cam, 0)
    assert 1.05 <= scaled[5].mean() / scaled[1].mean() <= 1.23  # row second from the bottom / from the top


# --- 2. timm models preprocess as timm does -------------------------------------------------------

@pytest.mark.parametrize("name, interpolation, resize", [("resnet18", "bicubic", 235),
                                                         ("tf_mobilenetv3_small_minimal_100", "bilinear", 256)])
def test_a_timm_model_preprocesses_as_timms_own_transform(name, interpolation, resize):
    """Two configs: resnet18's (bicubic, crop 0.95: the shorter side to floor(224 / 0.95) = 235) and a
    TF MobileNet's (bilinear, crop 0.875, mean/std 0.5)."""
    from timm.data import create_transform, resolve_data_config

    model = load_model(f"timm:{name}", weights=None)
    config = resolve_data_config({}, model=model.net)
    assert (config["interpolation"], model.transform.interpolation, model.transform.resize) == (
        interpolation, interpolation, resize)
    assert model.transform.mean == tuple(config["mean"]) and model.transform.std == tuple(config["std"])
    torch.testing.assert_close(model.transform(a_photo()), create_transform(**config)(a_photo()), rtol=0, atol=0)


@pytest.mark.parametrize("name, weights, crop, resize, interpolation", [
    ("resnet50", "DEFAULT", 224, 232, "bilinear"),  # V2 weights: 232, where V1 had 256
    ("resnet50", "IMAGENET1K_V1", 224, 256, "bilinear"),
    ("inception_v3", None, 299, 342, "bilinear"),  # random weights: the architecture's own input
    ("efficientnet_b4", None, 380, 384, "bicubic"),
    ("convnext_tiny", None, 224, 236, "bilinear"),
])
def test_a_torchvision_model_preprocesses_as_its_weights_transforms(name, weights, crop, resize, interpolation):
    """The preprocessing torchvision's weights carry (``weights.transforms()``, metadata: nothing downloads),
    not one ImageNet recipe for all: the same tensor to the bit, on a wide and a tall photo."""
    from torchvision import models as tv

    enum = tv.get_model_weights(name)
    expected = (enum.DEFAULT if weights in (None, "DEFAULT") else enum[weights]).transforms()
    if weights is None:
        model = load_model(name, weights=None)
    else:  # the weights are not on this machine: the preprocessing is what load_model would give them
        model = type("Spec", (), {"transform": torchvision_preprocess(enum[weights])})()
    transform = model.transform
    assert (transform.input_size, transform.resize, transform.interpolation) == ((crop, crop), resize, interpolation)
    for image in (a_photo(), a_photo().transpose(Image.Transpose.ROTATE_90)):
        torch.testing.assert_close(transform(image), expected(image), rtol=0, atol=0)
    if weights is None:
        assert model.input_size == (crop, crop)  # the size its blocks are probed at and its maps drawn at


@pytest.mark.parametrize("size, crop, mode", [((224, 224), 0.9, "squash"), ((160, 224), 0.875, "center"),
                                              ((160, 224), 0.95, "squash"), ((224, 224), 1.0, "border"),
                                              ((192, 256), 0.9, "border")])
def test_crop_modes_and_sizes_that_are_not_square_are_timms(size, crop, mode):
    from timm.data import create_transform

    ours = imagenet_preprocess(size, crop=crop, interpolation="bicubic", crop_mode=mode)
    theirs = create_transform((3, *size), crop_pct=crop, crop_mode=mode, interpolation="bicubic")
    for image in (a_photo(), a_photo().transpose(Image.Transpose.ROTATE_90)):  # wide and tall
        torch.testing.assert_close(ours(image), theirs(image), rtol=0, atol=0)


def test_unknown_interpolation_or_crop_mode_is_refused_when_built():
    with pytest.raises(ValueError, match="crop_mode"):
        imagenet_preprocess(crop_mode="stretch")
    with pytest.raises(ValueError):
        imagenet_preprocess(interpolation="sinc")


# --- 3. checkpoints of timm models ----------------------------------------------------------------

def test_a_timm_checkpoint_of_another_class_count_loads_by_path(tmp_path):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=7).eval()
    inputs = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = net(inputs)
    torch.save(net.state_dict(), tmp_path / "bare.pt")
    torch.save({"state_dict": net.state_dict(), "arch": "timm:resnet18", "classes": list("abcdefg")},
               tmp_path / "described.pt")
    bare = load_model(tmp_path / "bare.pt", arch="timm:resnet18")
    described = load_model(tmp_path / "described.pt")
    for model in (bare, described):
        assert model.num_classes == 7 and model.family == "resnet"  # timm's ResNet has the resnet adapter
        assert model.block_paths == {"B1": "layer1", "B2": "layer2", "B3": "layer3", "B4": "layer4"}
        assert model.transform.interpolation == "bicubic"  # timm's resnet18 config, as timm:resnet18 has it
        with torch.inference_mode():
            torch.testing.assert_close(model.net(inputs), expected, rtol=0, atol=0)
    assert bare.classes == [str(i) for i in range(7)] and described.classes == list("abcdefg")
    assert described.name == "described.pt (timm:resnet18)"
    with pytest.raises(CheckpointError, match="does not fit the timm:resnet34 architecture"):
        load_model(tmp_path / "bare.pt", arch="timm:resnet34")
    with pytest.raises(CheckpointError, match="unknown architecture 'timm:resnet_nosuch'.*timm:<name>"):
        load_model(tmp_path / "bare.pt", arch="timm:resnet_nosuch")
