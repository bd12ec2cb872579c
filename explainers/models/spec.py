"""What a loaded classifier is (``ModelSpec``), how one is made from a network (``model_spec``: its
family adapter, its blocks, one probe pass), and the registry of models by name (``MODELS``).

A ModelSpec knows the network (eval mode), its family (``explainers.models.families``: the adapter
that knows where its stages are, its tail after a block, its LRP canonizers, how to rebuild it),
its blocks ``B1..B4`` (the outputs of its four deepest stages, as the adapter names them), its
final linear classifier, how to turn a PIL image into its input, and its classes.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..data.datasets import plural
from ..engine.trace import trace
from ..runtime import compute
from ..runtime.devices import device_of
from ..runtime.errors import UserInputError
from ..runtime.registry import Registry
from . import families
from .families import BLOCK_NAMES
from .inference import inference_copy
from .preprocess import Preprocess

__all__ = ["MODELS", "ModelSpec", "find_blocks", "last_linear", "model_spec", "module_path"]

MODELS: Registry = Registry("model")  # builders by name, each registered where it is defined (``builtin``)


@dataclass
class ModelSpec:
    """Everything the explainers need to know about one classifier."""

    name: str
    net: nn.Module
    blocks: dict[str, nn.Module]
    block_paths: dict[str, str]
    classifier: nn.Linear
    transform: Preprocess
    classes: list[str]
    family: str
    card: dict[str, Any] = field(default_factory=dict)
    dataset: str | None = None  # the registered dataset it was trained on, if known (prototypes need it)
    # The built-in image set whose pictures suit this model's input, offered by the sidebar: "digits"
    # (64x64 greyscale handwriting), "digits_marked" (the same, with the marks the digits_marked model
    # learned) or "photos" (scikit-image's photographs); set where the model is built.
    sample_dataset: str = "photos"
    _fingerprint: str | None = field(default=None, repr=False)
    _block_shapes: dict[str, tuple[int, int, int]] | None = field(default=None, repr=False)
    _gap_head: bool | None = field(default=None, repr=False)
    _inference_net: nn.Module | None = field(default=None, repr=False)
    # A transformer's tokens, layers and attention (``explainers.models.families.transformers.Transformer``); None
    # for a CNN. Its ``layouts`` lay each block's tokens on the patch grid in the trace.
    transformer: Any = None
    # Guards the lazily computed fields above: a ModelSpec is shared by every session of a server.
    _lazy: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def input_size(self) -> tuple[int, int]:
        return self.transform.input_size

    @property
    def device(self) -> torch.device:
        """Where the network's weights are (``explainers.runtime.devices``): every pass of it runs there."""
        return device_of(self.net)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    @property
    def fingerprint(self) -> str:
        """A hash of the weights: keys every cache of anything computed from this model."""
        if self._fingerprint is None:
            with self._lazy:
                if self._fingerprint is None:
                    digest = hashlib.sha256(self.name.encode())
                    for key, tensor in self.net.state_dict().items():
                        digest.update(key.encode())
                        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
                    self._fingerprint = digest.hexdigest()[:16]
        return self._fingerprint

    @property
    def block_shapes(self) -> dict[str, tuple[int, int, int]]:
        """(channels, height, width) of each block's output for one input image."""
        if self._block_shapes is None:
            self._probe()
        assert self._block_shapes is not None
        return self._block_shapes

    @property
    def gap_head(self) -> bool:
        """True when logits = mean over B4's pixels of h_r . c_j + b (seed 000, Thm 1): CAM's premise."""
        if self._gap_head is None:
            self._probe()
        assert self._gap_head is not None
        return self._gap_head

    @property
    def inference_net(self) -> nn.Module:
        """The network for batched gradient-free passes (perturbation methods): batch norms folded,
        channels-last, checked against ``net`` when made (``explainers.models.inference``). Feed it
        channels-last inputs under ``torch.inference_mode()``; hooks on ``net`` do not reach it.

        Made once, on the compute thread: torch.fx's tracing patches every module's ``__call__``
        while it runs, so no other pass may run meanwhile (``explainers.runtime.compute``)."""
        if self._inference_net is None:
            with self._lazy:
                if self._inference_net is None:
                    self._inference_net = compute.run(inference_copy, self.net, self.probe_inputs(2))
        return self._inference_net

    def probe_inputs(self, count: int) -> torch.Tensor:
        """Seeded random inputs of the model's shape, for checks made once when a model is used."""
        generator = torch.Generator().manual_seed(0)
        return torch.randn(count, len(self.transform.mean), *self.input_size, generator=generator).to(self.device)

    def _probe(self) -> None:
        probe = trace(self, self.probe_inputs(1))
        self._block_shapes = {name: (int(a.shape[1]), int(a.shape[2]), int(a.shape[3]))  # (C, h, w)
                              for name, a in probe.activations.items()}
        last = probe.activations[BLOCK_NAMES[len(self.blocks) - 1]]
        fits = last.shape[1] == self.classifier.in_features
        if fits:
            rebuilt = last.mean(dim=(2, 3)) @ self.classifier.weight.T + self.classifier.bias
            fits = torch.allclose(rebuilt, probe.logits, rtol=1e-4, atol=1e-4)
        self._gap_head = bool(fits)

    def class_name(self, index: int) -> str:
        """The name of class ``index`` (its number when the model has no name for it)."""
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)

    def with_classes(self, classes: Sequence[str]) -> "ModelSpec":
        """A copy of this spec whose classes are ``classes`` (one name per output), for one user's session: the
        network, its blocks and what was computed lazily are shared, this spec is left as it is (other
        sessions may hold it). The fingerprint is the weights', so what was fitted for one serves the other."""
        names = [str(name) for name in classes]
        if len(names) != self.num_classes:
            raise UserInputError(f"{len(names)} class names for {plural(self.num_classes, 'output')} of {self.name}: "
                                 "give one name per class")
        self.fingerprint  # computed once here, shared by the copy
        copy = replace(self, classes=names, card=dict(self.card))
        copy._lazy = threading.Lock()
        return copy

    def check_target(self, target: int) -> int:
        """``target`` as a class index, refused (``UserInputError``) unless it is one of the model's classes."""
        if not 0 <= int(target) < self.num_classes:
            raise UserInputError(
                f"Target class {target} is out of range: {self.name} has {plural(self.num_classes, 'class')} "
                f"(0..{self.num_classes - 1}). Choose one of them, or None for the predicted class."
            )
        return int(target)


