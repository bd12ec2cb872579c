"""Deletion and insertion (Petsiuk et al. 2018, *RISE*, sec. 4.2): probability curves as pixels go or come back."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..blur import BLUR_FRACTION, BLUR_LADDER, BLUR_SIGMA
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
TIES = Constant("ties", "a seeded random permutation (settings.seed)", "pixel_order: the same permutation for every "
                "map of the image size", "np.flip(np.argsort(saliency)) in RISE's code: ties in reverse order of "
                "numpy's sort, from the bottom-right up where it is stable",
                "deliberately: raster order deletes a flat region row by row, so a map's score would depend on where "
                "its flat parts lie (it moves digits B3 deletion AUCs by up to 0.126); the seeded order is unbiased "
                "in position and reproducible")


class PixelCurveMetric(Metric):
    """Pixels removed from (deletion) or restored into (insertion) the image in the order of the map, in
    ``settings.steps`` equal steps (``step_counts``); the target's probability after each step is a curve over
    the fraction of pixels, kept as ``<name>[method]`` (N, steps + 1), and its area by the trapezoid rule
    (``areas``) is the score. A subclass says what a step's input is (``step``)."""

    reference = "Petsiuk et al. 2018, RISE, sec. 4.2"
    section = "Deletion and insertion"
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
        Constant("steps", STEPS, "ours: 5% of the pixels per step; the area by the trapezoid rule over the "
                 "fraction of pixels, as RISE's auc", "a fixed number of pixels per step in RISE's code (224, one row "
                 "of a 224² image, in its example)", "coarser steps (20 instead of 224) for speed; the areas agree "
                 "to the trapezoid rule's error on smooth curves"),
        TIES,
        Constant("baseline", "the mean pixel of the model's training data", "ImageNet's mean for an ImageNet "
                 "classifier, else the mean its preprocessing subtracts", "zeros of the normalised input in RISE's "
                 "code (substrate_fn = torch.zeros_like), i.e. the normalisation mean: ImageNet's mean for its "
                 "torchvision models", "only where a model normalises with another mean (EfficientNet-Lite0's 0.5)"),
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
    """RISE's insertion: the first pixels of the map's order put into a blurred copy of the image (RISE's kernel
    of ``settings.blur_sigma`` pixels, ``rise_blur``; the sigma measured per model and images by default,
    ``insertion_blur``); a faithful map brings the class back fast: a high area. Flagged (``problem``), and
    withheld by the page, when the blurred copy still shows the class."""

    name = "insertion"
    label = "Insertion"
    scores = (Score("insertion", "insertion AUC", higher_is_better=True),)
    arrays = ("insertion",)
    curves = {"insertion": "insertion"}
    constants = (
        Constant("steps", STEPS, "as deletion's", "as deletion's", "as deletion's"),
        TIES,
        Constant("blur_sigma", "measured", "insertion_blur: the smallest of " + ", ".join(f"{s:g}" for s in BLUR_LADDER)
                 + f" px whose blurred copy gets below {BLUR_FRACTION:.0%} of the images' own probability for the "
                 "class, on average; flagged when even the strongest keeps the class", f"σ = {BLUR_SIGMA:g} px "
                 "(gkern(11, 5)) in RISE's code, for 224-pixel ImageNet photos", "σ = 5 leaves the class readable "
                 "on small or coarse pictures (the 64-pixel digits keep p = 0.95 of 0.96), which makes insertion "
                 "meaningless; the measured σ is RISE's 5 wherever 5 hides the class"),
        Constant("blur kernel", "gkern(2σ + 1, σ)", "rise_kernel: RISE's construction, a delta in a (2σ + 1)² array "
                 "smoothed by scipy's gaussian_filter(σ), its reflected tails folded back (flatter than a Gaussian)",
                 "gkern(klen=11, nsig=5)", "only in extending RISE's 11 = 2·5 + 1 to the other sigmas"),
        Constant("blur_padding", "zeros", "rise_blur: conv2d(x, kern, padding=klen // 2) on the normalised input, so "
                 "the normalisation mean lies beyond the border", "zeros (RISE's code)", "'reflect' is offered (what "
                 "torchvision's gaussian_blur did here until now): on EfficientNet-Lite0 at B4 over the 19 photos it "
                 "keeps the class in the σ = 5 copy (p = 0.17 of 0.34: insertion flagged) and raises insertion AUCs by "
                 "up to 0.04"),
        Constant("fraction", BLUR_FRACTION, "ours: the measured rule's threshold and the flag's", "none: RISE does "
                 "not check its blurred copy", "an addition: insertion is flagged when the blurred copy keeps this "
                 "fraction of the images' probability or more"),
    )

    def step(self, case: MappedImage, taken: int) -> Perturbation | None:
        if taken == case.pixels:
            return None
        if taken == 0:  # nothing inserted yet: the blurred copy, the same for every map
            return BlurredInput(case.image)
        return InsertedInput(case.image, removal_mask(case.order[:taken], case.pixels))

    def problem(self, found: Evaluation) -> str | None:
        """Why the insertion curves cannot rank the maps here, or None: the blurred copy they start from must
        hold clearly less of the class than the image (its probability below ``BLUR_FRACTION`` of the
        image's, on average), else every curve starts near its end and the areas differ by noise. With the
        blur measured (``found.blur``), the measurement's verdict; with a blur given, the curves' own start."""
        blur = getattr(found, "blur", None)
        if blur is not None and blur.problem:
            return blur.problem
        if not found.methods or found.settings.blur_sigma is None:
            return None
        start, full = float(found.insertion[found.methods[0]][:, 0].mean()), float(found.original.mean())
        if start < BLUR_FRACTION * full:
            return None
        return (f"the blurred copy that insertion starts from (σ = {found.settings.blur_sigma:g} px) still gets "
                f"p = {start:.2f} for the class on average, against {full:.2f} for the images themselves (below "
                f"{BLUR_FRACTION:.0%} of it is needed): the class is still visible to the network, so every insertion "
                "curve starts near its end and the areas differ by noise; a stronger blur, or blur_sigma=None (the "
                "measured rule), avoids it")

    def finding(self, found: Evaluation) -> str:
        blur = getattr(found, "blur", None)
        return blur.describe() if blur is not None else ""

    def caption(self, settings: EvaluationSettings) -> str:
        sigma = "measured" if settings.blur_sigma is None else f"{settings.blur_sigma:g} px"
        return (f"**Insertion**: pixels go into a blurred copy (RISE's kernel, σ = {sigma}) — **good: a high area** "
                "(the class comes back fast).")
