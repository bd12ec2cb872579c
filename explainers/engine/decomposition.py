"""TEXTSPAN's decomposition of a ViT's image representation into per-layer, per-head, per-token terms.

Gandelsman, Efros & Steinhardt 2024, *Interpreting CLIP's Image Representation via Text-Based Decomposition*
(ICLR), sec. 3 and eq. 2-5. Unrolling the residual stream (pre-norm blocks),

    Z^L = Z^0 + sum_l MSA^l(Z^{l-1}) + sum_l MLP^l(Z-hat^l),
    MSA^l(Z)_q = sum_h sum_i A^{l,h}_{q,i} W_O^{l,h} v^{l,h}_i + b_O^l                     (eq. 3-4)

and the representation r is read from Z^L through the final LayerNorm, the readout (the class token, or the mean
of the patch tokens), an optional second norm (timm's ``fc_norm``) and CLIP's projection P. The paper linearises
each LayerNorm: its mean-centering C is linear; its division by the standard deviation is held at the value the
actual forward pass computed (``std_q`` per token, Appendix A of the paper). With those fixed, r is an affine
function of Z^L and the decomposition is exact:

    r = sum_{l,h,i} m_{i,l,h} + sum_l MLP-term_l + start term + bias terms,
    m_{i,l,h} = F( s_l( W_O^{l,h} v^{l,h}_i ) ) * a^{l,h}_i,   a^{l,h}_i = sum_q w_q A^{l,h}_{q,i} / std_q      (eq. 5)

where F(u) = P(post(gamma * C(u))) is the linearised readout of one token's vector, w_q the readout weights of
the query tokens (one for the class token; 1/n for each of n pooled patch tokens), s_l the LayerScale between W_O
and the stream (timm ``ls1``; identity elsewhere). For a class-token model a_i = A_{cls,i} / std_cls: the paper's
eq. 5. For a model that averages its tokens (``digits_vit``), head h's term from source token i gathers what i
sends to *every* pooled query token q: m_{i,l,h} sums over the query tokens, each divided by its own std.

Each term is scored against the class direction c_j (a row of the classifier's weight; CLIP's text embedding):
A_{i,l,h} = <m_{i,l,h}, c_j>, and the scores of all terms sum to <r, c_j> = logit_j - b_j. ``Decomposition.check``
verifies both identities against the actual forward pass before anything is drawn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..runtime.errors import MethodUnavailableError

if TYPE_CHECKING:
    from ..models import ModelSpec
    from .trace import Trace

__all__ = ["COMPLETENESS_TOLERANCE", "Decomposition", "class_directions", "decompose"]

COMPLETENESS_TOLERANCE = 1e-4  # relative: ||sum of terms - r|| / ||r||, and the score sum against ||r|| ||c_j||


@dataclass
class Decomposition:
    """TEXTSPAN's terms of N images' representations r (N, d), scored against each image's class direction c_j.

    ``heads``: A_{i,l,h} (N, L, H, T), every token (prefix tokens first); ``head_vectors``: sum_i m_{i,l,h}
    (N, L, H, d); ``mlps``, ``mlp_vectors``: the MLP terms (N, L), (N, L, d); ``start``, ``start_vector``: Z^0's
    term (N,), (N, d); ``biases``, ``bias_vector``: the W_O biases of every layer and the norms' shifts (N,),
    (N, d); ``representation``: r from the forward pass (N, d); ``target_scores``: logit_j - b_j from the forward
    pass (N,); ``directions``: c_j (N, d); ``prefix`` and ``grid``: the token layout."""

    heads: torch.Tensor
    head_vectors: torch.Tensor
    mlps: torch.Tensor
    mlp_vectors: torch.Tensor
    start: torch.Tensor
    start_vector: torch.Tensor
    biases: torch.Tensor
    bias_vector: torch.Tensor
    representation: torch.Tensor
    target_scores: torch.Tensor
    directions: torch.Tensor
    prefix: int
    grid: tuple[int, int]

    def reconstruction(self) -> torch.Tensor:
        """The sum of every term (N, d): equals ``representation`` (``completeness_error``)."""
        return (self.head_vectors.sum(dim=(1, 2)) + self.mlp_vectors.sum(dim=1) + self.start_vector
                + self.bias_vector)

    def completeness_error(self) -> float:
        """max over images of ||sum of terms - r|| / ||r||."""
        gap = (self.reconstruction() - self.representation).norm(dim=-1)
        return float((gap / self.representation.norm(dim=-1).clamp_min(1e-30)).max())

    def total_scores(self) -> torch.Tensor:
        """The sum of every term's score (N,): equals logit_j - b_j."""
        return self.heads.sum(dim=(1, 2, 3)) + self.mlps.sum(dim=1) + self.start + self.biases

    def score_error(self) -> float:
        """max over images of |sum of scores - (logit_j - b_j)| / (||r|| ||c_j||), the scale of the inner product
        (the logit alone can be near zero)."""
        scale = self.representation.norm(dim=-1) * self.directions.norm(dim=-1)
        return float(((self.total_scores() - self.target_scores).abs() / scale.clamp_min(1e-30)).max())

    def check(self, tolerance: float = COMPLETENESS_TOLERANCE) -> None:
        """Raise ``MethodUnavailableError`` unless both identities hold within ``tolerance`` (relative)."""
        errors = {"the representation": self.completeness_error(), "the logit": self.score_error()}
        failed = {what: err for what, err in errors.items() if not err <= tolerance}
        if failed:
            detail = ", ".join(f"{what} off by {err:.2e} (relative)" for what, err in failed.items())
            raise MethodUnavailableError(
                f"TEXTSPAN's terms do not add up to the model's output ({detail}; tolerance {tolerance:g}): some "
                "step of this model is not the pre-norm ViT the decomposition assumes, so its maps are not drawn")

    def head_maps(self) -> torch.Tensor:
        """A_{l,h} on the patch grid (N, L, H, h, w), the prefix tokens left out."""
        n, layers, heads, _ = self.heads.shape
        return self.heads[..., self.prefix:].reshape(n, layers, heads, *self.grid)

    def maps(self) -> torch.Tensor:
        """Sal_TEXTSPAN[i] = sum_{l,h} A_{i,l,h} on the patch grid (N, h, w)."""
        return self.head_maps().sum(dim=(1, 2))

    def prefix_scores(self) -> torch.Tensor:
        """The heads' terms from the prefix tokens (class, registers), summed over layers and heads (N, prefix)."""
        return self.heads[..., :self.prefix].sum(dim=(1, 2))

    def remainder(self) -> torch.Tensor:
        """Everything the patch-token map leaves out (N,): MLP terms, start term, biases, prefix tokens."""
        return self.mlps.sum(dim=1) + self.start + self.biases + self.prefix_scores().sum(dim=-1)


