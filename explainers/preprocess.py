"""PIL image -> model input: ``Preprocess``, and the ImageNet recipe, built here and nowhere else.

Every colour model's preprocessing comes from ``imagenet_preprocess``: torchvision's ImageNet
evaluation recipe (shorter side to 256, centre crop 224, ImageNet's mean and std), or a variant
of it with a model's own mean, std, input size or crop fraction (EfficientNet-Lite0's mean/std
0.5, a timm model's pretrained config, a module of another input size without a crop).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import functional as TF

__all__ = ["IMAGENET_CROP", "IMAGENET_INPUT", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "flatten_alpha",
           "imagenet_preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_INPUT = (224, 224)
IMAGENET_CROP = 224 / 256  # the centre crop keeps 0.875 of the resized shorter side


@dataclass
class Preprocess:
    """PIL image -> model input, in two steps so that overlays can be drawn on ``geometry``'s output.

    ``geometry`` resizes (and centre-crops) to the model's input size; ``to_tensor``
    converts to the model's colour mode and normalises.
    """

    input_size: tuple[int, int]
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None  # shorter side before the centre crop, as torchvision's ImageNet recipe

    def geometry(self, image: Image.Image) -> Image.Image:
        image = flatten_alpha(image, background=0 if self.mode == "L" else 255).convert(self.mode)
        if self.resize:
            image = TF.center_crop(TF.resize(image, self.resize, antialias=True), list(self.input_size))
        elif image.size != (self.input_size[1], self.input_size[0]):
            image = image.resize((self.input_size[1], self.input_size[0]), Image.BILINEAR)
        return image

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        return TF.normalize(TF.to_tensor(image.convert(self.mode)), list(self.mean), list(self.std))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.to_tensor(self.geometry(image))

    def pixel_values(self, inputs: torch.Tensor) -> torch.Tensor:
        """Model inputs (N, C, H, W) back to pixel values (0..1 for real images): normalisation undone."""
        return inputs * self._channel(self.std, inputs) + self._channel(self.mean, inputs)

    def model_values(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixel values (N, C, H, W) to model inputs: the normalisation ``to_tensor`` applies."""
        return (pixels - self._channel(self.mean, pixels)) / self._channel(self.std, pixels)

    @staticmethod
    def _channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
        """Per-channel values shaped (1, C, 1, 1), on the device of the tensor they scale."""
        return torch.tensor(values, device=like.device).view(1, -1, 1, 1)


def imagenet_preprocess(input_size: tuple[int, int] = IMAGENET_INPUT, *, mean: tuple[float, ...] = IMAGENET_MEAN,
                        std: tuple[float, ...] = IMAGENET_STD, crop: float | None = IMAGENET_CROP) -> Preprocess:
    """The ImageNet recipe for an RGB model: the shorter side resized to ``input / crop`` (256 for 224),
    then centre-cropped to ``input_size``, then normalised by ``mean`` and ``std``. ``crop=None``
    resizes straight to ``input_size`` instead (no crop)."""
    resize = round(min(input_size) / crop) if crop else None
    return Preprocess(input_size=tuple(input_size), mode="RGB", mean=tuple(mean), std=tuple(std), resize=resize)


def flatten_alpha(image: Image.Image, background: int = 255) -> Image.Image:
    """Composite a transparent image over a plain background (black for digits, white for photos)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image
