"""Weights that do not fit their architecture, said in words: ``misfit_message`` (every loader's: a
checkpoint, an open_clip weights file), and for a Vision Transformer why, ``vit_misfit``.

A ViT checkpoint trained with another patch size, or at another image size, differs from the architecture in
two tensors, the patch embedding's convolution (out, in, p, p) and the position embedding (one row per token),
and a shape list alone ("pos_embed: file (1, 197, 192) vs model (1, 65, 192)") leaves a person to work out why.
"""
from __future__ import annotations

import math
from typing import Mapping

import torch

from ..data.datasets import plural

__all__ = ["misfit_message", "vit_misfit"]

# The patch embedding's convolution and the position embedding, as timm, torchvision and open_clip name them.
PATCH_KEYS = ("patch_embed.proj.weight", "conv_proj.weight", "visual.conv1.weight")
POSITION_KEYS = ("pos_embed", "encoder.pos_embedding", "visual.positional_embedding")


def _tokens(tensor: torch.Tensor) -> int:
    return int(tensor.shape[-2])  # (T, C) or (1, T, C)


def _grid(tokens: int) -> str:
    """"a 14x14 grid plus 1 prefix token" for 197 tokens (the largest square that leaves at most 8 prefix tokens)."""
    for prefix in range(0, 9):
        side = math.isqrt(tokens - prefix) if tokens > prefix else 0
        if side and side * side == tokens - prefix:
            article = "an" if str(side).startswith("8") or side in (11, 18) else "a"
            extra = f" plus {prefix} prefix token{'s' if prefix > 1 else ''}" if prefix else ""
            return f"{article} {side}x{side} grid{extra}"
    return f"{tokens} tokens"


def vit_misfit(own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``state`` (a file's state dict) does not fit ``own`` (the architecture's) as a ViT, in words: another
    patch size, or a position embedding for another number of tokens (another image or patch size); None when
    neither differs (or neither tensor is a ViT's)."""
    said = []
    for key in PATCH_KEYS:
        if key in own and key in state and own[key].dim() == 4 and own[key].shape[-2:] != state[key].shape[-2:]:
            (fh, fw), (mh, mw) = state[key].shape[-2:], own[key].shape[-2:]
            said.append(f"the file's ViT cuts images into {fh}x{fw}-pixel patches, this architecture into {mh}x{mw}.")
    for key in POSITION_KEYS:
        if key in own and key in state and _tokens(own[key]) != _tokens(state[key]):
            mine, theirs = _tokens(own[key]), _tokens(state[key])
            said.append(f"The file's position embedding holds {theirs} tokens ({_grid(theirs)}) where this "
                        f"architecture has {mine} ({_grid(mine)}): it was trained at another image or patch size.")
    if not said:
        return None
    text = " ".join(said)
    return text[0].upper() + text[1:]


def misfit_message(filename: str, arch: str, own: Mapping[str, torch.Tensor],
                   state: Mapping[str, torch.Tensor]) -> str | None:
    """None when ``state`` fits the architecture's own state dict ``own`` (same names, same shapes); else what
    differs (parameters missing, unexpected, of other shapes: a few of each named) and, for a ViT, why."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    if not (missing or unexpected or mismatched):
        return None
    found = []
    if missing:
        found.append(f"{plural(len(missing), 'parameter')} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        found.append(f"{len(unexpected):,} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        found.append(f"{len(mismatched):,} with other shapes (e.g. {'; '.join(mismatched[:2])})")
    words = vit_misfit(own, state)  # a ViT of another patch or image size, said in words
    return (f"{filename} does not fit the {arch} architecture: {'; '.join(found)}."
            + (f" {words}" if words else "") + " Choose the architecture the weights were trained with.")
