"""The explanation methods, registered by name, and running them (``explain``, ``explain_many``).

A new method is one function plus one ``@register_method`` line in a module of this package
(listed below); the sidebar, the API (``method_names()``) and the tests read this registry. What a
method and its settings are: ``base`` and ``explainers.runtime.settings``.

One module per method or family of methods: ``cam`` (the CAM family on the shared trace),
``kmeans_attribution`` (seed 000's gradient-free attribution), ``masking`` (the masked inputs that
Score-CAM and Cluster-CAM share), ``score_cam``, ``ablation_cam``, ``cluster_cam``, ``lrp``,
``classic``, ``attention`` (rollout, Chefer, LeGrad); ``explanation`` runs them on one shared trace.
"""
from __future__ import annotations

from ..engine.decomposition import COMPLETENESS_TOLERANCE, Decomposition, class_directions, decompose
from . import (  # noqa: F401  (the perturbation methods)
                          ablation_cam,
                          attention,  # noqa: F401  (rollout, Chefer, LeGrad: a transformer's attention)
                          cam,  # noqa: F401  (registers the CAM family)
                          chili,  # noqa: F401  (CHILI: TEXTSPAN's heads weighted by their object overlap)
                          classic,  # noqa: F401  (model-free image saliency)
                          cluster_cam,
                          kmeans_attribution,  # noqa: F401  (registers the k-means attribution)
                          lrp,  # noqa: F401  (LRP-epsilon and the gamma composite, through zennit)
                          score_cam,
                          textspan,  # noqa: F401  (TEXTSPAN's head decomposition)
)
from .base import METHOD_FAMILIES, METHODS, Method, MethodOutput, method_info, method_names, register_method
from .cluster_cam import masked_pictures
from .explanation import (
                          Explanation,
                          MethodSettings,
                          explain,
                          explain_batch,
                          explain_many,
                          explain_trace,
                          predict,
                          recombine,
)
from .kmeans_attribution import PER_CLASS, depth_for, fitted, prototypes_fitted, recipe
from .textspan import textspan_reason

__all__ = ["COMPLETENESS_TOLERANCE", "METHOD_FAMILIES", "METHODS", "PER_CLASS", "Decomposition", "Explanation",
           "Method", "MethodOutput", "MethodSettings", "class_directions", "decompose", "depth_for", "explain",
           "explain_batch", "explain_many", "explain_trace", "fitted", "masked_pictures", "method_info",
           "method_names", "predict", "prototypes_fitted", "recipe", "recombine", "register_method",
           "textspan_reason"]
