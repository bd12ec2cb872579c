"""ROAD (Rong et al. 2022, *Remove and Debias*): the most or least relevant pixels removed and imputed."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..imputation import ROAD_NOISE, ROAD_UNITS
from ..perturbation import ImputedInput, PerturbationPlan, removal_mask
from .base import Constant, MappedImage, Metric, Score, register_metric

if TYPE_CHECKING:
    from ..result import Evaluation
    from ..settings import EvaluationSettings

__all__ = ["ROAD_FRACTIONS", "RoadMetric"]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Rong et al.'s removal fractions


@register_metric
class RoadMetric(Metric):
    """The most (MoRF) or least (LeRF) relevant fraction of the pixels removed and filled in by noisy linear
    imputation (``noisy_linear_imputation``), for each fraction of ``settings.road_fractions``: the probability
    after MoRF removal should fall fast, after LeRF removal stay high. Keeps ``morf[method]`` and
    ``lerf[method]`` (N, fractions); the imputation's noise is seeded by what is removed, so two maps that
    remove the same pixels share one input."""

    name = "road"
    label = "ROAD"
    reference = "Rong et al. 2022"
    section = "ROAD: remove and debias"
    scores = (Score("morf", "MoRF", higher_is_better=False), Score("lerf", "LeRF", higher_is_better=True),
              Score("gap", "gap (LeRF − MoRF)", higher_is_better=True))
    arrays = ("morf", "lerf")
    curves = {"morf": "MoRF", "lerf": "LeRF"}
    curve_axis = "fraction removed"
    constants = (
        Constant("road_fractions", ROAD_FRACTIONS, "Rong et al.'s removal fractions (the page offers five of them "
                 "or all nine)", "10%, 20%, ..., 90%", "the page's five levels are a subset, for speed"),
        Constant("road_noise", ROAD_NOISE, "NoisyLinearImputer(noise=0.01)", "0.01, the authors' default"),
        Constant("road_units", ROAD_UNITS[0], "the [0, 1] image before the model's normalisation, as the authors' "
                 "code imputes it", "[0, 1] pixels", "'model' adds the noise to the normalised input instead, 1/std "
                 "times less noise in pixels (0.3-0.5x), as here until now (50 test digits, B4 Grad-CAM: MoRF "
                 "0.476 and LeRF 0.634 there, 0.471 and 0.643 in pixels)"),
        Constant("neighbour weights", "1/6 direct, 1/12 diagonal", "imputation.NEIGHBOURS", "the authors' code"),
        Constant("ties", "a seeded random permutation (settings.seed)", "pixel_order, as deletion's", "the authors' "
                 "code leaves ties to its sort", "a stated, position-free order"),
    )
    off_note = ("ROAD is off for photos: it solves a sparse system per removal level, about 2 s per image and method "
                "at 224x224. Turn it on under *Metric settings*.")

    def plan(self, plan: PerturbationPlan, case: MappedImage) -> dict[str, int | list[int]]:
        pixels, seed = case.pixels, case.settings.seed
        counts = [int(round(f * pixels)) for f in case.settings.road_fractions]
        return {"morf": [plan.add(ImputedInput(case.image, removal_mask(case.order[:k], pixels), seed))
                         for k in counts],
                "lerf": [plan.add(ImputedInput(case.image, removal_mask(case.order[pixels - k:], pixels), seed))
                         for k in counts]}

    def positions(self, settings: EvaluationSettings, pixels: int) -> np.ndarray:
        return np.asarray(settings.road_fractions)

    def summary(self, found: Evaluation, method: str) -> dict[str, float]:
        morf, lerf = float(found.morf[method].mean()), float(found.lerf[method].mean())
        return {"morf": morf, "lerf": lerf, "gap": lerf - morf}

    def caption(self, settings: EvaluationSettings) -> str:
        return ("The most relevant (MoRF) or least relevant (LeRF) pixels are removed and filled in from their "
                "neighbours, with a little noise, so that the shape of the hole tells the network nothing. Mean "
                f"probability over the removal levels ({', '.join(f'{f:.0%}' for f in settings.road_fractions)}) and "
                "images. **Good: a low MoRF, a high LeRF, a large gap** (LeRF − MoRF).")
