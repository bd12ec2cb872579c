"""PIL image -> model input: ``Preprocess``, and the ImageNet recipe, built here and nowhere else.

Every colour model's preprocessing comes from here: ``imagenet_preprocess``, torchvision's ImageNet
evaluation recipe (shorter side to 256, centre crop 224, ImageNet's mean and std), or a variant
of it with a model's own mean, std, input size, crop fraction, interpolation and crop mode
(EfficientNet-Lite0's mean/std 0.5 on the same bilinear geometry, a timm model's pretrained config as
timm's ``resolve_data_config`` gives it, a module of another input size without a crop); or
``torchvision_preprocess``, the recipe a torchvision weights entry carries (its ``transforms()``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.models import WeightsEnum
from torchvision.transforms import functional as TF

__all__ = ["IMAGENET_CROP", "IMAGENET_INPUT", "IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "flatten_alpha",
           "imagenet_preprocess", "torchvision_preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_INPUT = (224, 224)
IMAGENET_CROP = 224 / 256  # the centre crop keeps 0.875 of the resized shorter side


@dataclass
class Preprocess:
    """PIL image -> model input, in two steps so that overlays can be drawn on ``geometry``'s output.

    ``geometry`` resizes (and centre-crops) to the model's input size; ``to_tensor``
    converts to the model's colour mode and normalises. The geometry is timm's evaluation transform
    (``timm.data.transforms_imagenet_eval``), which for a square size and ``crop_mode="center"`` is
    torchvision's ImageNet recipe: ``crop_mode`` "center" resizes the shorter side to ``resize`` (for
    a non-square ``resize``, the smallest size that covers it, aspect kept) and centre-crops; "squash"
    resizes to ``resize`` exactly (aspect not kept) and centre-crops; "border" fits the longer side
    into ``resize`` and pads with the mean colour to the input size.
    """

    input_size: tuple[int, int]
    mode: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | tuple[int, int] | None = None  # before the centre crop: a shorter side, or (height, width)
    interpolation: str = "bilinear"  # torchvision's InterpolationMode names: bilinear, bicubic, nearest, lanczos
    crop_mode: str = "center"

    def geometry(self, image: Image.Image) -> Image.Image:
        image = flatten_alpha(image, background=0 if self.mode == "L" else 255).convert(self.mode)
        if self.resize:
            image = self._resized(image)
            if self.crop_mode == "border":
                return _centre_crop_or_pad(image, self.input_size, fill=tuple(round(255 * m) for m in self.mean))
            image = TF.center_crop(image, list(self.input_size))
        elif image.size != (self.input_size[1], self.input_size[0]):
            image = TF.resize(image, list(self.input_size), self._interpolation, antialias=True)
        return image

    @property
    def _interpolation(self) -> TF.InterpolationMode:
        return TF.InterpolationMode(self.interpolation)

    def _resized(self, image: Image.Image) -> Image.Image:
        assert self.resize is not None  # geometry calls this only when there is a resize
        height, width = (self.resize, self.resize) if isinstance(self.resize, int) else self.resize
        if self.crop_mode == "squash":
            return TF.resize(image, [height, width], self._interpolation, antialias=True)
        if self.crop_mode == "center" and height == width:
            return TF.resize(image, height, self._interpolation, antialias=True)  # the shorter side
        # The aspect kept: "center" covers (height, width), "border" fits inside it (timm's ResizeKeepRatio).
        ratios = (image.height / height, image.width / width)
        ratio = max(ratios) if self.crop_mode == "border" else min(ratios)
        size = [round(image.height / ratio), round(image.width / ratio)]
        return TF.resize(image, size, self._interpolation, antialias=True)

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
                        std: tuple[float, ...] = IMAGENET_STD, crop: float | None = IMAGENET_CROP,
                        interpolation: str = "bilinear", crop_mode: str = "center") -> Preprocess:
    """The ImageNet recipe for an RGB model: the shorter side resized to ``floor(input / crop)`` (256 for
    224 at torchvision's crop of 0.875), then centre-cropped to ``input_size``, then normalised by
    ``mean`` and ``std``; ``interpolation`` and ``crop_mode`` as timm's pretrained configs name them
    (``Preprocess``). ``crop=None`` resizes straight to ``input_size`` instead (no crop)."""
    if crop_mode not in ("center", "squash", "border"):
        raise ValueError(f"crop_mode {crop_mode!r}: use 'center', 'squash' or 'border' (timm's crop modes)")
    TF.InterpolationMode(interpolation)  # an unknown name raises ValueError here, not at the first image
    resize: int | tuple[int, int] | None = None
    if crop:
        # floor, as timm's transforms_imagenet_eval: 224 / 0.95 gives 235, not 236
        height, width = (math.floor(side / crop) for side in input_size)
        resize = height if height == width else (height, width)
    size = (int(input_size[0]), int(input_size[1]))
    return Preprocess(input_size=size, mode="RGB", mean=tuple(mean), std=tuple(std), resize=resize,
                      interpolation=interpolation, crop_mode=crop_mode)


def torchvision_preprocess(weights: WeightsEnum) -> Preprocess:
    """The evaluation preprocessing torchvision's ``weights`` were measured with (``weights.transforms()``,
    an ``ImageClassification``): the shorter side resized to its ``resize_size`` with its interpolation, a
    centre crop of its ``crop_size``, its mean and std. These differ by family and by weights version: 232/224
    for ResNet-50's V2 weights, 342/299 for Inception v3, 384/380 bicubic for EfficientNet-B4; reading them
    (metadata only, no download) keeps each network's accuracy on real photos."""
    recipe = weights.transforms()
    crop, resize = int(recipe.crop_size[0]), int(recipe.resize_size[0])
    return Preprocess(input_size=(crop, crop), mode="RGB", mean=tuple(recipe.mean), std=tuple(recipe.std),
                      resize=resize, interpolation=recipe.interpolation.value)


def _centre_crop_or_pad(image: Image.Image, size: tuple[int, int], fill: tuple[int, ...]) -> Image.Image:
    """``image`` centred on a canvas of ``size`` (height, width) in the colour ``fill``, cropped where it is
    larger (timm's ``CenterCropOrPad``: the odd padding pixel goes to the right and bottom)."""
    height, width = size
    pad = [max(width - image.width, 0) // 2, max(height - image.height, 0) // 2,
           (max(width - image.width, 0) + 1) // 2, (max(height - image.height, 0) + 1) // 2]
    if any(pad):
        image = TF.pad(image, pad, fill=fill)
    return TF.center_crop(image, [height, width])


def flatten_alpha(image: Image.Image, background: int = 255) -> Image.Image:
    """Composite a transparent image over a plain background (black for digits, white for photos)."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (background, background, background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image