def model_spec(name: str, net: nn.Module, preprocess: Preprocess, classes: list[str], family: str | None,
               card: dict[str, Any], blocks: Sequence[str] | Mapping[str, str] | None = None, *,
               sample_dataset: str) -> ModelSpec:
    """The ModelSpec of ``net``: its family adapter (``family`` names one, else the first that matches),
    its blocks (checked: each runs once per forward, at decreasing resolutions), and one probe pass.
    ``sample_dataset`` names the built-in image set that suits its input (``ModelSpec.sample_dataset``)."""
    adapter = (families.family_named(family) if family is not None and family in families.MODEL_FAMILIES
               else _family(net))
    if hasattr(adapter, "fit_input"):  # a transformer's position embedding, for the input size (before the probe)
        adapter.fit_input(net, preprocess.input_size)
    modules = find_blocks(net, adapter.name, preprocess, blocks)
    paths = {block: module_path(net, module) for block, module in modules.items()}
    spec = ModelSpec(name=name, net=net, blocks=modules, block_paths=paths, classifier=last_linear(net),
                     transform=preprocess, classes=classes, family=adapter.name, card=card,
                     sample_dataset=sample_dataset)
    if hasattr(adapter, "transformer"):
        spec.transformer = adapter.transformer(net, paths)
    spec._probe()  # once, at load: explanations then run exactly one forward pass each
    return spec


def _family(net: nn.Module) -> families.Family:
    """The family adapter of ``net`` (``explainers.models.families``: the first registered one that matches)."""
    return families.family_for(net)


def find_blocks(net: nn.Module, family: str, preprocess: Preprocess,
                chosen: Sequence[str] | Mapping[str, str] | None = None) -> dict[str, nn.Module]:
    """B1..B4 of a network: its four deepest stages, from shallow to deep, as its family's adapter names
    them (or as ``chosen`` names them). One probe forward counts each module's calls: a module that runs
    more than once per forward is refused (``families.BlockError`` says why)."""
    observed = families.probe(net, len(preprocess.mean), preprocess.input_size)
    if chosen is None:
        paths = families.family_named(family).block_paths(net, observed)
    elif isinstance(chosen, Mapping):
        paths = [chosen[name] for name in BLOCK_NAMES if name in chosen]
    else:
        paths = list(chosen)
    if not paths:
        raise ValueError("found no convolutional stage (a module with a spatial output) in this model")
    if len(paths) > len(BLOCK_NAMES):
        raise ValueError(f"at most {len(BLOCK_NAMES)} blocks, got {len(paths)}: {', '.join(paths)}")
    known = dict(net.named_modules())
    missing = [path for path in paths if path not in known or not path]
    if missing:
        raise families.BlockError(f"no module called {', '.join(map(repr, missing))} in this network")
    getattr(families.family_named(family), "check_blocks", families.check_blocks)(net, paths, observed)
    return dict(zip(BLOCK_NAMES, (known[path] for path in paths)))


def last_linear(net: nn.Module) -> nn.Linear:
    """The network's last ``nn.Linear``: the classifier whose outputs are the logits."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserInputError("This model has no nn.Linear layer: Protoscope explains classifiers that end in one.")
    return linears[-1]


def module_path(net: nn.Module, target: nn.Module) -> str:
    """The path of ``target`` in ``net`` (``layer4``, ``features.8``): its first name in ``named_modules``."""
    return next(name for name, module in net.named_modules() if module is target)
