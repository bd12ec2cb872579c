"""The built-in ``digits_vit`` model: a small Vision Transformer for scikit-learn's digits.

timm's own ``VisionTransformer`` (so that it is explained by the same family adapter as every timm
ViT, ``explainers.models.families.transformers``), on the digits ResNet's input (64x64 greyscale,
``digits_transform``): 8x8-pixel patches, so an 8x8 grid of 64 tokens; no class token; the blocks'
tokens are normalised one by one (``norm``, a LayerNorm per token), averaged over the tokens and
fed to one linear layer (``global_pool="avg"``, ``fc_norm=False``). The last operation before the
pooling is per token, so seed 000's Theorem 1 holds on tokens: logits_j = mean_r h_r . c_j + b_j,
with h = B4 = the output of ``norm`` laid on the patch grid (``tests/test_transformers.py``).

``python -m explainers.cli train digits_vit`` trains it (``assets/digits_vit.pt``, card
``assets/digits_vit.json``); ``load_model("digits_vit")`` loads it.
"""
from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from ...runtime.paths import ASSETS
from ..spec import MODELS, ModelSpec, model_spec
from .digits import digits_transform

__all__ = ["DIGITS_VIT_CARD", "DIGITS_VIT_CONFIG", "DIGITS_VIT_WEIGHTS", "digits_vit_model", "digits_vit_network"]

DIGITS_VIT_WEIGHTS = ASSETS / "digits_vit.pt"
DIGITS_VIT_CARD = ASSETS / "digits_vit.json"
# timm.models.vision_transformer.VisionTransformer keyword arguments.
DIGITS_VIT_CONFIG: dict[str, Any] = dict(img_size=64, patch_size=8, in_chans=1, num_classes=10, embed_dim=64,
                                         depth=4, num_heads=4, mlp_ratio=2.0, class_token=False, global_pool="avg",
                                         fc_norm=False)


def digits_vit_network(num_classes: int = 10) -> nn.Module:
    """A randomly initialised digits ViT (timm ``VisionTransformer`` with ``DIGITS_VIT_CONFIG``)."""
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(**{**DIGITS_VIT_CONFIG, "num_classes": num_classes})


@MODELS.register("digits_vit", description="small Vision Transformer (timm, 8x8-pixel patches, no class token, "
                                           "average-pooled tokens) trained on scikit-learn's digits (built in)")
def digits_vit_model(weights: str | None = "DEFAULT") -> ModelSpec:
    """The built-in digits ViT with its shipped weights (random ones for ``weights=None``)."""
    net = digits_vit_network()
    card: dict[str, Any] = {}
    if weights is not None:
        net.load_state_dict(torch.load(DIGITS_VIT_WEIGHTS, map_location="cpu", weights_only=True))
        card = json.loads(DIGITS_VIT_CARD.read_text()) if DIGITS_VIT_CARD.exists() else {}
    spec = model_spec("digits_vit", net.eval(), digits_transform(), [str(d) for d in range(10)], None, card,
                      sample_dataset="digits")
    spec.dataset = "digits"
    return spec