def class_directions(model: "ModelSpec") -> tuple[torch.Tensor, torch.Tensor | None]:
    """The classifier's class directions c_j (K, d) and biases (K,) (its final linear layer): what TEXTSPAN
    scores the terms against. A model without a linear head (CLIP) passes its text embeddings to
    ``decompose`` instead."""
    stream = model.transformer.stream if getattr(model, "transformer", None) is not None else None
    head = stream.head if stream is not None else None
    if head is None:
        raise MethodUnavailableError(f"{model.name} has no linear classifier whose columns TEXTSPAN could score "
                                     "against: give the class directions (text embeddings) explicitly")
    return head.weight.detach(), (head.bias.detach() if head.bias is not None else None)


class _LinearNorm:
    """A LayerNorm with its standard deviation held at the forward pass's: x -> gamma * C(x) / std (linear) and
    its shift beta; Identity gives the identity and no shift."""

    def __init__(self, module: nn.Module | None, actual: torch.Tensor) -> None:
        self.norm = isinstance(module, nn.LayerNorm)
        channels = actual.shape[-1]
        self.std = actual.new_ones(actual.shape[:-1])
        self.gamma, self.beta = actual.new_ones(channels), actual.new_zeros(channels)
        if not self.norm:
            if module is not None and not isinstance(module, nn.Identity):
                raise MethodUnavailableError(f"a {type(module).__name__} in the readout is not linearisable here")
            return
        assert isinstance(module, nn.LayerNorm)
        if len(module.normalized_shape) != 1:
            raise MethodUnavailableError("a LayerNorm over more than the channels is not decomposed here")
        self.std = (actual.var(dim=-1, unbiased=False) + module.eps).sqrt()  # (...,) per token or per image
        if module.weight is not None:
            self.gamma = module.weight.detach().to(actual)
        if module.bias is not None:
            self.beta = module.bias.detach().to(actual)

    def scaled(self, x: torch.Tensor, std: torch.Tensor | None) -> torch.Tensor:
        """gamma * C(x) / std (the std broadcast over the middle dimensions of x), or x for an Identity."""
        if not self.norm:
            return x
        centred = (x - x.mean(dim=-1, keepdim=True)) * self.gamma
        if std is None:
            return centred
        return centred / std.reshape(std.shape[0], *([1] * (x.dim() - 2)), 1)

    def shift(self) -> torch.Tensor:
        return self.beta


def _readout_weights(model: "ModelSpec", tokens: int, like: torch.Tensor) -> torch.Tensor:
    """w_q (T,): the weight of each query token in the readout (class token(s), or the mean of the patch tokens)."""
    info = model.transformer
    weights = like.new_zeros(tokens)
    rows = info.readout if info.readout is not None else list(range(info.prefix, tokens))
    weights[rows] = 1.0 / len(rows)
    return weights


def _scale(module: nn.Module, u: torch.Tensor) -> torch.Tensor:
    """s_l(u): timm's LayerScale (u * gamma) or the identity; both linear without bias."""
    gamma = getattr(module, "gamma", None)
    return u if gamma is None else u * gamma.detach().to(u)


