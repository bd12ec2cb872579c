"""The built-in ``digits`` model's network, weights and input: a compact ResNet for scikit-learn's digits.

The network is the usual stem (conv, batch norm, ReLU, max pool) and four residual stages of
torchvision ``BasicBlock`` s, so ``B1..B4`` mean what they mean for ResNet34 and LRP canonizers
recognise the blocks; global average pooling and one linear layer close it (the GAP + linear
head of seed 000, eq. 1-2). It is registered here as ``load_model("digits")`` (``digits_model``);
``python -m explainers.cli train digits`` trains it. ``load_model("digits_marked")``
(``digits_marked_model``) is the same network trained the same way on ``digits_marked``
(``explainers.data.marked``), whose training images carry a class-specific mark: a model that
learned a spurious feature.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from ...runtime.paths import ASSETS
from ..preprocess import Preprocess
from ..spec import MODELS, ModelSpec, model_spec

__all__ = ["ASSETS", "DIGITS_CARD", "DIGITS_DEPTHS", "DIGITS_INPUT", "DIGITS_MARKED_CARD", "DIGITS_MARKED_WEIGHTS",
           "DIGITS_MEAN", "DIGITS_STD", "DIGITS_WEIGHTS", "DIGITS_WIDTHS", "SHIPPED_MODELS", "DigitsResNet",
           "digits_marked_model", "digits_model", "digits_transform"]

DIGITS_WEIGHTS = ASSETS / "digits_resnet.pt"
DIGITS_CARD = ASSETS / "digits_resnet.json"
DIGITS_MARKED_WEIGHTS = ASSETS / "digits_marked_resnet.pt"
DIGITS_MARKED_CARD = ASSETS / "digits_marked_resnet.json"
DIGITS_WIDTHS = (16, 32, 64, 128)
DIGITS_DEPTHS = (2, 2, 2, 2)
DIGITS_INPUT = (64, 64)
# Pixel statistics of the digits training images (ink is high), used to normalise input; the marked
# model keeps them (its marks raise the mean by 0.009 and the std by 0.005), so that the two networks differ
# only in what they were trained on.
DIGITS_MEAN = 0.30
DIGITS_STD = 0.32


def digits_transform() -> Preprocess:
    """The digits model's input: greyscale, 64x64, normalised by the training images' mean and std."""
    return Preprocess(input_size=DIGITS_INPUT, mode="L", mean=(DIGITS_MEAN,), std=(DIGITS_STD,))


class DigitsResNet(nn.Module):
    """ResNet-style classifier with torchvision's attribute names (conv1 ... layer4, fc)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, ...] = DIGITS_WIDTHS, depths: tuple[int, ...] = DIGITS_DEPTHS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = []
        planes_in = widths[0]
        for index, (planes, depth) in enumerate(zip(widths, depths)):
            stride = 1 if index == 0 else 2
            stages.append(_stage(planes_in, planes, depth, stride))
            planes_in = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _stage(planes_in: int, planes: int, depth: int, stride: int) -> nn.Sequential:
    downsample = None
    if stride != 1 or planes_in != planes:
        downsample = nn.Sequential(
            nn.Conv2d(planes_in, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes)
        )
    blocks = [BasicBlock(planes_in, planes, stride, downsample)]
    blocks += [BasicBlock(planes, planes) for _ in range(depth - 1)]
    return nn.Sequential(*blocks)


# The built-in models whose trained weights ship in assets/: nothing to download, so the sidebar
# offers no "Random weights (no download)" for them.
SHIPPED_MODELS = ("digits", "digits_marked", "digits_vit")


@MODELS.register("digits", description="compact ResNet trained on scikit-learn's digits (built in, offline)")
def digits_model(weights: str | None = "DEFAULT") -> ModelSpec:
    """The digits ResNet with its shipped weights (``weights=None``: random ones)."""
    return _digits_resnet("digits", DIGITS_WEIGHTS, DIGITS_CARD, weights)


@MODELS.register("digits_marked", description="the digits ResNet trained on digits_marked: it learned the "
                                              "class-specific mark (spurious correlation; built in, offline)")
def digits_marked_model(weights: str | None = "DEFAULT") -> ModelSpec:
    """The digits ResNet trained on ``digits_marked``, with its shipped weights (``weights=None``: random ones)."""
    return _digits_resnet("digits_marked", DIGITS_MARKED_WEIGHTS, DIGITS_MARKED_CARD, weights)


def _digits_resnet(name: str, weights_file: Path, card_file: Path, weights: str | None) -> ModelSpec:
    """A ``DigitsResNet`` with the shipped weights of ``name`` (random ones for ``weights=None``), whose
    training set and sidebar images are the registered dataset of the same name."""
    net = DigitsResNet()
    card: dict[str, Any] = {}
    if weights is not None:
        net.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        card = json.loads(card_file.read_text()) if card_file.exists() else {}
    spec = model_spec(name, net.eval(), digits_transform(), [str(d) for d in range(10)], "digits", card,
                      sample_dataset=name)
    spec.dataset = name
    return spec
