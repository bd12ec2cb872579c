"""Which map to trust: faithfulness metrics (seed 002 eq. 23, RISE's deletion and insertion, ROAD).

    from explainers import load_dataset, load_model
    from explainers.evaluation import confidence_change, evaluate, subset
    model = load_model("digits")
    images = subset(load_dataset("digits", "test"), 50)
    confidence_change(model, images, ["gradcam", "scorecam", "clustercam"], block="B4")
"""
from .faithfulness import (METRICS, Evaluation, EvaluationSettings, confidence_change, deletion_baseline,
                           deletion_insertion, evaluate, evaluate_maps, pixel_order, road, step_counts, subset,
                           suggested_blur, unit_scaled)
from .imputation import noisy_linear_imputation

__all__ = [
    "METRICS", "Evaluation", "EvaluationSettings", "confidence_change", "deletion_baseline", "deletion_insertion",
    "evaluate", "evaluate_maps", "noisy_linear_imputation", "pixel_order", "road", "step_counts", "subset",
    "suggested_blur", "unit_scaled",
]
