"""Models by name, path or module: ``load_model`` returns a ``ModelSpec``.

A ModelSpec knows the network (eval mode), its family (``explainers.models.families.core``: the adapter
that knows where its stages are, its tail after a block, its LRP canonizers, how to rebuild it),
its blocks ``B1..B4`` (the outputs of its four deepest stages, as the adapter names them), its
final linear classifier, how to turn a PIL image into its input, and its classes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from torchvision import models as tv_models

from ..data.datasets import imagenet_classes, plural
from ..engine.trace import trace
from ..runtime import compute
from ..runtime.devices import device_of, resolve_device
from ..runtime.errors import CheckpointError, ModelUnavailableError, UserInputError
from ..runtime.registry import Registry
from .builtin.digits import (
    DIGITS_CARD,
    DIGITS_MARKED_CARD,
    DIGITS_MARKED_WEIGHTS,
    DIGITS_WEIGHTS,
    DigitsResNet,
    digits_transform,
)
from .builtin.digits_vit import DIGITS_VIT_CARD, DIGITS_VIT_WEIGHTS, digits_vit_network
from .families import core as families
from .inference import inference_copy
from .preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    flatten_alpha,
    imagenet_preprocess,
    torchvision_preprocess,
)

__all__ = ["BLOCK_NAMES", "CHECKPOINT_SUFFIXES", "IMAGENET_MEAN", "IMAGENET_STD", "MODELS", "CheckpointError",
           "ModelSpec", "ModelUnavailableError", "Preprocess", "digits_transform", "flatten_alpha", "from_checkpoint",
           "from_module", "load_model", "model_name", "timm_model", "timm_preprocess", "torchvision_model"]

MODELS: Registry = Registry("model")
BLOCK_NAMES = families.BLOCK_NAMES
TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "vgg16_bn", "densenet121")
TIMM_PREFIX = "timm:"


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
        self._block_shapes = {name: tuple(a.shape[1:]) for name, a in probe.activations.items()}
        last = probe.activations[BLOCK_NAMES[len(self.blocks) - 1]]
        fits = last.shape[1] == self.classifier.in_features
        if fits:
            rebuilt = last.mean(dim=(2, 3)) @ self.classifier.weight.T + self.classifier.bias
            fits = torch.allclose(rebuilt, probe.logits, rtol=1e-4, atol=1e-4)
        self._gap_head = bool(fits)

    def class_name(self, index: int) -> str:
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)

    def check_target(self, target: int) -> int:
        """``target`` as a class index, refused (``UserInputError``) unless it is one of the model's classes."""
        if not 0 <= int(target) < self.num_classes:
            raise UserInputError(
                f"Target class {target} is out of range: {self.name} has {plural(self.num_classes, 'class')} "
                f"(0..{self.num_classes - 1}). Choose one of them, or None for the predicted class."
            )
        return int(target)


def load_model(model: str | Path | nn.Module, *, weights: str | None = "DEFAULT", arch: str | None = None,
               classes: list[str] | None = None, input_size: tuple[int, int] = (224, 224),
               device: str | torch.device | None = None) -> ModelSpec:
    """Build a ModelSpec from a registered name, a checkpoint path, or an ``nn.Module``.

    - ``"digits"`` (built in, offline) or a torchvision classifier name such as ``"resnet18"``;
      ``weights="DEFAULT"`` fetches ImageNet weights through torchvision's cache, ``None``
      gives random weights.
    - ``"timm:<name>"``, any timm model (``timm.list_models()``): pretrained weights only from the
      local cache (never downloaded), ``weights=None`` for random ones.
    - A checkpoint file: a state dict, or ``{"state_dict", "arch", "classes"}``; read with
      ``torch.load(..., weights_only=True)``, never unpickling code. ``arch`` names the
      architecture when the file does not.
    - An ``nn.Module`` ending in a linear classifier (``classes`` and ``input_size`` describe it).

    ``device``: where the model runs (``explainers.runtime.devices``): None for ``default_device()`` (a GPU when
    present, else the CPU; ``PROTOSCOPE_DEVICE`` chooses); an ``nn.Module`` stays where it is unless
    ``device`` is given. Weights are read on the CPU and moved once the model is built.
    """
    if isinstance(model, nn.Module):
        spec = from_module(model, name=type(model).__name__, classes=classes, input_size=input_size)
        return spec if device is None else _moved(spec, resolve_device(device))
    where = resolve_device(device)  # an unknown device is refused before any weight is read
    return _moved(_built(model, weights, arch, classes), where)


