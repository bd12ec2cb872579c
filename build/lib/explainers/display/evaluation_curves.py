"""The evaluation's curves as PNG files (matplotlib's object API: no pyplot state, safe in any thread).

The dashboard draws the same data with plotly; these are what its download buttons offer.
"""
from __future__ import annotations

import io
from typing import Mapping

import pandas as pd
from matplotlib.figure import Figure

__all__ = ["evaluation_curves_png"]


def evaluation_curves_png(curves: pd.DataFrame, panel_column: str, labels: Mapping[str, str] | None = None,
               title: str = "", ylabel: str = "probability of the class") -> bytes:
    """One panel per value of ``panel_column`` ("curve": deletion / insertion, "order": MoRF / LeRF), one
    line per method: the mean ``probability`` over images at each ``fraction``. Returns PNG bytes."""
    labels = dict(labels or {})
    panels = list(dict.fromkeys(curves[panel_column]))
    figure = Figure(figsize=(5 * max(1, len(panels)), 3.8), dpi=120, layout="constrained")
    axes = figure.subplots(1, max(1, len(panels)), squeeze=False)[0]
    means = curves.groupby([panel_column, "method", "fraction"], sort=False)["probability"].mean().reset_index()
    for axis, panel in zip(axes, panels):
        for method, line in means[means[panel_column] == panel].groupby("method", sort=False):
            axis.plot(line["fraction"], line["probability"], marker=".", label=labels.get(method, method))
        axis.set_title(panel)
        axis.set_xlabel("fraction of pixels")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize=8, loc="best")
    if title:
        figure.suptitle(title)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
