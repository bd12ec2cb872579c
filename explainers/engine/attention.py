"""The attention part of the shared trace: a transformer's attention maps, from the same one forward pass.

A method that reads attention declares what it needs (``Method.attention``): ``"maps"`` (A^l of every layer,
(N, H, T, T)), ``"gradients"`` (dy_c/dA^l of the target logit, from the trace's one backward pass),
``"stream"`` (the residual stream's terms for TEXTSPAN: Z^0, each layer's MLP branch and Z^L, ``Stream``) or
``"layers"`` (LeGrad's ds^l/dA^l, the gradient of layer l's own prediction s^l with respect to its own
attention, Bousselham et al. 2024). ``trace(..., attention=...)`` then runs its forward inside
``explainers.runtime.attention.exposed_attention`` (this request only; the model's outputs are unchanged) and
taps each layer's output Z^l.

LeGrad's gradients interact across layers (s^m depends on A^l for every m >= l, through Z^l), so the sum of
the layer scores cannot share one backward pass: each layer gets its own ``torch.autograd.grad(s^l, A^l)``.
Each runs only from s^l back to A^l (autograd visits the nodes on paths to the inputs asked for): layer l's
attention output, MLP, the final norm and the head; the L of them together cost about one backward pass
through the whole network (``AttentionTrace.layer_backwards`` counts them).
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import nn

from ..runtime.attention import AttentionMaps, exposed_attention
from ..runtime.errors import MethodUnavailableError
from ..runtime.hooks import tapped

if TYPE_CHECKING:
    from ..models import ModelSpec

ATTENTION_NEEDS = ("maps", "gradients", "layers", "stream")

__all__ = ["ATTENTION_NEEDS", "AttentionCapture", "AttentionTrace", "Stream", "attention_reason"]


@dataclass
class Stream:
    """The residual stream's terms from the shared pass (``Transformer.stream``), detached: ``start`` Z^0
    (N, T, C), ``mlps[l]`` layer l's MLP branch (N, T, C), ``final`` Z^L, the input of the final norm."""

    start: torch.Tensor
    mlps: list[torch.Tensor]
    final: torch.Tensor


@dataclass
class AttentionTrace:
    """What the shared pass recorded of a transformer's attention, for its N images, layer by layer.

    ``maps[l]``: A^l (N, H, T, T), each row a distribution over the keys; ``values[l]``: V^l (N, H, T, D_h);
    ``gradients[l]``: dy_c/dA^l for each image's target logit (None unless asked); ``layer_gradients[l]``:
    ds^l/dA^l, LeGrad's gradient of layer l's prediction of the target (None unless asked);
    ``layer_backwards``: the partial backward passes those took (one per layer, each through one block)."""

    maps: list[torch.Tensor]
    values: list[torch.Tensor]
    gradients: list[torch.Tensor] | None = None
    layer_gradients: list[torch.Tensor] | None = None
    layer_backwards: int = 0
    stream: Stream | None = None


def _untouched(_output: torch.Tensor) -> None:
    return None


def _both_recorded(first: Any, second: Any) -> Any:
    def both(output: torch.Tensor) -> None:
        first(output)
        second(output)

    return both


def attention_reason(model: "ModelSpec") -> str | None:
    """None when ``model`` exposes global attention maps (a ViT), else why not, in words."""
    info = getattr(model, "transformer", None)
    if info is None:
        return f"{model.name} is not a transformer: it has no attention maps"
    return info.attention