def _moved(spec: ModelSpec, device: torch.device) -> ModelSpec:
    """``spec`` with its network on ``device``; made before the spec is shared, so no request sees it half moved.
    The probe's findings (block shapes, the GAP head) hold on every device; the inference copy is made later,
    from the moved network."""
    spec.net.to(device)
    return spec


def _built(model: str | Path, weights: str | None, arch: str | None, classes: list[str] | None) -> ModelSpec:
    if isinstance(model, str) and model in MODELS:
        return MODELS.build(model, weights=weights)
    path = Path(model).expanduser()
    if path.is_file():
        return from_checkpoint(path, arch=arch, classes=classes)
    if _looks_like_path(model):
        raise CheckpointError(_no_checkpoint_at(str(model), path))
    if isinstance(model, str) and model.startswith(TIMM_PREFIX):
        return timm_model(model[len(TIMM_PREFIX):], weights=weights)
    if isinstance(model, str) and _is_torchvision_classifier(model):
        return torchvision_model(model, weights=weights)
    raise UserInputError(
        f"unknown model {str(model)!r}: use one of {', '.join(MODELS.names())}, "
        "a torchvision classifier name, timm:<name> for a timm model, a checkpoint file, or an nn.Module."
    )


CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".tar")


def model_name(typed: str) -> str:
    """A model name a person typed (a torchvision classifier, or ``timm:<name>``), stripped; a
    ``UserInputError`` when it is not shaped like one: a path or a checkpoint file is uploaded instead."""
    typed = typed.strip()
    if not re.fullmatch(r"(timm:)?[A-Za-z0-9_.\-]+", typed) or typed.lower().endswith(CHECKPOINT_SUFFIXES):
        raise UserInputError(f"{typed!r} is not a model name: type a torchvision classifier such as convnext_tiny "
                             "or a timm model as timm:resnet50 (a checkpoint file is uploaded, not typed).")
    return typed


def _looks_like_path(model: str | Path) -> bool:
    """A Path, or a string naming a file rather than a model: it ends like a checkpoint or has a separator."""
    text = str(model)
    return (isinstance(model, Path) or text.lower().endswith(CHECKPOINT_SUFFIXES)
            or "/" in text or "\\" in text or text.startswith("~"))


def _no_checkpoint_at(given: str, path: Path) -> str:
    if path.is_dir():
        return f"{given} is a folder, not a checkpoint file: give the path of the .pt file saved with torch.save."
    resolved = str(path.resolve())
    where = "" if resolved == given else f" (looked for {resolved})"
    return (f"Checkpoint file not found: {given}{where}. Check the path, or use a built-in model "
            f"({', '.join(MODELS.names())}).")


# The built-in models whose trained weights ship in assets/: nothing to download, so the sidebar
# offers no "Random weights (no download)" for them.
SHIPPED_MODELS = ("digits", "digits_marked", "digits_vit")


@MODELS.register("digits", description="compact ResNet trained on scikit-learn's digits (built in, offline)")
def digits(weights: str | None = "DEFAULT") -> ModelSpec:
    return _digits_resnet("digits", DIGITS_WEIGHTS, DIGITS_CARD, weights)


@MODELS.register("digits_marked", description="the digits ResNet trained on digits_marked: it learned the "
                                              "class-specific mark (spurious correlation; built in, offline)")
def digits_marked(weights: str | None = "DEFAULT") -> ModelSpec:
    return _digits_resnet("digits_marked", DIGITS_MARKED_WEIGHTS, DIGITS_MARKED_CARD, weights)


@MODELS.register("digits_vit", description="small Vision Transformer (timm, 8x8-pixel patches, no class token, "
                                           "average-pooled tokens) trained on scikit-learn's digits (built in)")
