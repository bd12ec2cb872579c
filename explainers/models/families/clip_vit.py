"""The ``open_clip`` family: a CLIP image tower (open_clip's own ``VisionTransformer``) under a zero-shot head
(``explainers.models.clip.ZeroShotCLIP``: ``visual`` then ``head``, an ``nn.Linear`` whose rows are the classes'
normalised text embeddings times CLIP's logit scale).

open_clip's ViT is a class token then the patch tokens, ``transformer.resblocks`` of ``nn.MultiheadAttention``
blocks (batch first), ``ln_post`` per token, the class token (or the mean of the patch tokens) projected by
``proj``. B1..B3 are the blocks at a quarter, half and three quarters of the depth; B4 is ``ln_post``'s
per-token output, the tokens the pooling reads. The attention goes through ``F.multi_head_attention_forward``,
which ``explainers.runtime.attention`` writes out per request, so rollout, Chefer and LeGrad apply.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...runtime.errors import UserInputError
from .probe import Probe
from .transformers import TokenGrid, Transformer, TransformerFamily, depth_paths, register_transformer_family

__all__ = ["OpenCLIPFamily"]

# duck-typed: open_clip classes read by attribute (torch types nn.Module.__getattr__ as Tensor | Module), so the
# adapter takes the network and its image tower as Any where it reads their submodules.


def _open_clip_vit(module: object) -> bool:
    return any(cls.__name__ == "VisionTransformer" and cls.__module__ == "open_clip.transformer"
               for cls in type(module).__mro__)


def _standard_blocks(visual: Any) -> bool:
    """Every block is open_clip's ``ResidualAttentionBlock`` around an ``nn.MultiheadAttention``."""
    return all(isinstance(getattr(block, "attn", None), nn.MultiheadAttention)
               for block in visual.transformer.resblocks)


@register_transformer_family
class OpenCLIPFamily(TransformerFamily):
    """open_clip's ``VisionTransformer`` under a zero-shot linear head (``net.visual``, ``net.head``)."""

    name = "open_clip"
    description = ("open_clip's CLIP ViT image tower under a zero-shot head (text embeddings as weights): B1..B3 = "
                   "transformer.resblocks at 1/4, 1/2, 3/4 of the depth, B4 = ln_post per token, class token apart")

    def matches(self, net: nn.Module) -> bool:
        return _open_clip_vit(getattr(net, "visual", None)) and isinstance(getattr(net, "head", None), nn.Linear)

    def block_paths(self, net: Any, probe_result: Probe) -> list[str]:
        visual = net.visual
        if visual.attn_pool is not None:
            raise UserInputError("this open_clip image tower pools its tokens with attention (CoCa's attentional "
                                 "pooler): its tokens are not what the head reads, so Protoscope cannot explain it")
        count = len(visual.transformer.resblocks)
        if visual.final_ln_after_pool:  # ln_post runs on the pooled vector: B4 is the last block's tokens
            return depth_paths("visual.transformer.resblocks", count, f"visual.transformer.resblocks.{count - 1}")
        return depth_paths("visual.transformer.resblocks", count, "visual.ln_post")

    def fit_input(self, net: Any, input_size: tuple[int, int]) -> None:
        size = tuple(net.visual.image_size)
        if tuple(input_size) != size:
            raise UserInputError(f"this CLIP image tower takes {size[0]}x{size[1]} images only (its position "
                                 f"embedding is fixed), not {input_size[0]}x{input_size[1]}")

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        raise UserInputError("a CLIP model's classes come from text prompts: load it with classes=[...] instead")

    def transformer(self, net: Any, paths: dict[str, str]) -> Transformer:
        visual = net.visual
        grid_size = tuple(int(s) for s in visual.grid_size)
        grid = (grid_size[0], grid_size[1])
        layers = list(visual.transformer.resblocks)
        reads_token = visual.pool_type == "tok"

        def layer_logits(tokens: torch.Tensor) -> torch.Tensor:
            """LeGrad's layer prediction: the model's pooling of one layer's tokens (the mean over all tokens,
            class token included, LeGrad's z-bar^l, where the model reads its class token; the mean of the patch
            tokens where it averages them), ln_post where the model applies it, proj, normalised, the head."""
            if visual.final_ln_after_pool:
                pooled = visual.ln_post(tokens.mean(dim=1) if reads_token else tokens[:, 1:].mean(dim=1))
            else:
                normed = visual.ln_post(tokens)
                pooled = normed.mean(dim=1) if reads_token else normed[:, 1:].mean(dim=1)
            if visual.proj is not None:
                pooled = pooled @ visual.proj
            return net.head(F.normalize(pooled, dim=-1))

        reason = None if _standard_blocks(visual) else (
            "this open_clip tower uses its custom attention blocks (scaled cosine or scaled heads), whose "
            "attention maps Protoscope does not record; the CAM family works on its blocks")
        return Transformer(layers=layers, layouts={b: TokenGrid(grid, 1) for b in paths}, grid=grid, prefix=1,
                           readout=[0] if reads_token else None, layer_logits=layer_logits,
                           projections=[block.attn.out_proj for block in layers] if reason is None else [],
                           heads=int(layers[0].attn.num_heads) if reason is None else 0, attention=reason)