@dataclass
class AttentionCapture:
    """One request's capture: the taps on each layer (its output Z^l) and the maps recorded meanwhile."""

    model: "ModelSpec"
    needs: frozenset[str]
    outputs: dict[int | str, torch.Tensor] = field(default_factory=dict)
    maps: list[AttentionMaps] = field(default_factory=list)

    @classmethod
    def of(cls, model: "ModelSpec", needs: Sequence[str]) -> "AttentionCapture | None":
        """None when nothing is needed; ``MethodUnavailableError`` when the model has no global attention."""
        unknown = [n for n in needs if n not in ATTENTION_NEEDS]
        if unknown:
            raise ValueError(f"unknown attention needs {unknown}; known: {ATTENTION_NEEDS}")
        if not needs:
            return None
        reason = attention_reason(model)
        if reason:
            raise MethodUnavailableError(reason)
        return cls(model, frozenset(needs))

    @property
    def layers(self) -> list[nn.Module]:
        return list(self.model.transformer.layers)

    def taps(self) -> dict[nn.Module, Any]:
        """Record each layer's output Z^l (only where LeGrad needs it); the output passes unchanged."""
        taps: dict[nn.Module, Any] = {}

        def recorder(index: "int | str"):
            def record(output: torch.Tensor) -> None:
                self.outputs[index] = output

            return record

        if "stream" in self.needs:
            declared = self.model.transformer.stream
            if declared is None or declared.reason:
                raise MethodUnavailableError(
                    f"the residual stream of {self.model.name} cannot be decomposed: "
                    f"{declared.reason if declared else 'its family does not declare it'}")
            taps[declared.start] = recorder("start")
            taps.update({module: recorder(f"mlp{i}") for i, module in enumerate(declared.mlps)})
            taps[self.layers[-1]] = recorder("final")
        if "layers" in self.needs:
            last = len(self.layers) - 1
            taps.update({layer: recorder(i) for i, layer in enumerate(self.layers)})
            if "stream" in self.needs:
                taps[self.layers[-1]] = _both_recorded(recorder(last), recorder("final"))
        return taps

    @contextmanager
    def exposing(self) -> Iterator[None]:
        with exposed_attention() as recorded:
            yield
        self.maps = list(recorded)
        if len(self.maps) != len(self.layers):
            raise MethodUnavailableError(
                f"{self.model.name} computed {len(self.maps)} attention maps in its forward pass where its "
                f"{len(self.layers)} blocks were expected to give one each (through F.scaled_dot_product_attention or "
                "nn.MultiheadAttention): its attention is computed some other way, so no map of it is shown")

    def stream(self) -> Stream | None:
        if "stream" not in self.needs:
            return None
        count = len(self.layers)
        missing = [k for k in ["start", "final", *(f"mlp{i}" for i in range(count))] if k not in self.outputs]
        if missing:
            raise MethodUnavailableError(f"{self.model.name}'s forward pass did not run {', '.join(missing)} of its "
                                         "declared residual stream: the stream is computed some other way")
        return Stream(start=self.outputs["start"].detach(),
                      mlps=[self.outputs[f"mlp{i}"].detach() for i in range(count)],
                      final=self.outputs["final"].detach())

    def layer_gradients(self, targets: torch.Tensor) -> list[torch.Tensor]:
        """ds^l/dA^l for each layer l, s^l = the layer's prediction of each image's target (LeGrad, eq. 4-5):
        one partial backward pass per layer, the graph kept for the trace's own backward after them."""
        head = self.model.transformer.layer_logits
        grads = []
        # The head's modules (the final norm) may be blocks (B4) the trace is recording: not these calls.
        with tapped({module: _untouched for module in self.model.blocks.values()}):
            for index, maps in enumerate(self.maps):
                score = head(self.outputs[index]).gather(1, targets[:, None]).sum()
                grads.append(torch.autograd.grad(score, maps.weights, retain_graph=True)[0].detach())
        return grads

    def result(self, gradients: Sequence[torch.Tensor] | None,
               layer_gradients: list[torch.Tensor] | None) -> AttentionTrace:
        return AttentionTrace(maps=[m.weights.detach() for m in self.maps],
                              values=[m.values.detach() for m in self.maps],
                              gradients=[g.detach() for g in gradients] if gradients is not None else None,
                              layer_gradients=layer_gradients,
                              layer_backwards=len(layer_gradients) if layer_gradients is not None else 0,
                              stream=self.stream())
