"""Deletion and insertion (Petsiuk et al. 2018, *RISE*, sec. 4.2): probability curves as pixels go or come back."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..perturbation import (
    BaselineInput,
    BlurredInput,
    DeletedInput,
    InsertedInput,
    Perturbation,
    PerturbationPlan,
    removal_mask,
    step_counts,
)
from .base import Constant, MappedImage, Metric, Score, register_metric

if TYPE_CHECKING:
    from ..result import Evaluation
    from ..settings import EvaluationSettings

__all__ = ["BLUR_SIGMA", "STEPS", "DeletionMetric", "InsertionMetric", "PixelCurveMetric"]

STEPS = 20  # deletion/insertion steps: 5% of the pixels each (RISE uses one row of pixels per step)
BLUR_SIGMA = 5.0  # RISE's insertion start: gaussian_blur(klen=11, nsig=5)


class PixelCurveMetric(Metric):
    """Pixels removed from (deletion) or restored into (insertion) the image in the order of the map, in
    ``settings.steps`` equal steps (``step_counts``); the target's probability after each step is a curve over
    the fraction of pixels, kept as ``<name>[method]`` (N, steps + 1), and its area by the trapezoid rule
    (``areas``) is the score. A subclass says what a step's input is (``step``)."""

    reference = "Petsiuk et al. 2018, RISE, sec. 4.2"
    section = "Deletion and insertion (RISE)"
    curves_per_image = True
    curve_axis = "fraction of pixels"

    def step(self, case: MappedImage, taken: int) -> Perturbation | None:
        """The input once the first ``taken`` pixels of ``case.order`` are taken; None: the plain image."""
        raise NotImplementedError

    def plan(self, plan: PerturbationPlan, case: MappedImage) -> dict[str, int | list[int]]:
        found = []
        for taken in step_counts(case.pixels, case.settings.steps):
            perturbation = self.step(case, taken)
            found.append(case.plain if perturbation is None else plan.add(perturbation))
        return {self.name: found}

    def positions(self, settings: EvaluationSettings, pixels: int) -> np.ndarray:
        return step_counts(pixels, settings.steps) / pixels

    def areas(self, found: Evaluation, method: str) -> np.ndarray:
        """Each image's area under ``method``'s curve (N,), by the trapezoid rule over the fraction of pixels."""
        return np.trapezoid(getattr(found, self.name)[method], self.positions(found.settings, found.pixels), axis=1)

    def summary(self, found: Evaluation, method: str) -> dict[str, float]:
        return {self.name: float(np.mean(self.areas(found, method)))}

    def preamble(self, settings: EvaluationSettings) -> str:
        return (f"Pixels are taken in the order of the map, most relevant first, in {settings.steps} steps; the area "
                "under each probability curve is by the trapezoid rule over the fraction of pixels.")


@register_metric
class DeletionMetric(PixelCurveMetric):
    """RISE's deletion: the first pixels of the map's order set to a constant, the mean pixel of the model's
    training data (``deletion_baseline``); a faithful map makes the class vanish fast: a low area."""

    name = "deletion"
    label = "Deletion"
    scores = (Score("deletion", "deletion AUC", higher_is_better=False),)
    arrays = ("deletion",)
    curves = {"deletion": "deletion"}
    constants = (
        Constant("steps", STEPS, "5% of the pixels per step here; RISE uses one row of pixels per step"),
        Constant("baseline", "the mean pixel of the model's training data", "RISE sec. 4.2 removes pixels to a "
                 "constant; ImageNet's mean for an ImageNet classifier, else the mean its preprocessing subtracts"),
    )

    def step(self, case: MappedImage, taken: int) -> Perturbation | None:
        if taken == 0:
            return None
        if taken == case.pixels:  # everything deleted: the same for every map
            return BaselineInput(case.image)
        return DeletedInput(case.image, removal_mask(case.order[:taken], case.pixels))

    def caption(self, settings: EvaluationSettings) -> str:
        return ("**Deletion**: pixels are replaced by a constant, the mean pixel of the model's training data — "
                "**good: a low area** (the class vanishes fast).")


@register_metric
class InsertionMetric(PixelCurveMetric):
    """RISE's insertion: the first pixels of the map's order put into a blurred copy of the image (a Gaussian of
    ``settings.blur_sigma`` pixels); a faithful map brings the class back fast: a high area. Withheld when the
    blurred copy still shows the class (``problem``)."""

    name = "insertion"
    label = "Insertion"
    scores = (Score("insertion", "insertion AUC", higher_is_better=True),)
    arrays = ("insertion",)
    curves = {"insertion": "insertion"}
    constants = (
        Constant("steps", STEPS, "as deletion's"),
        Constant("blur_sigma", BLUR_SIGMA, "RISE's insertion start, gaussian_blur(klen=11, nsig=5), on 224-pixel "
                 "photos; 20 for the 64-pixel digits, measured here (suggested_blur)"),
        Constant("blur kernel", "2 sigma + 1 pixels", "RISE's: kernel 11 for sigma 5"),
    )

    def step(self, case: MappedImage, taken: int) -> Perturbation | None:
        if taken == case.pixels:
            return None
        if taken == 0:  # nothing inserted yet: the blurred copy, the same for every map
            return BlurredInput(case.image)
        return InsertedInput(case.image, removal_mask(case.order[:taken], case.pixels))

    def problem(self, found: Evaluation) -> str | None:
        """Why the insertion curves cannot rank the maps here, or None: the blurred copy they start from
        must hold clearly less of the class than the image (its probability below half of the image's,
        on average), else every curve starts near its end and the areas differ by noise."""
        if not found.methods:
            return None
        start, full = float(found.insertion[found.methods[0]][:, 0].mean()), float(found.original.mean())
        if start < 0.5 * full:
            return None
        return (f"the blurred copy that insertion starts from still gets p = {start:.2f} for the class on average, "
                f"against {full:.2f} for the images themselves: blurred with σ = {found.settings.blur_sigma:g} px, "
                "the class is still visible to the network, so inserting pixels adds little. Raise the blur under "
                "*Metric settings*")

    def caption(self, settings: EvaluationSettings) -> str:
        return (f"**Insertion**: pixels go into a copy blurred by a Gaussian of σ = {settings.blur_sigma:g} px — "
                "**good: a high area** (the class comes back fast).")