def digits_vit(weights: str | None = "DEFAULT") -> ModelSpec:
    """The built-in digits ViT (``explainers.models.builtin.digits_vit``) with its shipped weights."""
    net = digits_vit_network()
    card: dict[str, Any] = {}
    if weights is not None:
        net.load_state_dict(torch.load(DIGITS_VIT_WEIGHTS, map_location="cpu", weights_only=True))
        card = json.loads(DIGITS_VIT_CARD.read_text()) if DIGITS_VIT_CARD.exists() else {}
    spec = _spec("digits_vit", net.eval(), digits_transform(), [str(d) for d in range(10)], None, card,
                 sample_dataset="digits")
    spec.dataset = "digits"
    return spec


def _digits_resnet(name: str, weights_file: Path, card_file: Path, weights: str | None) -> ModelSpec:
    """A ``DigitsResNet`` with the shipped weights of ``name`` (random ones for ``weights=None``), whose
    training set and sidebar images are the registered dataset of the same name."""
    net = DigitsResNet()
    card: dict[str, Any] = {}
    if weights is not None:
        net.load_state_dict(torch.load(weights_file, map_location="cpu", weights_only=True))
        card = json.loads(card_file.read_text()) if card_file.exists() else {}
    spec = _spec(name, net.eval(), digits_transform(), [str(d) for d in range(10)], "digits", card,
                 sample_dataset=name)
    spec.dataset = name
    return spec


def _torchvision_builder(name: str) -> Callable[..., ModelSpec]:
    def build(weights: str | None = "DEFAULT") -> ModelSpec:
        return torchvision_model(name, weights=weights)

    return build


for _name in TORCHVISION_MODELS:
    MODELS.register(_name, description=f"torchvision {_name}, ImageNet weights")(_torchvision_builder(_name))


def _is_torchvision_classifier(name: str) -> bool:
    return name in tv_models.list_models(module=tv_models)


def torchvision_model(name: str, weights: str | None = "DEFAULT") -> ModelSpec:
    """A torchvision ImageNet classifier; its weights come from torchvision's own cache or download."""
    if not _is_torchvision_classifier(name):
        raise UserInputError(f"unknown model {name!r}: use one of {', '.join(MODELS.names())} "
                             "or another torchvision classifier name (torchvision.models.list_models()).")
    enum = tv_models.get_model_weights(name)
    if weights not in (None, "DEFAULT") and weights not in enum.__members__:
        raise UserInputError(f"{name} has no weights called {weights!r}: use 'DEFAULT', "
                         f"{', '.join(repr(m) for m in enum.__members__ if m != 'DEFAULT')}, or None for random weights.")
    chosen = enum.DEFAULT if weights == "DEFAULT" else (enum[weights] if weights else None)
    try:
        net = tv_models.get_model(name, weights=chosen)
    except (urllib.error.URLError, OSError, ConnectionError) as error:
        raise ModelUnavailableError(_weights_unavailable(name, chosen, error)) from error  # cause in __cause__
    meta_from = chosen or enum.DEFAULT
    preprocess = torchvision_preprocess(meta_from)  # random weights: the architecture's own default input
    card = {"weights": str(chosen) if chosen else "random (weights=None)", "dataset": "ImageNet-1k"}
    metrics = meta_from.meta.get("_metrics", {}).get("ImageNet-1K", {})
    if chosen is not None and metrics:
        card["test_accuracy"] = round(metrics.get("acc@1", 0.0) / 100, 4)
    return _spec(name, net.eval(), preprocess, list(meta_from.meta["categories"]), None, card, sample_dataset="photos")


