"""Classic image saliency: each finds the odd region of a synthetic image, and ignores model and class."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import digits_model, digits_test_batch, one_thread, random_torchvision
from PIL import Image

from explainers import explain, explain_many, method_info, trace
from explainers.methods import classic as C

CLASSIC = ("spectral_residual", "local_entropy", "center_surround")


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def pop_out(odd: tuple[int, int], seed: int, size: int = 64, period: int = 8, length: int = 5) -> np.ndarray:
    """Short horizontal bars on a jittered lattice, one vertical bar in cell ``odd`` (Hou & Zhang's
    psychophysics patterns): a regular texture with one odd element."""
    rng = np.random.default_rng(seed)
    image = np.zeros((size, size))
    for i in range(size // period):
        for j in range(size // period):
            cy, cx = i * period + period // 2 + rng.integers(-1, 2), j * period + period // 2 + rng.integers(-1, 2)
            if (i, j) == odd:
                image[cy - length // 2:cy + length // 2 + 1, cx] = 1
            else:
                image[cy, cx - length // 2:cx + length // 2 + 1] = 1
    return image


@pytest.mark.parametrize("odd,seed", [((5, 2), 0), ((2, 6), 1), ((4, 4), 2), ((1, 1), 3)])
def test_spectral_residual_peaks_on_the_odd_element_of_a_regular_texture(odd, seed):
    image = pop_out(odd, seed)
    saliency = C.spectral_residual(image)
    assert saliency.shape == (64, 64)
    row, col = np.unravel_index(saliency.argmax(), saliency.shape)
    assert (row // 8, col // 8) == odd
    same_texture = pop_out((-1, -1), seed)  # no odd element: no such peak
    assert C.spectral_residual(same_texture).max() < 0.5 * saliency.max()


def test_local_entropy_is_high_on_texture_and_zero_on_flat_regions():
    rng = np.random.default_rng(0)
    image = np.full((64, 64), 0.5)
    image[10:30, 36:56] = rng.random((20, 20))
    entropy = C.local_entropy(image, radius=2)
    assert entropy.shape == (64, 64)
    assert entropy[15:25, 41:51].min() > 3.0, "a 13-pixel disk of noise has several bits of entropy"
    assert entropy[40:, :30].max() == 0.0, "a flat region has none"


def test_center_surround_finds_a_spot_and_a_colour_that_intensity_cannot_see():
    rng = np.random.default_rng(1)
    grey = np.full((64, 64, 3), 0.3) + rng.normal(0, 0.02, (64, 64, 1))
    grey[40:48, 12:20] = 0.9
    saliency = C.center_surround(np.clip(grey, 0, 1))
    assert saliency.shape == (16, 16)
    row, col = np.unravel_index(saliency.argmax(), saliency.shape)
    assert 40 // 4 - 1 <= row <= 48 // 4 and 12 // 4 - 1 <= col <= 20 // 4
    colour = np.zeros((64, 64, 3))
    colour[..., 1] = 0.6  # green everywhere
    colour[16:24, 40:48] = (0.6, 0.0, 0.0)  # a red patch of the same intensity
    assert np.ptp(colour.mean(axis=2)) == 0, "intensity alone cannot see the patch"
    saliency = C.center_surround(colour)
    row, col = np.unravel_index(saliency.argmax(), saliency.shape)
    assert 3 <= row <= 6 and 9 <= col <= 12


def test_pixels_undo_the_models_normalisation():
    model = digits_model()
    image = Image.fromarray((np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8))
    recorded = trace(model, model.transform(image)[None])
    assert np.allclose(C.pixels(recorded, model)[0, ..., 0], np.asarray(image) / 255, atol=1e-6)


def test_classic_methods_ignore_model_and_class_and_cost_no_pass_of_their_own():
    model = digits_model()
    image = digits_test_batch(1)[0][0]
    first = explain_many(model, image, list(CLASSIC), target=1)
    other = explain_many(model, image, list(CLASSIC), target=7, block="B2")
    model.net.fc.weight.data.normal_()  # a different network
    changed = explain_many(model, image, list(CLASSIC), target=1)
    for name in CLASSIC:
        assert method_info(name).family == "classic" and not method_info(name).needs_gradients
        assert np.array_equal(first[name].raw, other[name].raw), name
        assert np.array_equal(first[name].raw, changed[name].raw), name
        assert first[name].forwards == 1 and first[name].backwards == 0
        assert first[name].heatmap.shape == (64, 64) and float(first[name].raw.max()) > 0


def test_classic_methods_work_on_colour_models():
    model = random_torchvision("resnet18")
    image = torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(0))
    for name in CLASSIC:
        result = explain(model, image, name)
        assert result.heatmap.shape == (224, 224) and np.isfinite(result.heatmap).all()
