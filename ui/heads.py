"""The Heads page's figures: a layer x head grid (plotly heatmap, one cell per attention head) and one head's
map; the numbers come from the ``textspan`` and ``chili`` methods' extras (``explainers``)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go

__all__ = ["clicked_head", "head_grid", "head_map", "remainder_rows"]


def head_grid(values: np.ndarray, title: str, colour: str = "RdBu", centre: float | None = 0.0,
              text: str = "{:.1%}") -> go.Figure:
    """A (L, H) grid: layer l as row l (first layer on top), head h as column h, each cell its value."""
    layers, heads = values.shape
    figure = go.Figure(go.Heatmap(
        z=values, x=[f"head {h}" for h in range(heads)], y=[f"layer {n}" for n in range(layers)],
        colorscale=colour, zmid=centre, text=[[text.format(v) for v in row] for row in values],
        texttemplate="%{text}", hovertemplate="%{y}, %{x}: %{text}<extra></extra>", reversescale=colour == "RdBu"))
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(title=title, height=90 + 42 * layers, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def head_map(values: np.ndarray, title: str) -> go.Figure:
    """One head's map on the patch grid (h, w), diverging around zero."""
    bound = float(np.abs(values).max()) or 1.0
    figure = go.Figure(go.Heatmap(z=values, colorscale="RdBu", reversescale=True, zmin=-bound, zmax=bound))
    figure.update_yaxes(autorange="reversed", scaleanchor="x", constrain="domain", showticklabels=False,
                        showgrid=False, zeroline=False)
    figure.update_xaxes(constrain="domain", showticklabels=False, showgrid=False, zeroline=False)
    figure.update_layout(title=title, height=360, width=400, margin=dict(l=10, r=10, t=40, b=10))
    return figure


def clicked_head(event: Any, heads: int) -> tuple[int, int] | None:
    """The (layer, head) of the cell clicked in ``head_grid`` (a ``st.plotly_chart`` selection event), or None."""
    points = ((event or {}).get("selection") or {}).get("points") or []
    if not points:
        return None
    point = points[0]
    x, y = point.get("x"), point.get("y")
    if not isinstance(x, str) or not isinstance(y, str):
        return None
    return int(y.split()[-1]), int(x.split()[-1])


def remainder_rows(extras: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The terms of the logit the head grid leaves out, each with its share of logit - bias."""
    total = float(extras["logit_minus_bias"]) or 1.0
    terms = {"all heads (patch + prefix tokens)": float(np.sum(extras["head_scores"])),
             "of which prefix tokens (class, registers)": float(extras["prefix_score"]),
             "MLPs (all layers)": float(np.sum(extras["mlp_scores"])),
             "start (patch + position embedding)": float(extras["start_score"]),
             "biases (W_O biases, norm shifts)": float(extras["bias_score"])}
    rows = [{"term": name, "score": value, "share": value / total} for name, value in terms.items()]
    return rows + [{"term": "logit - head bias", "score": total, "share": 1.0}]
