"""Pictures of maps: the signed overlay shows the image where the evidence is zero, and colour in
proportion to |value|; the colour bars run the way the captions say."""
from __future__ import annotations

import numpy as np
from PIL import Image

from explainers.display.render import GHOST_FLOOR, cells, colour_bar, diverging, measured_time, overlay


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


def _digit_and_positive_cam():
    """A dark digit (white stroke on black) and a CAM with no negative part, peaking on the stroke."""
    image = np.zeros((64, 64), dtype=np.uint8)
    image[8:56, 28:36] = 255
    y, x = np.mgrid[0:64, 0:64]
    cam = (3.0 + 4.0 * np.exp(-((x - 32) ** 2 + (y - 30) ** 2) / 300.0)).astype(np.float32)  # 3 .. 7, all > 0
    return Image.fromarray(image), cam


def test_maps_equal_up_to_scale_look_alike_whether_or_not_they_are_signed():
    """At B4 of a GAP head Grad-CAM = ReLU(CAM) / (h w): for a CAM with no negative part the two
    pictures must be the same, not a maroon sheet beside a full-contrast map."""
    image, cam = _digit_and_positive_cam()
    gradcam = np.maximum(cam, 0) / 16
    for cmap in ("jet", "viridis"):
        signed = np.asarray(overlay(image, cam, signed=True, cmap=cmap, size=128)).astype(int)
        unsigned = np.asarray(overlay(image, gradcam, signed=False, cmap=cmap, size=128)).astype(int)
        assert np.abs(signed - unsigned).max() <= 1, cmap
        assert np.array_equal(np.asarray(cells(cam[::16, ::16], True, cmap)), np.asarray(cells(gradcam[::16, ::16], False, cmap)))
    picture = np.asarray(overlay(image, cam, signed=True, opacity=0.5)).astype(int)
    peak, corner = picture[30, 32], picture[2, 2]
    assert np.abs(peak - corner).sum() > 200, "a positive signed map shows its shape, not one uniform colour"
    assert not diverging(cam, True) and not diverging(np.zeros_like(cam), True)


def test_a_signed_map_with_a_negative_part_keeps_zero_white_and_its_sign():
    _, cam = _digit_and_positive_cam()
    mixed = cam - 5.0  # -2 .. +2
    assert diverging(mixed, True) and not diverging(mixed, False)
    assert diverging(-cam, True), "all negative: every value argues against the class, drawn blue"
    assert not diverging(cam - 3.0 - 0.001, True), "a negative part too small to see is no negative part"
    coloured = np.asarray(cells(mixed, True, size=64)).astype(int)
    top_left, centre = coloured[0, 0], coloured[30, 32]
    assert top_left[2] > top_left[0] + 50 and centre[0] > centre[2] + 50, "blue below zero, red above"


def test_durations_below_a_millisecond_are_shown_as_such():
    assert measured_time(0.0) == "<0.01 ms"
    assert measured_time(4e-6) == "<0.01 ms"
    assert measured_time(0.00031) == "0.31 ms"
    assert measured_time(0.0009996) == "1.00 ms"
    assert measured_time(0.0028) == "2.8 ms"
    assert measured_time(0.2509) == "251 ms"
    assert measured_time(0.9996) == "1.00 s"
    assert measured_time(34.587) == "34.6 s"
    assert measured_time(125.0) == "2 min 05 s"
    assert all("0.0 ms" not in measured_time(s) for s in np.linspace(0, 0.002, 201))


def test_the_page_css_hooks_exist_in_this_streamlit():
    """ui/style.py keys its CSS on names in Streamlit's front end (the app root's websocket state and
    the multiselect's chip container): an upgrade that renames them would silently drop the
    lost-connection banner or clip the chosen methods again."""
    from pathlib import Path

    import streamlit

    from ui.style import BANNER, CHIPS

    bundle = "".join(path.read_text(errors="replace")
                     for path in (Path(streamlit.__file__).parent / "static" / "static" / "js").glob("*.js"))
    for hook in ("data-test-connection-state", "stMultiSelectTagsContainer", "PINGING_SERVER", "CONNECTING",
                 "DISCONNECTED_FOREVER"):
        assert hook in bundle, hook
        assert hook in BANNER + CHIPS, hook