def decompose(trace: "Trace", model: "ModelSpec", directions: torch.Tensor | None = None,
              bias: torch.Tensor | None = None) -> Decomposition:
    """TEXTSPAN's decomposition (module docstring) of the trace's images, scored against each image's target
    class: ``directions`` (K, d) and ``bias`` (K,) default to the classifier's (``class_directions``).

    The trace must record the attention maps and the residual stream: ``trace(model, x, attention=("maps",
    "stream"))``. Computed in float64 from the float32 pass. Not checked here: call ``check``."""
    recorded = trace.attention
    if recorded is None or recorded.stream is None:
        raise ValueError("TEXTSPAN needs the trace's attention maps and residual stream: "
                         "trace with attention=('maps', 'stream')")
    info, declared = model.transformer, model.transformer.stream
    assert declared is not None
    if directions is None:
        directions, bias = class_directions(model)
    stream = recorded.stream
    dt = torch.float64
    final = stream.final.to(dt)
    n, tokens, channels = final.shape
    targets = trace.targets.to(final.device)
    norm = _LinearNorm(declared.norm, final)
    readout = _readout_weights(model, tokens, final)
    omega = readout / norm.std  # (N, T): w_q / std_q
    with torch.no_grad():  # r as the model computes it, through its own modules, from the recorded Z^L
        normed = declared.norm(stream.final)
        pooled = (readout.to(normed)[None, :, None] * normed).sum(dim=1)  # (N, C)
        actual = declared.pooled_norm(pooled) if declared.pooled_norm is not None else pooled
        representation = (declared.projection(actual) if declared.projection is not None else actual).to(dt)
    pooled = pooled.to(dt)
    post = _LinearNorm(declared.pooled_norm, pooled)
    projection = declared.projection
    weight_p = projection.weight.detach().to(dt) if projection is not None else None
    bias_p = getattr(projection, "bias", None)

    def project(x: torch.Tensor) -> torch.Tensor:
        return x @ weight_p.T if weight_p is not None else x

    def readout_of(u: torch.Tensor) -> torch.Tensor:
        """F(u) = P(post(gamma * C(u))) for per-image vectors u (N, ..., C), linear."""
        return project(post.scaled(norm.scaled(u, None), post.std))

    c = directions.detach().to(final.device, dt)[targets]  # (N, d)
    b = bias.detach().to(final.device, dt)[targets] if bias is not None else final.new_zeros(n)

    def gathered(per_token: torch.Tensor) -> torch.Tensor:  # (N, T, C) -> (N, C): sum_q omega_q x_q
        return (omega[..., None] * per_token.to(dt)).sum(dim=1)

    start_vector = readout_of(gathered(stream.start))
    mlp_vectors = torch.stack([readout_of(gathered(m)) for m in stream.mlps], dim=1)  # (N, L, d)
    bias_vector = project(post.scaled(norm.shift().expand(n, channels), post.std)
                          + post.shift())
    if bias_p is not None:
        bias_vector = bias_vector + bias_p.detach().to(dt)
    head_scores, head_vectors = [], []
    for layer, (weights, values) in enumerate(zip(recorded.maps, recorded.values)):
        w_o = info.projections[layer]
        heads, head_dim = values.shape[1], values.shape[-1]
        per_head_w = w_o.weight.detach().to(dt).reshape(-1, heads, head_dim)  # (C_out, H, D_h)
        projected = torch.einsum("nhtk,chk->nhtc", values.to(dt), per_head_w)  # W_O^h v_i (N, H, T, C)
        vectors = readout_of(_scale(declared.scales[layer], projected))  # F(s(W_O^h v_i)) (N, H, T, d)
        a = torch.einsum("nq,nhqi->nhi", omega, weights.to(dt))  # (N, H, T)
        head_scores.append(a * torch.einsum("nhtd,nd->nht", vectors, c))
        head_vectors.append(torch.einsum("nht,nhtd->nhd", a, vectors))
        if w_o.bias is not None:
            b_o = _scale(declared.scales[layer], w_o.bias.detach().to(dt)).expand(n, channels)
            bias_vector = bias_vector + readout_of(b_o) * omega.sum(dim=1, keepdim=True)
    logits = trace.logits.to(final.device, dt).gather(1, targets[:, None])[:, 0]
    return Decomposition(
        heads=torch.stack(head_scores, dim=1), head_vectors=torch.stack(head_vectors, dim=1),
        mlps=torch.einsum("nld,nd->nl", mlp_vectors, c),
        mlp_vectors=mlp_vectors, start=(start_vector * c).sum(-1), start_vector=start_vector,
        biases=(bias_vector * c).sum(-1), bias_vector=bias_vector, representation=representation,
        target_scores=logits - b, directions=c, prefix=info.prefix, grid=info.grid)
