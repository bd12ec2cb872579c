"""The faithfulness metrics, one class each, registered in ``METRICS`` in the order of their tables.

A new metric is one ``Metric`` subclass decorated with ``register_metric`` (see ``Metric``); importing
its module registers it, and ``evaluate``, ``Evaluation.table`` and the Evaluation page pick it up.
"""
from .base import METRICS, Constant, MappedImage, Metric, Score, register_metric
from .confidence import ConfidenceMetric
from .curves import BLUR_SIGMA, STEPS, DeletionMetric, InsertionMetric, PixelCurveMetric
from .road import ROAD_FRACTIONS, RoadMetric

__all__ = ["BLUR_SIGMA", "METRICS", "ROAD_FRACTIONS", "STEPS", "ConfidenceMetric", "Constant", "DeletionMetric",
           "InsertionMetric", "MappedImage", "Metric", "PixelCurveMetric", "RoadMetric", "Score", "register_metric"]
