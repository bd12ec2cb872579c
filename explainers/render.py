"""Turning maps into pictures: colour maps, overlays and the downloadable grid.

Signed maps (CAM, HiResCAM, relevance, attribution) use a diverging colour map centred on
zero, red for positive and blue for negative; unsigned maps use the chosen sequential one.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .maps import normalise

DIVERGING = "RdBu_r"
SEQUENTIAL = ("jet", "turbo", "inferno", "viridis", "magma")


def colorize(heatmap: np.ndarray, signed: bool = False, cmap: str = "jet") -> np.ndarray:
    """RGB uint8 picture of a map: sequential colours on [0, 1], or diverging on [-1, 1] when signed."""
    import matplotlib

    scaled = normalise(heatmap, signed)
    if signed:
        colours = matplotlib.colormaps[DIVERGING]((scaled + 1) / 2)
    else:
        colours = matplotlib.colormaps[cmap](scaled)
    return (colours[..., :3] * 255).astype(np.uint8)


def overlay(image: Image.Image, heatmap: np.ndarray, signed: bool = False, cmap: str = "jet",
            opacity: float = 0.5, size: int | None = None) -> Image.Image:
    """The map drawn over the image, both resized (bilinear) to ``size`` pixels a side if given."""
    base = image.convert("RGB")
    if size:
        base = base.resize((size, size), Image.BILINEAR)
    colours = Image.fromarray(colorize(heatmap, signed, cmap)).resize(base.size, Image.BILINEAR)
    return Image.blend(base, colours, float(np.clip(opacity, 0.0, 1.0)))


def cells(heatmap: np.ndarray, signed: bool = False, cmap: str = "jet", size: int = 256) -> Image.Image:
    """A block-resolution map shown as its cells (nearest-neighbour), to see what the block really sees."""
    return Image.fromarray(colorize(heatmap, signed, cmap)).resize((size, size), Image.NEAREST)


def grid(panels: Sequence[tuple[str, Image.Image]], columns: int = 4, caption_height: int = 22) -> Image.Image:
    """Panels with their titles on a white sheet, ``columns`` a row: the PNG the page offers for download."""
    width = max(p.width for _, p in panels)
    height = max(p.height for _, p in panels) + caption_height
    rows = -(-len(panels) // columns)
    sheet = Image.new("RGB", (columns * width, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, (title, panel) in enumerate(panels):
        x, y = (i % columns) * width, (i // columns) * height
        draw.text((x + 4, y + 4), title, fill="black", font=font)
        sheet.paste(panel.convert("RGB"), (x, y + caption_height))
    return sheet
