"""Former home of the perturbation methods, now one module each: ``masking`` (the masked inputs),
``score_cam``, ``ablation_cam``, ``cluster_cam``. Import from those.

This thin re-export stays only while ``tests/test_families.py`` reads ``tail_after`` and
``ablation_drops`` from here; delete it once that test imports ``explainers.methods.ablation_cam``.
"""
from __future__ import annotations

from .ablation_cam import ablation_cam, ablation_cam_plain, ablation_drops, after_block, substituted_forward, tail_after
from .cluster_cam import ALPHA, CLUSTERS, ClusterCAM, cluster_cam, cluster_channels, masked_pictures
from .masking import distinct_maps, masked_scores, scaled_masks
from .score_cam import score_cam, score_cam_plain

__all__ = ["ALPHA", "CLUSTERS", "ClusterCAM", "ablation_cam", "ablation_cam_plain", "ablation_drops", "after_block",
           "cluster_cam", "cluster_channels", "distinct_maps", "masked_pictures", "masked_scores", "scaled_masks",
           "score_cam", "score_cam_plain", "substituted_forward", "tail_after"]
