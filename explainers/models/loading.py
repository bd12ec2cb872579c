"""Models by name, path or module: ``load_model`` returns a ``ModelSpec`` (``explainers.models.spec``).

A name is a registered model (``MODELS``), a torchvision classifier, ``timm:<name>`` or ``open_clip:<arch>``
(CLIP as a zero-shot classifier, ``explainers.models.clip``); a path is a
checkpoint (a state dict, read as weights only); a module is any classifier ending in a linear layer.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..data.datasets import plural
from ..runtime.devices import resolve_device
from ..runtime.errors import CheckpointError, UserInputError
from . import families
from .builtin.digits import DigitsResNet
from .clip import OPEN_CLIP_PREFIX, open_clip_model, split_open_clip_name
from .preprocess import Preprocess, imagenet_preprocess
from .pretrained import TIMM_PREFIX, is_torchvision_classifier, timm_model, torchvision_model
from .spec import MODELS, ModelSpec, last_linear, model_spec, module_path
from .vit_checkpoints import misfit_message

__all__ = ["CHECKPOINT_SUFFIXES", "from_checkpoint", "from_module", "load_model", "model_name"]


def load_model(model: str | Path | nn.Module, *, weights: str | None = "DEFAULT", arch: str | None = None,
               classes: list[str] | None = None, input_size: tuple[int, int] = (224, 224),
               device: str | torch.device | None = None) -> ModelSpec:
    """Build a ModelSpec from a registered name, a checkpoint path, or an ``nn.Module``.

    - ``"digits"`` (built in, offline) or a torchvision classifier name such as ``"resnet18"``;
      ``weights="DEFAULT"`` fetches ImageNet weights through torchvision's cache, ``None``
      gives random weights.
    - ``"timm:<name>"``, any timm model (``timm.list_models()``): pretrained weights only from the
      local cache (never downloaded), ``weights=None`` for random ones.
    - ``"open_clip:<arch>"`` (``open_clip:ViT-B-32``): CLIP as a zero-shot classifier of ``classes`` (default:
      ImageNet-1k's names), its weights from a local file, ``weights="/path/to/weights.bin"`` or
      ``"open_clip:<arch>@/path/to/weights.bin"`` (never downloaded), ``weights=None`` for random ones.
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
    if isinstance(model, str) and model.startswith(OPEN_CLIP_PREFIX):  # before the path test: "@/path" is allowed
        clip_arch, weights_file = split_open_clip_name(model)
        return open_clip_model(clip_arch, weights=weights_file or weights, classes=classes)
    path = Path(model).expanduser()
    if path.is_file():
        return from_checkpoint(path, arch=arch, classes=classes)
    if _looks_like_path(model):
        raise CheckpointError(_no_checkpoint_at(str(model), path))
    if isinstance(model, str) and model.startswith(TIMM_PREFIX):
        return timm_model(model[len(TIMM_PREFIX):], weights=weights)
    if isinstance(model, str) and is_torchvision_classifier(model):
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
    if typed.startswith(OPEN_CLIP_PREFIX):  # open_clip:<arch>, or open_clip:<arch>@<weights file>
        clip_arch, _ = split_open_clip_name(typed)
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", clip_arch):
            raise UserInputError(f"{typed!r} is not an open_clip model: write open_clip:ViT-B-32@/path/to/weights.bin")
        return typed
    if not re.fullmatch(r"(timm:)?[A-Za-z0-9_.\-]+", typed) or typed.lower().endswith(CHECKPOINT_SUFFIXES):
        raise UserInputError(f"{typed!r} is not a model name: type a torchvision classifier such as convnext_tiny, "
                             "a timm model as timm:resnet50 or CLIP as open_clip:ViT-B-32@/path/to/weights.bin "
                             "(a checkpoint file is uploaded, not typed).")
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


def from_checkpoint(path: Path, arch: str | None = None, classes: list[str] | None = None) -> ModelSpec:
    """Load a state dict saved by ``torch.save`` (weights only; code is never unpickled).

    ``arch`` (or the file's own ``"arch"``) names the architecture: a registered model, a torchvision
    classifier, or ``timm:<name>``. A classifier of another class count than the architecture's is
    rebuilt through the family adapter (``Family.with_classes``) before the weights are loaded."""
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable or unsafe files
        raise CheckpointError(_unreadable_message(Path(path), error)) from error
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
    head_key = module_path(spec.net, spec.classifier) + ".weight"
    if head_key in state and state[head_key].shape[0] != spec.num_classes:
        spec = _rebuild_with_classes(arch, state[head_key].shape[0])
    # Checked before loading: load_state_dict raises a bare RuntimeError on other shapes, even if strict=False.
    misfit = misfit_message(Path(path).name, arch, spec.net.state_dict(), state)
    if misfit:
        raise CheckpointError(misfit)
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
    if arch in MODELS or (isinstance(arch, str) and (is_torchvision_classifier(arch) or _is_timm_arch(arch))):
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
    return model_spec(base.name, net.eval(), base.transform, [str(i) for i in range(num_classes)], base.family, {},
                      sample_dataset=base.sample_dataset)


def _unreadable_message(path: Path, error: Exception) -> str:
    """Why torch.load refused a file, in words: cut short or damaged, code to unpickle, or not a weights file."""
    size = path.stat().st_size if path.exists() else 0
    text = str(error)
    if isinstance(error, pickle.UnpicklingError):
        return (f"{path.name} holds Python objects that need code to unpickle, which is refused (running a file's "
                "code is unsafe). Save the weights alone: torch.save(model.state_dict(), path).")
    if isinstance(error, EOFError) or "zip archive" in text or "central directory" in text or size == 0:
        return (f"{path.name} ({plural(size, 'byte')}) is truncated or corrupt: it ends before its contents do, as a "
                "copy or upload cut short leaves it. Copy or upload the file again, and check that its size is the "
                "original's; if the original is damaged too, save the model again with "
                "torch.save(model.state_dict(), path).")
    return (f"{path.name} could not be read as a PyTorch weights file ({error.__class__.__name__}: "
            f"{text.splitlines()[0][:160] if text else 'no detail'}). Save the model with "
            "torch.save(model.state_dict(), path); files that need code to unpickle are refused.")


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
    classifier = last_linear(net)
    names = classes or [str(i) for i in range(classifier.out_features)]
    return model_spec(name, net.eval(), preprocess, names, None, {}, blocks=blocks, sample_dataset=sample)


def _input_channels(net: nn.Module) -> int:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3
