"""Turning maps into pictures: colour maps, overlays and the downloadable grid.

Signed maps (CAM, HiResCAM, relevance, attribution) that have a negative part use a diverging
colour map centred on zero, red for positive and blue for negative; unsigned maps, and signed
maps with no negative part, are scaled to [0, 1] per panel on the chosen sequential one (see
``diverging``), so maps equal up to a scale look the same.
"""
from __future__ import annotations

import functools
from typing import Sequence

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..runtime.maps import normalise

DIVERGING = "RdBu_r"
GHOST_FLOOR = 150.0  # black in the image becomes this grey under a signed map
SEQUENTIAL = ("jet", "turbo", "inferno", "viridis", "magma")
NEGLIGIBLE = 0.01  # a negative part above -1 % of the peak |value| would be white on the diverging scale


def diverging(heatmap: np.ndarray, signed: bool) -> bool:
    """Whether a map is drawn on the diverging scale: a signed map with a negative part to show.

    A signed map with none (CAM of a confidently predicted class, whose Grad-CAM at a GAP head is
    the same map divided by h·w) drawn around zero would be a sheet of red whose shape only shows
    in shades of maroon, beside its own Grad-CAM in full contrast: a teacher would read one map as
    two that disagree. It is drawn like the unsigned maps instead, min to max on the sequential
    map. Maps with negative values (however many) keep zero at white and blue for the negatives.
    """
    if not signed:
        return False
    heatmap = np.asarray(heatmap, dtype=np.float32)
    peak = float(np.abs(heatmap).max()) if heatmap.size else 0.0
    return peak > 0 and float(heatmap.min()) < -NEGLIGIBLE * peak


