"""Which map to trust: faithfulness metrics (seed 002 eq. 23, RISE's deletion and insertion, ROAD), one
class each in the registry ``METRICS``, and sanity checks by weight randomisation (Adebayo et al. 2018).

    from explainers import load_dataset, load_model
    from explainers.evaluation import confidence_change, randomization_check, subset
    model = load_model("digits")
    images = subset(load_dataset("digits", "test"), 50)
    confidence_change(model, images, ["gradcam", "scorecam", "clustercam"], block="B4")
    randomization_check(model, images, ["gradcam", "spectral_residual"], block="B4", mode="cascading").table
"""
from .blur import BLUR_FRACTION, BLUR_LADDER, BlurChoice, rise_blur, rise_kernel
from .faithfulness import (
    MetricWarning,
    PlannedEvaluation,
    confidence_change,
    deletion_insertion,
    evaluate,
    evaluate_maps,
    insertion_blur,
    planned_evaluation,
    road,
    subset,
)
from .imputation import noisy_linear_imputation
from .metrics import (
    METRICS,
    ConfidenceMetric,
    Constant,
    DeletionMetric,
    InsertionMetric,
    MappedImage,
    Metric,
    PixelCurveMetric,
    RoadMetric,
    Score,
    register_metric,
)
from .perturbation import (
    BaselineInput,
    BlurredInput,
    DeletedInput,
    ImputedInput,
    InsertedInput,
    Perturbation,
    PerturbationPlan,
    PlainInput,
    ScaledInput,
    deletion_baseline,
    pixel_order,
    removal_mask,
    step_counts,
    unit_scaled,
)
from .result import Evaluation
from .sanity import (
    GROUPS,
    IMAGES_PER_PASS,
    SANITY_MODES,
    THRESHOLD,
    RandomizationResult,
    layer_groups,
    randomization_check,
    randomized_models,
)
from .settings import EvaluationSettings

__all__ = [
    "BLUR_FRACTION", "BLUR_LADDER", "BlurChoice", "MetricWarning", "insertion_blur", "rise_blur", "rise_kernel",
    "GROUPS", "IMAGES_PER_PASS", "METRICS", "SANITY_MODES", "THRESHOLD", "BaselineInput", "BlurredInput",
    "ConfidenceMetric", "Constant", "DeletedInput", "DeletionMetric", "Evaluation", "EvaluationSettings",
    "ImputedInput", "InsertedInput", "InsertionMetric", "MappedImage", "Metric", "Perturbation", "PerturbationPlan",
    "PixelCurveMetric", "PlainInput", "PlannedEvaluation", "RandomizationResult", "RoadMetric", "ScaledInput", "Score",
    "confidence_change", "deletion_baseline", "deletion_insertion", "evaluate", "evaluate_maps", "layer_groups",
    "noisy_linear_imputation", "pixel_order", "planned_evaluation", "randomization_check", "randomized_models",
    "register_metric", "removal_mask", "road", "step_counts", "subset", "unit_scaled",
]
