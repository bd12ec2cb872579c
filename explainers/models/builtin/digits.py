"""The built-in ``digits`` model's network, weights and input: a compact ResNet for scikit-learn's digits.

The network is the usual stem (conv, batch norm, ReLU, max pool) and four residual stages of
torchvision ``BasicBlock`` s, so ``B1..B4`` mean what they mean for ResNet34 and LRP canonizers
recognise the blocks; global average pooling and one linear layer close it (the GAP + linear
head of seed 000, eq. 1-2). ``explainers.models.loading`` registers it as ``load_model("digits")``;
``python -m explainers.cli train digits`` trains it. ``load_model("digits_marked")`` is the same
network trained the same way on ``digits_marked`` (``explainers.data.marked``), whose training images
carry a class-specific mark: a model that learned a spurious feature.
"""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from ..preprocess import Preprocess

__all__ = ["ASSETS", "DIGITS_CARD", "DIGITS_DEPTHS", "DIGITS_INPUT", "DIGITS_MARKED_CARD", "DIGITS_MARKED_WEIGHTS",
           "DIGITS_MEAN", "DIGITS_STD", "DIGITS_WEIGHTS", "DIGITS_WIDTHS", "DigitsResNet", "digits_transform"]

from ...runtime.paths import ASSETS  # noqa: E402

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