def measured_time(seconds: float) -> str:
    """A measured time for people: "<0.01 ms", "0.31 ms", "2.8 ms", "251 ms", "1.25 s", "35.2 s", "2 min 05 s"."""
    ms = seconds * 1000
    if ms < 0.01:
        return "<0.01 ms"
    if ms < 1:
        return f"{ms:.2f} ms"
    if ms < 100:
        return f"{ms:.1f} ms"
    if ms < 999.5:
        return f"{ms:.0f} ms"
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def colorize(heatmap: np.ndarray, signed: bool = False, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 picture of a map: sequential colours on [0, 1], or diverging on [-1, 1] when signed
    with a negative part (``diverging``)."""
    signed = diverging(heatmap, signed)
    return colorize_scaled(normalise(heatmap, signed), signed, cmap)


@functools.lru_cache(maxsize=None)
def colormap(name: str) -> matplotlib.colors.Colormap:
    """matplotlib's colormap ``name``, made once: ``matplotlib.colormaps[name]`` returns a new copy each time,
    whose first call builds its lookup table again (about 1 ms, a third of an overlay's time)."""
    return matplotlib.colormaps[name]


def colorize_scaled(scaled: np.ndarray, signed: bool = False, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 colours of values already scaled to [0, 1] (or [-1, 1] when signed)."""
    if signed:
        colours = colormap(DIVERGING)((scaled + 1) / 2)
    else:
        colours = colormap(cmap)(scaled)
    return (colours[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, signed: bool = False, cmap: str = "jet",
            opacity: float = 0.5, size: int | None = None) -> Image.Image:
    """The map drawn over the image, both resized (bilinear) to ``size`` pixels a side if given.

    A sequential map (unsigned, or signed with no negative part: ``diverging``) is blended with
    the image at ``opacity``. A signed map with a negative part is laid on a faint
    grey copy of the image with an opacity that grows with |value| (at the default 0.5, the
    peak's colour is opaque and half the peak's half so): where the evidence is zero the image
    shows through, and the image's own brightness cannot pass for red or blue.
    """
    base = image.convert("RGB")
    if size:
        base = base.resize((size, size), Image.Resampling.BILINEAR)
    opacity = float(np.clip(opacity, 0.0, 1.0))
    signed = diverging(heatmap, signed)
    scaled = normalise(heatmap, signed)
    colours = Image.fromarray(colorize_scaled(scaled, signed, cmap)).resize(base.size, Image.Resampling.BILINEAR)
    if not signed:
        return Image.blend(base, colours, opacity)
    grey = np.asarray(base.convert("L"), dtype=np.float32)[..., None]
    faint = GHOST_FLOOR + (255 - GHOST_FLOOR) * grey / 255
    strength = Image.fromarray(np.abs(scaled).astype(np.float32), mode="F")
    alpha = np.clip(2 * opacity * np.asarray(strength.resize(base.size, Image.Resampling.BILINEAR)), 0, 1)[..., None]
    blended = faint * (1 - alpha) + np.asarray(colours, dtype=np.float32) * alpha
    return Image.fromarray(blended.round().astype(np.uint8))


def colour_bar(signed: bool = False, cmap: str = "jet", width: int = 240, height: int = 12) -> Image.Image:
    """The colour scale as a horizontal bar: 0 -> 1 for sequential maps, -1 -> 0 -> +1 when signed."""
    ramp = np.linspace(-1 if signed else 0, 1, width, dtype=np.float32)
    colours = colorize_scaled(ramp, signed, cmap)
    return Image.fromarray(np.repeat(colours[None], height, axis=0))


def cells(heatmap: np.ndarray, signed: bool = False, cmap: str = "jet", size: int = 256) -> Image.Image:
    """A block-resolution map shown as its cells (nearest-neighbour), to see what the block really sees."""
    return Image.fromarray(colorize(heatmap, signed, cmap)).resize((size, size), Image.Resampling.NEAREST)


def grid(panels: Sequence[tuple[str, Image.Image]], columns: int = 4, caption_height: int = 22) -> Image.Image:
    """Panels with their titles on a white sheet, ``columns`` a row: the PNG the page offers for download."""
    width = max(p.width for _, p in panels)
    height = max(p.height for _, p in panels) + caption_height
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    for i, (title, panel) in enumerate(panels):
        x, y = (i % columns) * width, (i // columns) * height
        sheet.paste(caption(title, width, caption_height), (x, y))
        sheet.paste(panel.convert("RGB"), (x, y + caption_height))
    return sheet


@functools.lru_cache(maxsize=256)
def caption(title: str, width: int, height: int) -> Image.Image:
    """A panel's title in black on white, drawn once per (title, size): a sheet of many images repeats
    the same few titles, and drawing text is a third of a sheet's time."""
    strip = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(strip).text((4, 4), title, fill="black", font=ImageFont.load_default())
    return strip


QUALITATIVE = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45",
               "#fabed4", "#469990", "#dcbeff", "#9a6324", "#800000", "#aaffc3", "#808000", "#000075")


def segment_palette(segments: np.ndarray) -> dict[int, str]:
    """A distinct colour for every segment present, largest segment first (hex strings)."""
    ids, sizes = np.unique(segments, return_counts=True)
    ordered = ids[np.argsort(-sizes, kind="stable")]
    return {int(k): QUALITATIVE[i % len(QUALITATIVE)] for i, k in enumerate(ordered)}


def _rgb(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i:i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def segment_overlay(image: Image.Image, segments: np.ndarray, palette: dict[int, str], size: int,
                    opacity: float = 0.6, borders: bool = True) -> Image.Image:
    """The explanation map (eq. 9) painted over the image, one colour per segment, with outlines."""
    colours = np.zeros(segments.shape + (3,), dtype=np.uint8)
    for segment, colour in palette.items():
        colours[segments == segment] = _rgb(colour)
    painted = Image.fromarray(colours).resize((size, size), Image.Resampling.NEAREST)
    result = Image.blend(image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR), painted, opacity)
    if borders:
        labels = np.asarray(Image.fromarray(segments.astype(np.int32)).resize((size, size), Image.Resampling.NEAREST))
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:-1] |= labels[:-1] != labels[1:]
        edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        pixels = np.asarray(result).copy()
        pixels[edge] = 255
        result = Image.fromarray(pixels)
    return result


def framed_patch(image: Image.Image, box: tuple[int, int, int, int], colour: str, size: int = 112,
                 border: int = 5) -> Image.Image:
    """The training image with its patch ``box`` outlined, framed in the segment's ``colour``
    (seed 000, Figure 1). The whole image is kept so a small patch is seen in its context."""
    scale = (size - 2 * border) / image.width
    picture = image.convert("RGB").resize((size - 2 * border, round(image.height * scale)), Image.Resampling.BILINEAR)
    left, top, right, bottom = (round(v * scale) for v in box)
    ImageDraw.Draw(picture).rectangle((left, top, right - 1, bottom - 1), outline=_rgb(colour), width=3)
    return outlined(picture, colour, border)


def outlined(image: Image.Image, colour: str, border: int = 6) -> Image.Image:
    """``image`` with a frame of ``colour``."""
    framed = Image.new("RGB", (image.width + 2 * border, image.height + 2 * border), _rgb(colour))
    framed.paste(image.convert("RGB"), (border, border))
    return framed
