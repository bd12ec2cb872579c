"""Pictures of maps: the signed overlay shows the image where the evidence is zero, and colour in
proportion to |value|; the colour bars run the way the captions say."""
from __future__ import annotations

import numpy as np
from PIL import Image

from explainers.render import GHOST_FLOOR, colour_bar, overlay


def test_signed_overlay_shows_a_faint_image_where_the_map_is_zero_and_colour_where_it_peaks():
    image = Image.fromarray(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1)))  # dark to bright
    heatmap = np.zeros((32, 32), dtype=np.float32)
    heatmap[:, :8] = 1.0  # positive evidence on the dark left edge
    heatmap[:, -8:] = -1.0  # negative on the bright right edge
    picture = np.asarray(overlay(image, heatmap, signed=True, opacity=0.5)).astype(int)
    middle = picture[16, 16]
    assert middle[0] == middle[1] == middle[2] and middle[0] >= GHOST_FLOOR, "zero evidence: the image, in grey"
    left, right = picture[16, 2], picture[16, -3]
    assert left[0] > max(left[1], left[2]) + 50, "positive is red, even over black"
    assert right[2] > max(right[0], right[1]) + 30, "negative is blue, even over white"
    faint = np.asarray(overlay(image, heatmap, signed=True, opacity=0.0)).astype(int)
    assert (faint[..., 0] == faint[..., 2]).all(), "opacity 0: no colour at all"


def test_colour_bars_run_from_blue_through_white_to_red_and_along_the_sequential_map():
    bar = np.asarray(colour_bar(signed=True, width=101, height=4)).astype(int)
    assert bar.shape == (4, 101, 3)
    assert bar[0, 0, 2] > bar[0, 0, 0] and bar[0, -1, 0] > bar[0, -1, 2]
    assert bar[0, 50].min() > 230, "zero is (near) white"
    jet = np.asarray(colour_bar(signed=False, cmap="jet", width=100)).astype(int)
    assert jet[0, 0, 2] > jet[0, 0, 0] and jet[0, -1, 0] > jet[0, -1, 2], "jet: blue (0) to red (1)"
