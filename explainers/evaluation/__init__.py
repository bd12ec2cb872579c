"""Which map to trust: faithfulness metrics (seed 002 eq. 23, RISE's deletion and insertion, ROAD) and
sanity checks by weight randomisation (Adebayo et al. 2018).

    from explainers import load_dataset, load_model
    from explainers.evaluation import confidence_change, randomization_check, subset
    model = load_model("digits")
    images = subset(load_dataset("digits", "test"), 50)
    confidence_change(model, images, ["gradcam", "scorecam", "clustercam"], block="B4")
    randomization_check(model, images, ["gradcam", "spectral_residual"], block="B4", mode="cascading").table
"""
from .faithfulness import (
                           METRICS,
                           Evaluation,
                           EvaluationSettings,
                           confidence_change,
                           deletion_baseline,
                           deletion_insertion,
                           evaluate,
                           evaluate_maps,
                           pixel_order,
                           road,
                           step_counts,
                           subset,
                           suggested_blur,
                           unit_scaled,
)
from .imputation import noisy_linear_imputation
from .sanity import (
    GROUPS,
    SANITY_MODES,
    THRESHOLD,
    RandomizationResult,
    layer_groups,
    randomization_check,
    randomized_models,
)

__all__ = [
    "GROUPS", "METRICS", "SANITY_MODES", "THRESHOLD", "Evaluation", "EvaluationSettings", "RandomizationResult",
    "confidence_change", "deletion_baseline", "deletion_insertion", "evaluate", "evaluate_maps", "layer_groups",
    "noisy_linear_imputation", "pixel_order", "randomization_check", "randomized_models", "road", "step_counts",
    "subset", "suggested_blur", "unit_scaled",
]
