"""CHILI as a registry method: TEXTSPAN's head maps, median-filtered and weighted by how well each head finds
the object on a probing set (seed 001: Sal_CHILI[i] = sum_{l,h} w_{l,h} f_m(A_{i,l,h})). The weights come
from the store (``explainers.fitted.chili``), fitted on the probing set given as ``training=`` (the sidebar's
*Training images*): the digits training split with ink masks for the digits models, or a folder of images with
a ``masks/`` sub-folder for any other ViT.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from ..engine.decomposition import decompose
from ..fitted.chili import ALPHA, KERNEL, PROBES, THRESHOLD, chili_maps, fitted_chili
from ..fitted.store import TrainingData
from ..runtime.settings import Setting, SettingValueError
from .base import MethodOutput, register_method
from .textspan import textspan_reason

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

__all__ = ["CHILI_SETTINGS", "chili"]

CHILI_SETTINGS = (
    Setting("alpha", float, ALPHA, "w = E[1 - exp(-alpha IoU)]: how fast a head's weight saturates with its overlap "
            "with the object (5: IoU 0.2 -> 0.63, 0.5 -> 0.92)", low=0.1, high=50.0, label="alpha"),
    Setting("kernel", int, KERNEL, "Median filter f_m over the patch grid, kernel x kernel (odd; 3 removes single "
            "pseudo-register tokens)", low=1, high=9, label="Median kernel"),
    Setting("threshold", float, THRESHOLD, "h_m: a head's filtered map is on the object where it reaches this "
            "fraction of its maximum", low=0.05, high=0.95, step=0.05, label="Binarisation (x max)"),
    Setting("probes", int, PROBES, "Probing images with masks used to weigh the heads (at most)", low=8, high=5000,
            label="Probes"),
)


@register_method(
    "chili", label="CHILI (object heads)", family="gradient-free", signed=True, needs_training=True,
    check=lambda model, block: textspan_reason(model), attention=("maps", "stream"), settings=CHILI_SETTINGS,
    description=("TEXTSPAN's per-head maps with pseudo-register tokens removed by a median filter f_m, each head "
                 "weighted by w = E[1 - exp(-alpha IoU(h_m(A), G))] over probing images with object masks G "
                 "(h_m: the filtered map at >= threshold x its maximum), summed: the object part of the score; "
                 "1 - w weighs the context part. Defaults: alpha 5, 3x3 median, half the maximum. Probing set: "
                 "the training images (digits: ink masks; else a folder with masks/<stem>.png). One forward pass "
                 "(the head weights are fitted once and kept)."),
    reference=("Seed 001, 'Object vs Context': A^Object = w f_m(A), A^Context = (1 - w) f_m(A), "
               "Sal_CHILI[i] = sum_{l,h} w_{l,h} f_m(A_{i,l,h}); on TEXTSPAN (Gandelsman et al. 2024, eq. 5)"),
)
def chili(trace: "Trace", block: str, model: "ModelSpec", *, alpha: float = ALPHA, kernel: int = KERNEL,
          threshold: float = THRESHOLD, probes: int = PROBES, training: TrainingData | None = None) -> MethodOutput:
    """Sal_CHILI = sum_{l,h} w_{l,h} f_m(A_{l,h}) with w fitted on the probing set ``training`` (None: the
    model's own: the digits ink masks); extras: the weights and each image's object and context scores."""
    if kernel % 2 == 0:
        raise SettingValueError(f"CHILI's median kernel must be odd, not {kernel}")
    fitted = fitted_chili(model, training, alpha, kernel, threshold, probes)
    decomposition = decompose(trace, model)
    decomposition.check()
    parts = chili_maps(decomposition.head_maps().cpu().numpy(), fitted.weights, kernel)
    per_image = [{"object_scores": parts["object"][i].sum(axis=(-2, -1)),
                  "context_scores": parts["context"][i].sum(axis=(-2, -1))} for i in range(len(parts["object"]))]
    extras = {"head_weights": np.asarray(fitted.weights), "mean_iou": np.asarray(fitted.mean_iou),
              "probing": fitted.probing, "probes": fitted.probes}
    return MethodOutput(maps=torch.from_numpy(parts["saliency"]).float(), extras=extras, per_image=per_image)
