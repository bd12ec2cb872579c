"""TEXTSPAN's spatial decomposition as a registry method (Gandelsman et al. 2024, eq. 5; seed 001's
Sal_TEXTSPAN[i] = sum_{l,h} A_{i,l,h}): the map of the patch tokens' per-head contributions to the target's
logit, from the shared pass (attention maps and residual stream), drawn only once the decomposition has been
checked to add up to the model's output (``Decomposition.check``).

Each image's extras carry the per-head maps (``head_maps``, (L, H, h, w)), each head's share of the logit
(``head_scores``, (L, H), prefix tokens included), the remainder (MLP, start, bias and prefix-token terms) and
the two measured completeness errors: what the Heads page draws.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..engine.attention import attention_reason
from ..engine.decomposition import Decomposition, decompose
from .base import MethodOutput, register_method

if TYPE_CHECKING:
    from ..engine.trace import Trace
    from ..models import ModelSpec

__all__ = ["textspan", "textspan_reason", "per_image_extras"]

REFERENCE = ("Gandelsman, Efros & Steinhardt 2024, Interpreting CLIP's Image Representation via Text-Based "
             "Decomposition (ICLR), sec. 3, eq. 5: m_{i,l,h} = P W_O^{l,h}(alpha^{l,h}_{cls,i} v^{l,h}_i), "
             "A_{i,l,h} = <m_{i,l,h}, c_j>, Sal[i] = sum_{l,h} A_{i,l,h}")


def textspan_reason(model: "ModelSpec", block: str = "") -> str | None:
    """None when TEXTSPAN applies to ``model`` (a ViT with global attention whose residual stream its family
    declares), else why not."""
    reason = attention_reason(model)
    if reason:
        return reason
    stream = model.transformer.stream
    if stream is None:
        return f"the model family of {model.name} does not declare its residual stream, which TEXTSPAN decomposes"
    if stream.reason:
        return f"TEXTSPAN's decomposition does not apply to {model.name}: {stream.reason}"
    if stream.head is None:
        return f"{model.name} has no linear classifier whose class directions TEXTSPAN could score against"
    return None


def per_image_extras(decomposition: Decomposition) -> list[dict]:
    """What each image's explanation keeps of a checked ``Decomposition``: per-head maps and scores, the
    remainder terms and the completeness errors."""
    d = decomposition
    head_maps = d.head_maps().float().cpu()
    scores = d.heads.sum(dim=-1).float().cpu()
    extras = []
    for i in range(head_maps.shape[0]):
        extras.append({
            "head_maps": head_maps[i].numpy(), "head_scores": scores[i].numpy(),
            "mlp_scores": d.mlps[i].float().cpu().numpy(),
            "start_score": float(d.start[i]), "bias_score": float(d.biases[i]),
            "prefix_score": float(d.prefix_scores()[i].sum()),
            "logit_minus_bias": float(d.target_scores[i]),
        })
    return extras


@register_method(
    "textspan", label="TEXTSPAN (head decomposition)", family="gradient-free", signed=True,
    check=lambda model, block: textspan_reason(model), attention=("maps", "stream"),
    description=("The image representation unrolled along the residual stream into per-layer, per-head, "
                 "per-token terms (the final LayerNorms linearised with the std of the actual pass held fixed, "
                 "so the terms add up exactly), each scored against the target class's column of the classifier; "
                 "the map sums the patch tokens' terms over heads and layers. Checked before drawing: the terms "
                 "add up to the representation and their scores to the logit minus its bias (relative 1e-4). "
                 "A class-token model reads the class token's attention row; a model that averages its tokens "
                 "sums each source token's terms over all pooled query tokens. One forward pass, no backward."),
    reference=REFERENCE,
)
def textspan(trace: "Trace", block: str, model: "ModelSpec") -> MethodOutput:
    """Sal_TEXTSPAN = sum_{l,h} A_{l,h} on the patch grid (eq. 5), after ``Decomposition.check``."""
    decomposition = decompose(trace, model)
    decomposition.check()
    extras = {"completeness_error": decomposition.completeness_error(),
              "score_error": decomposition.score_error()}
    return MethodOutput(maps=decomposition.maps().float(), extras=extras,
                        per_image=per_image_extras(decomposition))
