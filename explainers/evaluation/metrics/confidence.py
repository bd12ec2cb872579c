"""Confidence drop and increase (seed 002, eq. 23): the image times its map scaled to [0, 1]."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..perturbation import PerturbationPlan, ScaledInput, unit_scaled
from .base import Constant, MappedImage, Metric, Score, register_metric

if TYPE_CHECKING:
    from ..result import Evaluation
    from ..settings import EvaluationSettings

__all__ = ["ConfidenceMetric"]


@register_metric
class ConfidenceMetric(Metric):
    """Feng et al. 2023, *Cluster-CAM* (seed 002), eq. 23: the input times its map, X o H, with H = s(Up(map))
    the map upsampled and min-max scaled to [0, 1] (eq. 9's s, ``unit_scaled``); drop = mean over images of
    max(0, S_c(X) - S_c(X o H)) / S_c(X), in %, and increase = % of images with S_c(X o H) > S_c(X), S_c the
    softmax probability of the target. Keeps ``masked[method]``, S_c(X o H) per image."""

    name = "confidence"
    label = "Confidence drop and increase"
    reference = "seed 002, Table 1, eq. 23"
    section = "Confidence drop and increase"
    scores = (Score("drop", "drop (%)", higher_is_better=False, format="%.2f"),
              Score("increase", "increase (%)", higher_is_better=True, format="%.1f"))
    arrays = ("masked",)
    constants = (
        Constant("H", "s(Up(map)), min-max scaled to [0, 1]", "unit_scaled", "seed 002, eqs. 9 and 23",
                 "only where the paper is silent: a constant map is all ones (min-max would be 0/0)"),
        Constant("X o H", "the normalised input times H", "as pytorch-grad-cam, and as Score-CAM's and Cluster-CAM's "
                 "own masks here", "seed 002 eq. 19's masking"),
        Constant("drop", "relative, max(0, S(X) - S(X o H)) / S(X)", "seed 002, eq. 23", "seed 002, eq. 23",
                 "not from the paper; pytorch-grad-cam's is absolute and signed"),
    )

    def plan(self, plan: PerturbationPlan, case: MappedImage) -> dict[str, int | list[int]]:
        unit = unit_scaled(case.heatmap)
        if bool((unit == 1).all()):  # H all ones: X o H is the plain image
            return {"masked": case.plain}
        return {"masked": plan.add(ScaledInput(case.image, unit))}

    def summary(self, found: Evaluation, method: str) -> dict[str, float]:
        masked = found.masked[method]
        drop = np.maximum(0.0, found.original - masked) / found.original
        return {"drop": 100 * float(drop.mean()), "increase": 100 * float((masked > found.original).mean())}

    def caption(self, settings: EvaluationSettings) -> str:
        return ("The image is multiplied by its map scaled to [0, 1] (X ∘ H, on the normalised input: a hidden pixel "
                "becomes the normalisation mean). **Good: a low drop and a high increase** — the map keeps what the "
                "network needs. The drop here is *relative*, as in seed 002's eq. 23: max(0, S(X) − S(X∘H)) / S(X) "
                "per image, averaged. pytorch-grad-cam's confidence change is *absolute* and signed: S(X∘H) − S(X) "
                "averaged, so images whose probability rises cancel those where it falls, and a drop from 0.9 to 0.8 "
                "counts like one from 0.2 to 0.1 (here 11% against 50%).")
