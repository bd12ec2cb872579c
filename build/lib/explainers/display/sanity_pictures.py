"""Pictures of a randomisation check (``explainers.evaluation.sanity``): each method's maps along the
randomisation steps, and the similarity curves as a PNG (matplotlib's object API, no pyplot state, so
that a server's sessions can draw at once)."""
from __future__ import annotations

import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from ..evaluation.sanity import ORIGINAL, RandomizationResult
from ..methods import method_info
from .render import QUALITATIVE, grid, overlay

__all__ = ["maps_sheet", "sanity_curves_png", "step_label", "step_pictures"]


def step_label(result: RandomizationResult, step: str) -> str:
    """What a step means, in a few words: "original", "→ B3" (cascading: randomised from the top down to B3),
    "B3 only" (independent)."""
    if step == ORIGINAL:
        return "original"
    return f"→ {step}" if result.mode == "cascading" else f"{step} only"


def step_pictures(result: RandomizationResult, method: str, image: Image.Image, size: int = 160,
                  opacity: float = 0.5, cmap: str = "jet", index: int = 0) -> list[tuple[str, Image.Image | None]]:
    """The maps of kept image ``index`` for ``method`` at every step, drawn over ``image`` as the Saliency page
    draws them; (step, None) where the method gave no map at that step."""
    maps = result.maps[method]
    return [(step, overlay(image, maps[step][index], result.signed[method], cmap, opacity, size)
             if step in maps else None) for step in result.steps]


def maps_sheet(result: RandomizationResult, image: Image.Image, size: int = 160, cmap: str = "jet") -> Image.Image:
    """Every method's row of maps (one column per step) on one sheet, titled, for download."""
    blank = Image.new("RGB", (size, size), "#eeeeee")
    panels = []
    for method in result.methods:
        label = method_info(method).label
        for step, picture in step_pictures(result, method, image, size, cmap=cmap):
            panels.append((f"{label} · {step_label(result, step)}", picture if picture is not None else blank))
    return grid(panels, columns=len(result.steps))


def sanity_curves_png(result: RandomizationResult, dpi: int = 110) -> bytes:
    """Mean rank correlation (left, with the flagging threshold) and SSIM (right) of each method's maps with
    the original ones, along the steps; a PNG."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, sharex=True)
    steps = np.arange(len(result.steps))
    for number, method in enumerate(result.methods):
        rows = result.table[result.table.method == method].set_index("step").reindex(result.steps)
        colour = QUALITATIVE[number % len(QUALITATIVE)]
        label = method_info(method).label
        left.plot(steps, rows.spearman, marker="o", color=colour, label=label)
        right.plot(steps, rows.ssim, marker="o", color=colour, label=label)
    left.axhline(result.threshold, color="grey", linestyle="--", linewidth=1)
    left.text(0, result.threshold + 0.02, f"flagged at or above {result.threshold:g}", color="grey", fontsize=8)
    for axis, title in ((left, "Spearman rank correlation of |map|"), (right, "SSIM of |map| scaled to [0, 1]")):
        axis.set_title(title, fontsize=10)
        axis.set_xticks(steps, [step_label(result, s) for s in result.steps], rotation=30, fontsize=8)
        axis.set_ylim(-1.05 if axis is left else -0.05, 1.05)
        axis.grid(alpha=0.3)
    left.set_xlabel(f"{result.mode} randomisation", fontsize=9)
    right.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
