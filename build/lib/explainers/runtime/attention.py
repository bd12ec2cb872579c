"""Attention maps as tensors, for one request, on models that many requests share.

Modern transformers never form their attention matrix A = softmax(Q K^T * scale) as a tensor:
timm's ``Attention`` (``fused_attn``) and torchvision's ``nn.MultiheadAttention`` (``need_weights=False``,
through ``F.multi_head_attention_forward``) call the fused kernel ``F.scaled_dot_product_attention``.
The methods of attention (rollout, Chefer, LeGrad, TEXTSPAN, CHILI) need A, its gradient dL/dA and the
value vectors it mixes.

``exposed_attention()`` is a per-request switch: inside it, and only in the thread that entered it,
every call of those two functions is computed explicitly,

    A = softmax(Q K^T * scale + mask),   out = A V,

with A and V recorded (``AttentionMaps``) as tensors *in the autograd graph*, so ``torch.autograd.grad(score,
maps.weights)`` is dL/dA. Outside it the modules run exactly as before. Nothing is set on the shared modules
(no hook, no attribute, no patched function): the switch is a ``torch.overrides.TorchFunctionMode``, which
PyTorch keeps per thread, and a ``ContextVar`` naming the recording of this context, so two sessions
explaining with one model at once each see their own maps only.

    with exposed_attention() as maps:
        logits = model(x)          # maps[l].weights: (N, H, T, S) of the l-th attention call, in call order
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .errors import UserInputError

__all__ = ["AttentionMaps", "UnsupportedAttentionError", "attention_exposed", "explicit_attention",
           "exposed_attention"]


class UnsupportedAttentionError(UserInputError):
    """An attention call whose options the explicit computation does not reproduce (so it is not replaced)."""


@dataclass
class AttentionMaps:
    """One attention call: ``weights`` A (N, H, T, S), rows summing to one, and ``values`` V (N, H, S, D_h),
    both in the autograd graph of the pass; the call returned A V (N, H, T, D_h) per head, which the layer's
    output projection W_O maps back to the residual stream after the heads are concatenated."""

    weights: torch.Tensor
    values: torch.Tensor

    def per_head_output(self) -> torch.Tensor:
        """A V, (N, H, T, D_h): head h's output at each query token before the output projection."""
        return self.weights @ self.values


_RECORDING: ContextVar[Optional[list[AttentionMaps]]] = ContextVar("protoscope_attention", default=None)


def explicit_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                       scale: float | None = None, enable_gqa: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``F.scaled_dot_product_attention``'s computation written out (Vaswani et al. 2017, eq. 1): returns
    (A V, A) with A = softmax(Q K^T * scale + mask) for (..., T, D) queries and (..., S, D) keys and values.
    A boolean mask keeps the True places, a float mask is added; ``is_causal`` keeps the lower triangle."""
    if dropout_p:
        raise UnsupportedAttentionError("attention dropout is active (a model in training mode): the maps of a "
                                        "random dropout would explain nothing; put the model in eval mode")
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = (query @ key.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    weights = scores.softmax(dim=-1)
    return weights @ value, weights


_MHA_PARAMETERS = inspect.signature(F.multi_head_attention_forward)


def _explicit_multi_head(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``F.multi_head_attention_forward`` (``nn.MultiheadAttention``), the usual case (no key bias, no zero
    attention, no padding or attention mask, no static keys), with the attention written out
    (``explicit_attention``); records its A and V. Any other option is refused, never approximated."""
    bound = _MHA_PARAMETERS.bind(*args, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    unsupported = [name for name in ("bias_k", "bias_v", "key_padding_mask", "attn_mask", "static_k", "static_v")
                   if a[name] is not None] + [name for name in ("add_zero_attn", "is_causal") if a[name]]
    if unsupported:
        raise UnsupportedAttentionError(f"this nn.MultiheadAttention uses {', '.join(unsupported)}, which the "
                                        "explicit attention of Protoscope does not reproduce")
    query, key, value = a["query"], a["key"], a["value"]
    unbatched = query.dim() == 2
    if unbatched:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
    heads, embed = a["num_heads"], a["embed_dim_to_check"]
    bias = a["in_proj_bias"]
    b_q, b_k, b_v = bias.chunk(3) if bias is not None else (None, None, None)
    if a["use_separate_proj_weight"]:
        w_q, w_k, w_v = a["q_proj_weight"], a["k_proj_weight"], a["v_proj_weight"]
    else:
        w_q, w_k, w_v = a["in_proj_weight"].chunk(3)
    target, batch = query.shape[0], query.shape[1]

    def split(x: torch.Tensor) -> torch.Tensor:  # (L, N, E) -> (N, H, L, D_h)
        return x.reshape(x.shape[0], batch, heads, embed // heads).permute(1, 2, 0, 3)

    q, k, v = split(F.linear(query, w_q, b_q)), split(F.linear(key, w_k, b_k)), split(F.linear(value, w_v, b_v))
    dropout = a["dropout_p"] if a["training"] else 0.0
    heads_out, weights = explicit_attention(q, k, v, dropout_p=dropout)
    _record(weights, v)
    merged = heads_out.permute(2, 0, 1, 3).reshape(target, batch, embed)
    out = F.linear(merged, a["out_proj_weight"], a["out_proj_bias"])
    returned = None
    if a["need_weights"]:
        returned = weights.mean(dim=1) if a["average_attn_weights"] else weights
        returned = returned.squeeze(0) if unbatched else returned
    return (out.squeeze(1) if unbatched else out), returned


def _record(weights: torch.Tensor, values: torch.Tensor) -> None:
    recording = _RECORDING.get()
    if recording is not None:
        recording.append(AttentionMaps(weights=weights, values=values))


class _ExplicitAttention(TorchFunctionMode):
    """Replaces the fused attention calls by ``explicit_attention``, in the thread that entered it only."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            out, weights = explicit_attention(*args, **kwargs)
            value = kwargs["value"] if "value" in kwargs else args[2]
            _record(weights, value)
            return out
        if func is F.multi_head_attention_forward:
            return _explicit_multi_head(*args, **kwargs)
        return func(*args, **kwargs)


@contextmanager
def exposed_attention() -> Iterator[list[AttentionMaps]]:
    """Inside the ``with`` body, in this thread only, compute every fused attention call explicitly and
    record its ``AttentionMaps`` (in call order) in the yielded list. The outputs equal the fused ones up to
    floating-point rounding (the tests check 1e-5). Nothing is left on any module afterwards."""
    recording: list[AttentionMaps] = []
    token = _RECORDING.set(recording)
    try:
        with _ExplicitAttention():
            yield recording
    finally:
        _RECORDING.reset(token)


def attention_exposed() -> bool:
    """Whether this context is inside ``exposed_attention`` (its attention calls are being recorded)."""
    return _RECORDING.get() is not None
