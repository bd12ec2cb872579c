"""Transformer families: timm's and torchvision's Vision Transformers (ViT, DeiT with its distillation token, the
built-in ``digits_vit``) and Swin Transformers, as one more kind of model (DESIGN.md, "Transformers").

Blocks B1..B4 are the outputs of the transformer blocks at a quarter, half, three quarters and the full depth;
B4 is the per-token output right before the head pools or reads it (after the final norm). A block's output is
a token sequence (N, T, C), prefix tokens (class, distillation, registers) first, or for Swin a map (N, h, w, C).
``TokenGrid`` lays the patch tokens on their grid, (N, C, h, w), and rebuilds the block's output from the grid
(the same values): the trace records the grid and hands the network the rebuilt output, so activations and
gradients at a block are (N, C, h, w) tensors and every method written for a CNN's block works on tokens,
from the one shared pass. The prefix tokens are kept apart (they pass the block unchanged in value).

``Transformer`` (``ModelSpec.transformer``) says what the attention methods need: the blocks' modules in order,
the token layout, how the head reads the tokens (rollout and Chefer read the attention of those rows), LeGrad's
prediction of one layer's tokens, each layer's attention output projection W_O, and, for Swin, why there is no
global token-to-token attention map. The attention maps themselves come from ``explainers.runtime.attention``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models import SwinTransformer, VisionTransformer

from ...runtime.errors import BlockError, UserInputError
from .base import MODEL_FAMILIES, Family
from .probe import BLOCK_NAMES, Probe

# duck-typed: timm/torchvision classes read by attribute (torch types nn.Module.__getattr__ as Tensor | Module),
# so the adapters below take the network as Any where they read its submodules.
__all__ = ["ResidualStream", "SwinFamily", "TimmViTFamily", "TokenGrid", "TorchvisionViTFamily", "Transformer",
           "TransformerFamily", "depth_paths", "register_transformer_family"]


@dataclass(frozen=True)
class TokenGrid:
    """How a block's output holds its patch tokens: a sequence (N, T, C) of ``prefix`` tokens then the h*w patch
    tokens row by row, or (``spatial``) a map (N, h, w, C) (Swin)."""

    grid: tuple[int, int]
    prefix: int = 0
    spatial: bool = False

    def to_grid(self, output: torch.Tensor) -> torch.Tensor:
        """The patch tokens of ``output`` as (N, C, h, w) (a view: gradients with respect to it flow)."""
        if self.spatial:
            return output.permute(0, 3, 1, 2)
        n, tokens, channels = output.shape
        h, w = self.grid
        if tokens != self.prefix + h * w:
            raise BlockError(f"a block gave {tokens} tokens where {self.prefix} prefix tokens and a {h}x{w} grid of "
                             "patches were expected: the input is not of the size the model was loaded for")
        return output[:, self.prefix:].transpose(1, 2).reshape(n, channels, h, w)

    def from_grid(self, grid: torch.Tensor, output: torch.Tensor) -> torch.Tensor:
        """The block's output rebuilt from ``grid`` (and ``output``'s prefix tokens): equal values, a new tensor."""
        if self.spatial:
            return grid.permute(0, 2, 3, 1).clone()
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([output[:, :self.prefix], patches], dim=1) if self.prefix else patches.clone()


@dataclass
class ResidualStream:
    """Where a ViT's residual stream can be read, for TEXTSPAN's decomposition (Gandelsman et al. 2024, sec. 3):
    Z^L = Z^0 + sum_l MSA^l + sum_l MLP^l, then the final norm, the readout, the head.

    ``start``: the module whose output is Z^0 (the tokens entering the first layer: patch, class and position
    embeddings); ``mlps``: per layer, the module whose output is the MLP branch added to the stream;
    ``scales``: per layer, the linear map without bias between W_O and the stream (timm's LayerScale ``ls1``,
    else Identity); ``norm``: the final per-token LayerNorm; ``pooled_norm``: a norm after the readout (timm's
    ``fc_norm``; Identity or LayerNorm); ``projection``: a bias-free linear map after it (CLIP's P) or None;
    ``head``: the classifier (None where the class directions come from elsewhere: CLIP's text embeddings);
    ``reason``: None when all of this is linear but the norms, else why the decomposition does not apply."""

    start: nn.Module | None = None
    mlps: list[nn.Module] = field(default_factory=list)
    scales: list[nn.Module] = field(default_factory=list)
    norm: nn.Module | None = None
    pooled_norm: nn.Module | None = None
    projection: nn.Module | None = None
    head: nn.Linear | None = None
    reason: str | None = None


@dataclass
class Transformer:
    """What the attention methods know of a transformer (``ModelSpec.transformer``).

    ``layers``: its blocks in order (each returns the residual stream Z^l, (N, T, C)); ``layouts``: ``TokenGrid``
    of each of B1..B4; ``readout``: the token rows the head reads (the class token; class and distillation
    tokens for DeiT-distilled), or None when it pools the patch tokens; ``layer_logits``: LeGrad's prediction
    from one layer's tokens (N, T, C) -> (N, classes); ``projections``: each layer's attention output projection
    W_O (in = out = C, the heads concatenated); ``heads``: heads per layer; ``attention``: None when global
    attention maps (N, H, T, T) are exposed, else the reason in words."""

    layers: list[nn.Module]
    layouts: dict[str, TokenGrid]
    grid: tuple[int, int]
    prefix: int
    readout: list[int] | None
    layer_logits: Callable[[torch.Tensor], torch.Tensor] | None
    projections: list[nn.Linear] = field(default_factory=list)
    heads: int = 0
    attention: str | None = None
    stream: ResidualStream | None = None  # TEXTSPAN's residual stream; None: not declared by the family


def depth_paths(container: str, count: int, last: str) -> list[str]:
    """B1..B3: the blocks of ``container`` at a quarter, half and three quarters of its ``count`` blocks;
    B4: ``last`` (the per-token output the head reads)."""
    return [f"{container}.{max(round(count * k / 4) - 1, 0)}" for k in (1, 2, 3)] + [last]


class TransformerFamily(Family):
    """A family whose blocks give tokens (``TokenGrid``) rather than feature maps; subclasses say where."""

    def check_blocks(self, net: nn.Module, paths: list[str], probe_result: Probe) -> None:
        """Each block runs once per forward pass and returns tokens (N, T, C) or a map (N, h, w, C)."""
        for block, path in zip(BLOCK_NAMES, paths):
            calls = probe_result.calls.get(path, 0)
            shape = probe_result.shapes.get(path)
            if calls != 1 or shape is None or len(shape) not in (3, 4):
                raise BlockError(f"{path} cannot be block {block} of this transformer: it ran {calls} times and "
                                 f"returned {shape or 'no tensor'}, not once with tokens (N, T, C)")

    def fit_input(self, net: nn.Module, input_size: tuple[int, int]) -> None:
        """Make ``net`` take ``input_size`` images before it is shared, or say why it cannot (``UserInputError``)."""

    def transformer(self, net: nn.Module, paths: dict[str, str]) -> Transformer:
        raise NotImplementedError


def register_transformer_family(cls: type[Family]) -> type[Family]:
    """``register_family`` for a transformer adapter (the families' face imports this module before the
    fallbacks: timm's catch-all adapter would take a timm ViT or Swin, which has ``feature_info``)."""
    MODEL_FAMILIES.add(cls.name, cls(), cls.description)
    return cls


def _timm_class(net: nn.Module, module: str, name: str) -> bool:
    return any(cls.__name__ == name and cls.__module__ == module for cls in type(net).__mro__)


def _fit_timm(net: Any, input_size: tuple[int, int], what: str) -> None:
    """timm's own resampling of the position embedding (``set_input_size``) for another input size."""
    current = tuple(getattr(net.patch_embed, "img_size", None) or ())
    if current == tuple(input_size) or getattr(net, "dynamic_img_size", False):
        return
    if not hasattr(net, "set_input_size"):
        raise UserInputError(f"this timm {what} was built for {current} images and cannot take {input_size}")
    net.set_input_size(img_size=tuple(input_size))


@register_transformer_family
class TimmViTFamily(TransformerFamily):
    """timm's ``VisionTransformer`` and its subclasses (DeiT-distilled), the built-in ``digits_vit`` among them."""

    name = "timm_vit"
    description = ("timm VisionTransformer (ViT, DeiT with distillation token, the built-in digits_vit): B1..B3 = "
                   "blocks at 1/4, 1/2, 3/4 of the depth, B4 = the final norm, patch tokens on their grid")

    def matches(self, net: nn.Module) -> bool:
        return _timm_class(net, "timm.models.vision_transformer", "VisionTransformer")

    def block_paths(self, net: Any, probe_result: Probe) -> list[str]:
        return depth_paths("blocks", len(net.blocks), "norm")

    def fit_input(self, net: nn.Module, input_size: tuple[int, int]) -> None:
        _fit_timm(net, input_size, "ViT")

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        twin: Any = super().with_classes(net, 1)  # a copy without hooks; timm rebuilds its head(s)
        twin.reset_classifier(num_classes)
        return twin.eval()

    def transformer(self, net: Any, paths: dict[str, str]) -> Transformer:
        prefix = int(net.num_prefix_tokens)
        grid_size = tuple(int(s) for s in net.patch_embed.grid_size)
        grid = (grid_size[0], grid_size[1])
        distilled = getattr(net, "head_dist", None) is not None
        reads_token = net.global_pool == "token"
        readout = ([0, 1] if distilled else [0]) if reads_token else None

        def layer_logits(tokens: torch.Tensor) -> torch.Tensor:
            """LeGrad's layer prediction: the final norm as the model applies it, then the model's pooling (the
            mean over all tokens, class token included, where the model reads its class token: LeGrad's
            z-bar^l), then fc_norm and the head (the mean of both heads for DeiT-distilled, as at inference)."""
            x = net.norm(tokens)
            x = x.mean(dim=1) if reads_token else net.pool(x)
            x = net.head_drop(net.fc_norm(x))
            return (net.head(x) + net.head_dist(x)) / 2 if distilled else net.head(x)

        return Transformer(layers=list(net.blocks), layouts={b: TokenGrid(grid, prefix) for b in paths},
                           grid=grid, prefix=prefix, readout=readout, layer_logits=layer_logits,
                           projections=[block.attn.proj for block in net.blocks],
                           heads=int(net.blocks[0].attn.num_heads), stream=_timm_stream(net))


@register_transformer_family
class TorchvisionViTFamily(TransformerFamily):
    """torchvision's ``VisionTransformer`` (vit_b_16 ...): class token, fused ``nn.MultiheadAttention``."""

    name = "torchvision_vit"
    description = ("torchvision VisionTransformer: B1..B3 = encoder layers at 1/4, 1/2, 3/4 of the depth, "
                   "B4 = encoder.ln, patch tokens on their grid, the class token apart")

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, VisionTransformer)

    def block_paths(self, net: Any, probe_result: Probe) -> list[str]:
        names = [f"encoder.layers.{name}" for name, _ in net.encoder.layers.named_children()]
        quarter = depth_paths("x", len(names), "encoder.ln")
        return [names[int(p.split(".")[1])] for p in quarter[:3]] + [quarter[3]]

    def fit_input(self, net: Any, input_size: tuple[int, int]) -> None:
        if tuple(input_size) != (net.image_size, net.image_size):
            raise UserInputError(f"torchvision's VisionTransformer takes {net.image_size}x{net.image_size} images "
                                 f"only (its position embedding is fixed), not {input_size[0]}x{input_size[1]}; "
                                 "load it with that input size, or use timm's ViT, which resamples it")

    def transformer(self, net: Any, paths: dict[str, str]) -> Transformer:
        side = net.image_size // net.patch_size
        grid = (side, side)
        layers = list(net.encoder.layers)

        def layer_logits(tokens: torch.Tensor) -> torch.Tensor:
            """LeGrad's layer prediction: encoder.ln per token, the mean over all tokens (class token included,
            LeGrad's z-bar^l), then the heads."""
            return net.heads(net.encoder.ln(tokens).mean(dim=1))

        return Transformer(layers=layers, layouts={b: TokenGrid(grid, 1) for b in paths}, grid=grid, prefix=1,
                           readout=[0], layer_logits=layer_logits,
                           projections=[layer.self_attention.out_proj for layer in layers],
                           heads=int(layers[0].self_attention.num_heads), stream=_torchvision_stream(net))


def _linear_scale(module: nn.Module) -> bool:
    """Identity, or timm's LayerScale (x * gamma): linear and without bias."""
    return isinstance(module, nn.Identity) or (type(module).__name__ == "LayerScale" and hasattr(module, "gamma"))


def _timm_stream(net: Any) -> ResidualStream:
    """timm's ``Block``: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x))); ``norm``, the pooling, ``fc_norm``,
    ``head``. Anything else between W_O and the stream, or after the final norm, that is not linear is refused."""
    reasons = []
    blocks = list(net.blocks)
    parts = ("ls1", "ls2", "mlp", "attn")
    if any(type(b).__name__ != "Block" or not all(hasattr(b, n) for n in parts) for b in blocks):
        reasons.append("its blocks are not timm's pre-norm Block (x + ls1(attn(norm1(x))) + ls2(mlp(norm2(x))))")
    elif any(not isinstance(getattr(b.attn, "norm", nn.Identity()), nn.Identity)
             or getattr(b.attn, "gate", None) is not None or not _linear_scale(b.ls1) for b in blocks):
        reasons.append("its attention has a norm, a gate or a scale between the heads and the residual stream")
    if getattr(net, "head_dist", None) is not None:
        reasons.append("it reads two tokens into two heads (DeiT-distilled)")
    if net.global_pool not in ("token", "avg") or getattr(net, "attn_pool", None) is not None:
        reasons.append(f"its pooling ({net.global_pool!r}) is not a class token or a mean of tokens")
    elif net.global_pool == "avg" and getattr(net, "pool_include_prefix", False) and net.num_prefix_tokens:
        reasons.append("its mean pooling includes the prefix tokens")
    if not isinstance(net.norm, (nn.Identity, nn.LayerNorm)):
        reasons.append(f"its final norm is a {type(net.norm).__name__}, not a LayerNorm")
    if not isinstance(net.fc_norm, (nn.Identity, nn.LayerNorm)) or not isinstance(net.head, nn.Linear):
        reasons.append("its head is not a (LayerNorm +) linear layer")
    # None where a block is not timm's Block: ``reason`` then says so and the stream is not read.
    mlps: list[Any] = [getattr(b, "ls2", None) for b in blocks]
    scales: list[Any] = [getattr(b, "ls1", None) for b in blocks]
    return ResidualStream(start=net.norm_pre, mlps=mlps, scales=scales, norm=net.norm, pooled_norm=net.fc_norm,
                          head=net.head if isinstance(net.head, nn.Linear) else None,
                          reason="; ".join(reasons) or None)


def _torchvision_stream(net: VisionTransformer) -> ResidualStream:
    """torchvision's ``EncoderBlock``: x + dropout(self_attention(ln_1(x))), then + mlp(ln_2(.)); Z^0 is the
    output of ``encoder.dropout``; ``encoder.ln``, the class token, ``heads.head``."""
    layers = list(net.encoder.layers)
    plain_head = list(dict(net.heads.named_children())) == ["head"]
    return ResidualStream(start=net.encoder.dropout, mlps=[layer.mlp for layer in layers],
                          scales=[nn.Identity() for _ in layers], norm=net.encoder.ln, pooled_norm=nn.Identity(),
                          head=net.heads.head if plain_head else None,
                          reason=None if plain_head else "its head has a pre-logits layer with a tanh (not linear)")


SWIN_REASON = ("Swin attends within (shifted) windows of a few patches, never from every token to every other: it has "
               "no token-to-token attention map of the whole image, so attention rollout, Chefer's relevance and "
               "LeGrad do not apply. The CAM family works on its four stages.")


@register_transformer_family
class SwinFamily(TransformerFamily):
    """timm's and torchvision's ``SwinTransformer``: stages as blocks; no global attention map."""

    name = "swin"
    description = ("Swin Transformer (timm and torchvision): B1..B3 = its first three stages, B4 = the final norm "
                   "(the head averages its tokens); windowed attention: no attention methods")

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, SwinTransformer) or _timm_class(net, "timm.models.swin_transformer", "SwinTransformer")

    def block_paths(self, net: Any, probe_result: Probe) -> list[str]:
        if _timm_class(net, "timm.models.swin_transformer", "SwinTransformer"):
            return [f"layers.{i}" for i in range(len(net.layers))][-4:-1] + ["norm"]
        return [f"features.{i}" for i in (1, 3, 5)] + ["norm"]

    def fit_input(self, net: nn.Module, input_size: tuple[int, int]) -> None:
        if _timm_class(net, "timm.models.swin_transformer", "SwinTransformer"):
            _fit_timm(net, input_size, "Swin Transformer")

    def transformer(self, net: nn.Module, paths: dict[str, str]) -> Transformer:
        return Transformer(layers=[], layouts={b: TokenGrid((0, 0), spatial=True) for b in paths}, grid=(0, 0),
                           prefix=0, readout=None, layer_logits=None, attention=SWIN_REASON)
