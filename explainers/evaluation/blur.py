"""Insertion's start (RISE, Petsiuk et al. 2018, sec. 4.2): the image blurred as RISE's code blurs it, and the
blur measured per model and images (``insertion_blur``), so that the blurred copy no longer shows the class.

RISE's code (``evaluation.py``) blurs with ``gkern(klen=11, nsig=5)``: a delta in an 11x11 array smoothed by
``scipy.ndimage.gaussian_filter(delta, 5)`` (whose default reflecting boundary folds the Gaussian's tails back
into the 11 pixels: a flatter kernel than a truncated Gaussian, still summing to 1), applied to each channel of
the normalised input by ``conv2d(x, kern, padding=klen // 2)``: zeros beyond the border, i.e. the normalisation
mean. ``rise_kernel`` and ``rise_blur`` are that, for any sigma, with RISE's support ``2 sigma + 1`` (11 for 5).

RISE fixes sigma 5 for 224-pixel ImageNet photos. A blur that leaves the class readable makes insertion
meaningless (every curve starts near its end), and how much blur hides a class depends on the model and the
pictures (the 64-pixel digits stay readable at 5), so the sigma is measured (``faithfulness.insertion_blur``):
the smallest of ``BLUR_LADDER`` whose blurred copy's probability for the class, averaged over the evaluated
images, is below ``BLUR_FRACTION`` of the images' own; when even the strongest does not get there, insertion is flagged.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from ..runtime.errors import UserInputError

__all__ = ["BLUR_FRACTION", "BLUR_LADDER", "BLUR_PADDINGS", "BLUR_SIGMA", "BlurChoice", "rise_blur", "rise_kernel"]

BLUR_SIGMA = 5.0  # RISE's insertion start: gkern(klen=11, nsig=5)
BLUR_LADDER = (5.0, 10.0, 20.0, 40.0)  # the sigmas tried, RISE's first, each twice the last
BLUR_FRACTION = 0.5  # the blurred copy must score below this fraction of the image's own probability, on average
BLUR_PADDINGS = ("zeros", "reflect")  # RISE's conv2d pads with zeros; torchvision's gaussian_blur reflects


@lru_cache(maxsize=32)
def rise_kernel(sigma: float) -> torch.Tensor:
    """RISE's ``gkern(klen, nsig)`` with ``nsig = sigma`` and ``klen = 2 round(sigma) + 1`` (RISE's 11 for 5):
    a delta in a klen x klen array smoothed by ``scipy.ndimage.gaussian_filter`` (its default boundary,
    'reflect', and truncation at 4 sigma), float32 (klen, klen)."""
    klen = 2 * int(round(sigma)) + 1
    delta = np.zeros((klen, klen))
    delta[klen // 2, klen // 2] = 1.0
    return torch.from_numpy(gaussian_filter(delta, sigma).astype(np.float32))


def rise_blur(inputs: torch.Tensor, sigma: float, padding: str = "zeros") -> torch.Tensor:
    """``inputs`` (N, C, H, W), model input values, each channel convolved with ``rise_kernel(sigma)``, beyond
    the border ``padding``: "zeros" (RISE's ``conv2d(..., padding=klen // 2)``; the normalisation mean) or
    "reflect" (torchvision's ``gaussian_blur``'s; needs the kernel's half-width below the image's sides)."""
    if padding not in BLUR_PADDINGS:
        raise ValueError(f"padding is one of {', '.join(BLUR_PADDINGS)}, not {padding!r}")
    kernel = rise_kernel(float(sigma)).to(inputs.device, inputs.dtype)
    channels, half = inputs.shape[1], kernel.shape[-1] // 2
    weight = kernel.expand(channels, 1, *kernel.shape)
    if padding == "zeros":
        return F.conv2d(inputs, weight, padding=half, groups=channels)
    if half >= min(inputs.shape[-2:]):
        raise UserInputError(f"a reflected border of {half} pixels needs an image larger than "
                             f"{inputs.shape[-2]}x{inputs.shape[-1]}: use a smaller blur or zero padding")
    return F.conv2d(F.pad(inputs, [half] * 4, mode="reflect"), weight, groups=channels)


@dataclass(frozen=True)
class BlurChoice:
    """What ``insertion_blur`` measured: ``sigma`` chosen from ``ladder``; ``starts[i]`` the blurred copy's mean
    probability for the class at ``ladder[i]``, ``full`` the images' own mean, over ``images`` images; the
    rule's ``fraction``. ``meaningful``: the chosen blur hides the class (its start below fraction x full)."""

    sigma: float
    ladder: tuple[float, ...]
    starts: tuple[float, ...]
    full: float
    fraction: float
    images: int
    padding: str = "zeros"

    @property
    def start(self) -> float:
        """The chosen blur's mean probability for the class."""
        return self.starts[self.ladder.index(self.sigma)]

    @property
    def meaningful(self) -> bool:
        return self.start < self.fraction * self.full

    @property
    def problem(self) -> str | None:
        """Why insertion cannot rank maps with this blur (the same words in the API and the page), or None."""
        if self.meaningful:
            return None
        return (f"even the strongest blur tried (σ = {self.sigma:g} px, of {self.rule_sigmas}) leaves the class "
                f"visible to the network: the blurred copy that insertion starts from gets p = {self.start:.2f} on "
                f"average, against {self.full:.2f} for the images themselves (the rule asks for below "
                f"{self.fraction:.0%} of it), so every insertion curve starts near its end and the areas differ by "
                "noise")

    @property
    def rule_sigmas(self) -> str:
        return ", ".join(f"{s:g}" for s in self.ladder) + " px"

    def describe(self) -> str:
        """The rule and what it found, in one sentence (Markdown)."""
        tried = "; ".join(f"σ = {s:g}: {p:.2f}" for s, p in zip(self.ladder, self.starts))
        verdict = ("the smallest" if self.meaningful else "none; the strongest,")
        return (f"Insertion's blur is measured: the smallest σ of {self.rule_sigmas} whose blurred copy gets, on "
                f"average over the {self.images} image{'s' if self.images != 1 else ''}, below {self.fraction:.0%} "
                f"of the images' own probability for the class ({self.full:.2f}). Mean probability of the blurred "
                f"copy: {tried}; chosen: {verdict} σ = {self.sigma:g} px.")