def timm_model(name: str, weights: str | None = "DEFAULT", input_size: tuple[int, int] | None = None) -> ModelSpec:
    """A timm model by name (``timm.create_model``), with the preprocessing of its pretrained config
    (mean, std, input size, crop). ``weights="DEFAULT"`` reads its pretrained weights from the local
    cache (Hugging Face's or torch's) and never downloads; offline and uncached it raises
    ``ModelUnavailableError`` saying what to do. ``input_size`` overrides the config's."""
    import timm

    base = name.split(".")[0]
    if not timm.list_models(base) and not timm.list_models(base, pretrained=True):
        close = timm.list_models(f"*{base.split('_')[0]}*")[:8]
        raise UserInputError(f"unknown timm model {name!r}" + (f"; similar names: {', '.join(close)}" if close else "")
                             + " (timm.list_models() lists them all).")
    if weights not in (None, "DEFAULT"):
        raise UserInputError(f"timm models take weights='DEFAULT' (pretrained, from the local cache) or None (random), "
                             f"not {weights!r}; name a pretrained tag in the name instead (timm:{base}.<tag>).")
    if weights is None:
        net = timm.create_model(name, pretrained=False)
        card = {"weights": "random (weights=None)"}
    else:
        state, where = _timm_cached_weights(name)
        net = timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
        card = {"weights": f"pretrained ({where})", "dataset": str(net.pretrained_cfg.get("tag") or "")}
    preprocess = timm_preprocess(net, input_size)
    imagenet = net.num_classes == len(imagenet_classes())  # a 1000-way head: ImageNet-1k's names, else numbers
    classes = list(imagenet_classes()) if imagenet else [str(i) for i in range(net.num_classes)]
    return _spec(f"{TIMM_PREFIX}{name}", net.eval(), preprocess, classes, None, card, sample_dataset="photos")


def timm_preprocess(net: nn.Module, input_size: tuple[int, int] | None = None) -> Preprocess:
    """The preprocessing a timm model's pretrained config asks for, as timm's ``resolve_data_config``
    resolves it and ``create_transform`` applies it at evaluation: input size, interpolation (bicubic for
    most timm weights), crop fraction and crop mode, mean and std. ``input_size`` overrides the
    config's, resized straight to it (no crop)."""
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=net)
    height, width = input_size or tuple(config["input_size"][1:])
    return imagenet_preprocess((height, width), mean=tuple(config["mean"]), std=tuple(config["std"]),
                               crop=None if input_size else float(config.get("crop_pct") or 1.0),
                               interpolation=config.get("interpolation") or "bilinear",
                               crop_mode=config.get("crop_mode") or "center")


