"""Methods of a Vision Transformer's attention: attention rollout, Chefer et al.'s gradient-weighted relevance
and LeGrad. Each is a function of the shared trace's ``AttentionTrace`` (``explainers.engine.attention``): the
attention maps A^l (N, H, T, T) of every layer from the one forward pass, with the gradients the method asks
for. Maps are read at the patch grid (the prefix tokens dropped), whatever block is chosen.

Reading a token-to-token matrix R (N, T, T) as a map: R[q, k] says how much query token q draws on input
token k. A model that classifies its class token reads row 0 (the mean of rows 0 and 1, class and
distillation tokens, for DeiT-distilled, whose two heads are averaged); a model that averages its patch
tokens reads the mean of the patch-token rows. The map is that row's entries at the patch tokens.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..engine.attention import AttentionTrace, attention_reason
from .base import register_method

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

__all__ = ["chefer", "legrad", "read_tokens", "rollout"]


def _attention(trace: "Trace", need: str) -> AttentionTrace:
    recorded = trace.attention
    missing = (recorded is None or (need == "gradients" and recorded.gradients is None)
               or (need == "layers" and recorded.layer_gradients is None))
    if missing:
        raise ValueError(f"this method needs the trace's attention {need}: trace with attention=('{need}',)")
    assert recorded is not None
    return recorded


def _on_grid(model: "ModelSpec", tokens: torch.Tensor) -> torch.Tensor:
    """(N, T) scores of all tokens -> (N, h, w) scores of the patch tokens on their grid."""
    info = model.transformer
    return tokens[:, info.prefix:].reshape(tokens.shape[0], *info.grid)


def read_tokens(model: "ModelSpec", relevance: torch.Tensor) -> torch.Tensor:
    """A token-to-token matrix (N, T, T) read as (N, h, w): the rows of the tokens the head reads (the class
    token; class and distillation tokens; or, for a model that averages its patch tokens, the mean of the
    patch-token rows), at the patch-token columns."""
    info = model.transformer
    rows = relevance[:, info.readout] if info.readout is not None else relevance[:, info.prefix:]
    return _on_grid(model, rows.mean(dim=1))


def _identity(maps: list[torch.Tensor]) -> torch.Tensor:
    n, _, tokens, _ = maps[0].shape
    return torch.eye(tokens, dtype=maps[0].dtype, device=maps[0].device).expand(n, tokens, tokens)


def _check(model: "ModelSpec", block: str) -> str | None:
    return attention_reason(model)


@register_method(
    "rollout", label="Attention rollout", family="gradient-free", check=_check, attention=("maps",),
    description=("The attention of every layer, averaged over heads, with the residual connection as 0.5 A + 0.5 I "
                 "(rows renormalised), multiplied from the first layer to the last; read at the class token's row "
                 "(class-token models) or the mean of the patch tokens' rows (models that average their tokens). "
                 "One forward pass, no backward."),
    reference="Abnar & Zuidema 2020, Quantifying Attention Flow in Transformers, sec. 3 (attention rollout)",
)
def rollout(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """A-hat^l = 0.5 E_h[A^l] + 0.5 I with rows renormalised; R = A-hat^L ... A-hat^1 (Abnar & Zuidema 2020)."""
    maps = _attention(trace, "maps").maps
    identity = _identity(maps)
    joint = identity
    for weights in maps:
        mixed = 0.5 * weights.mean(dim=1) + 0.5 * identity
        joint = (mixed / mixed.sum(dim=-1, keepdim=True)) @ joint
    return read_tokens(model, joint)


@register_method(
    "chefer", label="Chefer (gradient x attention)", family="gradient", needs_gradients=True, check=_check,
    attention=("maps", "gradients"),
    description=("Relevance propagated through the layers: R starts at the identity and each layer adds "
                 "E_h[(dy/dA * A)+] R, with the gradient of the target logit; read like rollout. The shared "
                 "forward pass and its one backward pass."),
    reference=("Chefer, Gur & Wolf 2021, Generic Attention-model Explainability for Interpreting Bi-Modal and "
               "Encoder-Decoder Transformers (ICCV), eq. 5-6"),
)
def chefer(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """A-bar^l = E_h[(grad A^l * A^l)^+] (eq. 5); R <- R + A-bar^l R from the first layer to the last (eq. 6)."""
    recorded = _attention(trace, "gradients")
    relevance = _identity(recorded.maps).clone()
    for weights, grads in zip(recorded.maps, recorded.gradients or []):
        relevance = relevance + (grads * weights).clamp_min(0).mean(dim=1) @ relevance
    return read_tokens(model, relevance)


@register_method(
    "legrad", label="LeGrad", family="gradient", needs_gradients=True, check=_check, attention=("layers",),
    description=("For each layer, the prediction of the target from that layer's tokens (the final norm, the "
                 "model's pooling, or the mean over all tokens for a class-token model, then the head); the positive "
                 "part of its gradient with respect to that layer's attention, averaged over heads and query "
                 "tokens, then over layers. One forward pass and one partial backward pass per layer (each from "
                 "the layer's prediction back to its own attention: together about one full backward pass)."),
    reference=("Bousselham et al. 2024, LeGrad: An Explainability Method for Vision Transformers via Feature "
               "Formation Sensitivity, eq. 4-8"),
)
def legrad(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """E-hat^l = 1/(H T) sum_h sum_i (ds^l/dA^l_{h,i,:})^+ ; E-bar = 1/L sum_l E-hat^l, patch tokens on the grid."""
    grads = _attention(trace, "layers").layer_gradients or []
    per_layer = torch.stack([g.clamp_min(0).mean(dim=(1, 2)) for g in grads])  # (L, N, T)
    return _on_grid(model, per_layer.mean(dim=0))
