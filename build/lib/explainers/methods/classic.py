"""Classic image saliency (seed 001, "Image Saliency in Traditional Computer Vision"): where a
*person* would look first, computed from the pixels alone. They ignore the model, the target
class and the block; the dashboard shows them as model-free baselines for teaching ("saliency
of the image, not of the model"). The image is read from the trace's input, with the model's
normalisation undone.

- spectral residual (Hou & Zhang 2007): what is left of the log amplitude spectrum once its
  local average is removed, put back with the phase;
- local entropy: the Shannon entropy of the grey levels around each pixel;
- center-surround contrast (Itti, Koch & Niebur 1998): differences between fine ("center")
  and coarse ("surround") levels of Gaussian pyramids of intensity and colour opponency.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from scipy import ndimage
from skimage.filters.rank import entropy
from skimage.morphology import disk
from skimage.transform import pyramid_gaussian, resize

from .base import register_method

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

SPECTRAL_WIDTH = 64  # Hou & Zhang resize the image to 64 pixels wide
SPECTRAL_SIGMA = 2.5  # their code: a 10 x 10 Gaussian, sigma 2.5, on the 64-pixel map
CENTERS = (1, 2, 3)  # pyramid levels of the centers; Itti's (2, 3, 4) assume 640 x 480 images
DELTAS = (2, 3)  # surround = center + delta; Itti's (3, 4), scaled down likewise
OUTPUT_LEVEL = 2  # maps are summed at this pyramid level (1/4 of the input side)


def pixels(trace: "Trace", model: "ModelSpec") -> np.ndarray:
    """The input images as (N, H, W, C) floats in [0, 1]: the model's normalisation undone."""
    return model.transform.pixel_values(trace.inputs).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy().astype(np.float64)


def grey(image: np.ndarray) -> np.ndarray:
    """(H, W, C) in [0, 1] -> (H, W) intensity, the mean of the channels as in Itti et al. (I = (r + g + b) / 3)."""
    return image.mean(axis=2)


def spectral_residual(image: np.ndarray, width: int = SPECTRAL_WIDTH, sigma: float = SPECTRAL_SIGMA) -> np.ndarray:
    """Hou & Zhang 2007, eq. 5-9 (and their published five lines of code), on an (H, W) grey image.

    L = log|F(I)|, R = L - h_3 * L (3 x 3 mean), S = g * |F^-1(exp(R + i P))|^2 with P the
    phase and g a Gaussian. Returns S at the working resolution (``width`` pixels wide).
    """
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    small = resize(image, (height, width), anti_aliasing=True)
    spectrum = np.fft.fft2(small)
    log_amplitude = np.log(np.abs(spectrum) + 1e-12)  # + tiny: a zero frequency component would be -inf
    residual = log_amplitude - ndimage.uniform_filter(log_amplitude, size=3, mode="nearest")
    saliency = np.abs(np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))) ** 2
    return ndimage.gaussian_filter(saliency, sigma=sigma, truncate=2.0)


def local_entropy(image: np.ndarray, radius: int | None = None) -> np.ndarray:
    """H(x) = -sum_i p_i log2 p_i over the 256-level histogram of a disk around each pixel
    (scikit-image's rank entropy). ``radius`` defaults to 1/32 of the shorter side (at least 2)."""
    radius = radius or max(2, round(min(image.shape) / 32))
    return entropy((np.clip(image, 0, 1) * 255).round().astype(np.uint8), disk(radius)).astype(np.float64)


def itti_normalise(feature: np.ndarray) -> np.ndarray:
    """Itti et al.'s N(.): scale to [0, 1], then multiply by (1 - m)^2 with m the mean of the other
    local maxima, so that a map with one strong peak counts more than a map with many similar ones."""
    low, high = feature.min(), feature.max()
    if high <= low:
        return np.zeros_like(feature)
    scaled = (feature - low) / (high - low)
    peaks = (scaled == ndimage.maximum_filter(scaled, size=3)) & (scaled > 0) & (scaled < 1)
    others = scaled[peaks].mean() if peaks.any() else 0.0
    return scaled * (1 - others) ** 2


def _pyramid(channel: np.ndarray, levels: int) -> list[np.ndarray]:
    return list(pyramid_gaussian(channel, max_layer=levels, downscale=2))


def _across_scales(channel: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Sum over (center, surround) pairs of N(|I(c) - I(s)|), surround upsampled to the center's
    size, every term resized to ``size`` (Itti et al. eq. 1-2 and the across-scale sum)."""
    levels = _pyramid(channel, max(CENTERS) + max(DELTAS))
    total = np.zeros(size)
    for center in CENTERS:
        for delta in DELTAS:
            surround = center + delta
            if surround >= len(levels) or min(levels[surround].shape) < 2:
                continue  # the image is too small for this pair
            fine = levels[center]
            coarse = resize(levels[surround], fine.shape, order=1)
            total += resize(itti_normalise(np.abs(fine - coarse)), size, order=1)
    return total


def center_surround(image: np.ndarray) -> np.ndarray:
    """Itti, Koch & Niebur 1998: intensity and (for colour images) red-green and blue-yellow
    opponency, center-surround differences over Gaussian pyramids, normalised by N(.) and
    summed. Orientation (Gabor) channels are left out. Returns the map at 1/4 of the input side.
    """
    size = (max(1, image.shape[0] // 2 ** OUTPUT_LEVEL), max(1, image.shape[1] // 2 ** OUTPUT_LEVEL))
    conspicuity = [itti_normalise(_across_scales(grey(image), size))]
    if image.shape[2] == 3:
        r, g, b = image[..., 0], image[..., 1], image[..., 2]
        red, green = r - (g + b) / 2, g - (r + b) / 2
        blue, yellow = b - (r + g) / 2, (r + g) / 2 - np.abs(r - g) / 2 - b
        colour = _across_scales(red - green, size) + _across_scales(blue - yellow, size)
        conspicuity.append(itti_normalise(colour))
    return np.mean(conspicuity, axis=0)


def _per_image(trace: "Trace", model: "ModelSpec", saliency: Callable[[np.ndarray], np.ndarray],
               colour: bool = False) -> torch.Tensor:
    images = pixels(trace, model)
    maps = [saliency(image if colour else grey(image)) for image in images]
    return torch.from_numpy(np.stack(maps)).float()


@register_method(
    "spectral_residual", label="Spectral residual", family="classic",
    description="Model-free: the unexpected part of the image's log amplitude spectrum, back in image space.",
    reference="Hou & Zhang 2007, Saliency Detection: A Spectral Residual Approach, CVPR, eq. 5-9",
)
def spectral_residual_method(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """``spectral_residual`` of each image of the trace, at the input's resolution."""
    return _per_image(trace, model, spectral_residual)


@register_method(
    "local_entropy", label="Local entropy", family="classic",
    description="Model-free: Shannon entropy of the grey levels in a disk around each pixel (texture, detail).",
    reference="Lecture (seed 001), 'Local Entropy'; scikit-image filters.rank.entropy",
)
def local_entropy_method(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """``local_entropy`` of each image of the trace, at the input's resolution."""
    return _per_image(trace, model, local_entropy)


@register_method(
    "center_surround", label="Center-surround", family="classic",
    description="Model-free: fine-minus-coarse contrast over Gaussian pyramids of intensity and colour opponency.",
    reference="Itti, Koch & Niebur 1998, A Model of Saliency-Based Visual Attention, IEEE TPAMI, eq. 1-5",
)
def center_surround_method(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """``center_surround`` of each image of the trace (in colour), at the input's resolution."""
    return _per_image(trace, model, center_surround, colour=True)