def _timm_cached_weights(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """The pretrained state dict of a timm model from the local caches only (Hugging Face hub cache, then
    torch hub's checkpoints), read as weights only; ``ModelUnavailableError`` when neither holds it."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(name.split(".")[0])
    if cfg is None:
        raise ModelUnavailableError(f"timm has no pretrained weights for {name}. Tick \"Random weights\" to explore "
                                    "the untrained architecture, or load a checkpoint of your own.")
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hf_cache = Path(os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE") or hf_home / "hub")
    torch_cache = Path(torch.hub.get_dir()) / "checkpoints"
    found: Path | None = None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            hit = try_to_load_from_cache(repo, filename, cache_dir=str(hf_cache), revision=revision or None)
            if isinstance(hit, str) and Path(hit).is_file():
                found = Path(hit)
                break
    if found is None and cfg.url:
        candidate = torch_cache / cfg.url.rsplit("/", 1)[-1].split("?")[0]
        found = candidate if candidate.is_file() else None
    if found is None:
        where = f"Hugging Face's cache ({hf_cache})" + (f" or torch's ({torch_cache})" if cfg.url else "")
        source = f" (repository {cfg.hf_hub_id})" if cfg.hf_hub_id else ""
        raise ModelUnavailableError(
            f"The pretrained weights of timm's {name}{source} are not in {where}, and Protoscope never downloads "
            f"while it runs. Tick \"Random weights\" to explore the untrained architecture, load a checkpoint of your "
            f"own (a state dict saved with torch.save), or download the weights once on a machine with a network "
            f"(timm.create_model({name!r}, pretrained=True)) and copy that cache here.")
    if found.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(found), device="cpu"), str(found)
    return torch.load(found, map_location="cpu", weights_only=True), str(found)


def _weights_unavailable(name: str, weights: Any, error: OSError) -> str:
    """For a person, not a programmer: what failed, where the file would have to be, and what to do instead."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    filename = str(weights.url).rsplit("/", 1)[-1] if weights is not None else "the weight file"
    network = isinstance(error, (urllib.error.URLError, ConnectionError, TimeoutError))
    why = "no network connection" if network else (error.strerror or "the download failed").lower()
    return (f"The ImageNet weights of {name} could not be downloaded ({why}) and are not in "
            f"torchvision's cache ({cache}). Tick \"Random weights\" to explore the untrained architecture, "
            f"upload a checkpoint of your own, or copy {filename} into that folder from a machine that has it.")


def from_checkpoint(path: Path, arch: str | None = None, classes: list[str] | None = None) -> ModelSpec:
    """Load a state dict saved by ``torch.save`` (weights only; code is never unpickled).

    ``arch`` (or the file's own ``"arch"``) names the architecture: a registered model, a torchvision
    classifier, or ``timm:<name>``. A classifier of another class count than the architecture's is
    rebuilt through the family adapter (``Family.with_classes``) before the weights are loaded."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable or unsafe files
        raise CheckpointError(
            f"{Path(path).name} could not be read as a PyTorch weights file ({error.__class__.__name__}). "
            "Save the model with torch.save(model.state_dict(), path); files that need code to unpickle are refused."
        ) from error
    state, meta = _split_checkpoint(loaded)
    arch = arch or meta.get("arch") or _guess_arch(state)
    if arch is None:
        raise CheckpointError(
            f"{Path(path).name} does not say which architecture it holds (a plain state dict): name it, one of "
            f"{', '.join(MODELS.names())}, a torchvision classifier such as resnet50, or timm:<name> (the "
            "architecture box in the sidebar, arch= in Python), or save it as {\"state_dict\": ..., \"arch\": ...}."
        )
    _check_arch(arch)
    spec = _random_arch(arch)
    head_key = _module_path(spec.net, spec.classifier) + ".weight"
    if head_key in state and state[head_key].shape[0] != spec.num_classes:
        spec = _rebuild_with_classes(arch, state[head_key].shape[0])
    # Checked before loading: load_state_dict raises a bare RuntimeError on other shapes, even if strict=False.
    own = spec.net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = _shape_mismatches(spec.net, state)
    if missing or unexpected or mismatched:
        raise CheckpointError(_misfit_message(Path(path).name, arch, missing, unexpected, mismatched))
    spec.net.load_state_dict(state)
    names = classes or meta.get("classes") or (spec.classes if len(spec.classes) == spec.num_classes
                                               else [str(i) for i in range(spec.num_classes)])
    spec.classes = list(names)
    spec.name = f"{Path(path).name} ({arch})"
    spec.card = {"checkpoint": str(path), "arch": arch, **{k: v for k, v in meta.items() if k != "classes"}}
    spec._fingerprint = None
    return spec


def _check_arch(arch: str) -> None:
    """Refuse an architecture we cannot build before torchvision or timm answers with its own internal error."""
    if arch in MODELS or (isinstance(arch, str) and (_is_torchvision_classifier(arch) or _is_timm_arch(arch))):
        return
    raise CheckpointError(f"unknown architecture {arch!r}: use one of {', '.join(MODELS.names())}, another "
                          "torchvision classifier name or timm:<name> for a timm model, the one the checkpoint was "
                          "trained with.")


def _is_timm_arch(arch: str) -> bool:
    """``timm:<name>`` where timm knows ``<name>`` (a pretrained tag after a dot is allowed)."""
    if not arch.startswith(TIMM_PREFIX):
        return False
    import timm

    return bool(timm.list_models(arch[len(TIMM_PREFIX):].split(".")[0]))


def _random_arch(arch: str) -> ModelSpec:
    """The architecture ``arch`` with random weights (nothing is read from a cache or downloaded)."""
    if arch in MODELS:
        return MODELS.build(arch, weights=None)
    if arch.startswith(TIMM_PREFIX):
        return timm_model(arch[len(TIMM_PREFIX):], weights=None)
    return torchvision_model(arch, weights=None)


def _split_checkpoint(loaded: Any) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    if isinstance(loaded, Mapping) and "state_dict" in loaded:
        meta = {k: v for k, v in loaded.items() if k != "state_dict" and isinstance(v, (str, int, float, list))}
        loaded = loaded["state_dict"]
    else:
        meta = {}
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError("the file holds no state dict (a mapping of parameter names to tensors)")
    return loaded, meta


def _guess_arch(state: Mapping[str, torch.Tensor]) -> str | None:
    reference = DigitsResNet().state_dict()
    same = set(reference) == set(state) and all(
        reference[k].shape == state[k].shape for k in reference if not k.startswith("fc.")
    )
    return "digits" if same else None


def _rebuild_with_classes(arch: str, num_classes: int) -> ModelSpec:
    """The architecture ``arch`` (random weights) with a ``num_classes``-way classifier, as its family
    adapter rebuilds it; same preprocessing and blocks."""
    base = _random_arch(arch)
    net = families.family_of(base).with_classes(base.net, num_classes)
    return _spec(base.name, net.eval(), base.transform, [str(i) for i in range(num_classes)], base.family, {},
                 sample_dataset=base.sample_dataset)


def _shape_mismatches(net: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    own = net.state_dict()
    return [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in state.items() if k in own and own[k].shape != v.shape]


def _misfit_message(filename: str, arch: str, missing: list[str], unexpected: list[str],
                    mismatched: list[str]) -> str:
    parts = [f"{filename} does not fit the {arch} architecture:"]
    if missing:
        parts.append(f"{len(missing)} parameters missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        parts.append(f"{len(mismatched)} with other shapes (e.g. {'; '.join(mismatched[:2])})")
    parts.append("Choose the architecture the checkpoint was trained with.")
    return " ".join(parts)


def from_module(net: nn.Module, name: str, classes: list[str] | None = None,
                input_size: tuple[int, int] = (224, 224), channels: int | None = None,
                blocks: Sequence[str] | Mapping[str, str] | None = None) -> ModelSpec:
    """Wrap any classifier module whose last linear layer gives the logits.

    ``blocks`` names B1..B4 by module path (a list, shallow to deep, or ``{"B1": path, ...}``)
    instead of the family adapter's choice; each must run once per forward pass.
    """
    channels = channels or _input_channels(net)
    if channels == 1:  # greyscale: the digits are the built-in pictures that fit it
        preprocess, sample = Preprocess(input_size=input_size, mode="L", mean=(0.5,), std=(0.5,)), "digits"
    else:
        preprocess, sample = imagenet_preprocess(input_size, crop=None), "photos"
    classifier = _last_linear(net)
    names = classes or [str(i) for i in range(classifier.out_features)]
    return _spec(name, net.eval(), preprocess, names, None, {}, blocks=blocks, sample_dataset=sample)


def _spec(name: str, net: nn.Module, preprocess: Preprocess, classes: list[str], family: str | None,
          card: dict[str, Any], blocks: Sequence[str] | Mapping[str, str] | None = None, *,
          sample_dataset: str) -> ModelSpec:
    """The ModelSpec of ``net``: its family adapter (``family`` names one, else the first that matches),
    its blocks (checked: each runs once per forward, at decreasing resolutions), and one probe pass.
    ``sample_dataset`` names the built-in image set that suits its input (``ModelSpec.sample_dataset``)."""
    adapter = families.family_named(family) if family in families.FAMILIES else _family(net)
    if hasattr(adapter, "fit_input"):  # a transformer's position embedding, for the input size (before the probe)
        adapter.fit_input(net, preprocess.input_size)
    modules = find_blocks(net, adapter.name, preprocess, blocks)
    paths = {block: _module_path(net, module) for block, module in modules.items()}
    spec = ModelSpec(name=name, net=net, blocks=modules, block_paths=paths, classifier=_last_linear(net),
                     transform=preprocess, classes=classes, family=adapter.name, card=card,
                     sample_dataset=sample_dataset)
    if hasattr(adapter, "transformer"):
        spec.transformer = adapter.transformer(net, paths)
    spec._probe()  # once, at load: explanations then run exactly one forward pass each
    return spec


def _family(net: nn.Module) -> families.Family:
    """The family adapter of ``net`` (``explainers.models.families.core``: the first registered one that matches)."""
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


def _last_module_per_resolution(net: nn.Module, preprocess: Preprocess) -> list[nn.Module]:
    """The generic rule (``families.graph_blocks``): stage outputs found in the traced graph, the last
    per spatial size, each run once; the top-level children when the forward cannot be traced."""
    observed = families.probe(net, len(preprocess.mean), preprocess.input_size)
    paths = families.family_named("generic").block_paths(net, observed)
    return [net.get_submodule(path) for path in paths]


def _last_linear(net: nn.Module) -> nn.Linear:
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise UserInputError("This model has no nn.Linear layer: Protoscope explains classifiers that end in one.")
    return linears[-1]


def _input_channels(net: nn.Module) -> int:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def _module_path(net: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in net.named_modules() if module is target)
