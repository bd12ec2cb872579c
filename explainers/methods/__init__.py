"""The method registry: name -> a function of a trace, with what the UI needs to show it.

A new method is one function plus one ``@register_method`` line in a module of this package
(listed below); the sidebar, the API (``methods()``) and the tests read this registry. What a
method and its settings are: ``base`` and ``explainers.settings``.

One module per method or family of methods: ``cam`` (the CAM family on the shared trace),
``prototype`` (the k-means attribution), ``masking`` (the masked inputs that Score-CAM and
Cluster-CAM share), ``score_cam``, ``ablation_cam``, ``cluster_cam``, ``lrp``, ``classic``.
"""
from __future__ import annotations

from .base import FAMILIES, METHODS, Method, MethodOutput, method_info, methods, register_method
from . import cam  # noqa: F401  (registers the CAM family)
from . import prototype  # noqa: F401  (registers the k-means attribution)
from . import score_cam, ablation_cam, cluster_cam  # noqa: F401  (the perturbation methods)
from . import lrp  # noqa: F401  (LRP-epsilon and the gamma composite, through zennit)
from . import classic  # noqa: F401  (model-free image saliency)

__all__ = ["FAMILIES", "METHODS", "Method", "MethodOutput", "method_info", "methods", "register_method"]
