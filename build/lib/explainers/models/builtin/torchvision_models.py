"""Five torchvision ImageNet classifiers offered by name (``resnet18`` ... ``densenet121``), registered in
``MODELS`` after the digits models and before EfficientNet-Lite0; their weights come from torchvision's
cache or its download. Any other torchvision classifier loads by its name too (``load_model``)."""
from __future__ import annotations

from typing import Callable

from ..pretrained import torchvision_model
from ..spec import MODELS, ModelSpec

__all__ = ["TORCHVISION_MODELS"]

TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn", "densenet121")


def _torchvision_builder(name: str) -> Callable[..., ModelSpec]:
    def build(weights: str | None = "DEFAULT") -> ModelSpec:
        return torchvision_model(name, weights=weights)

    return build


for _name in TORCHVISION_MODELS:
    MODELS.register(_name, description=f"torchvision {_name}, ImageNet weights")(_torchvision_builder(_name))
