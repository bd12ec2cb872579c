"""Models by name, path or module: ``load_model`` returns a ``ModelSpec`` (``explainers.models.spec``).

A name is a registered model (``MODELS``), a torchvision classifier or ``timm:<name>``; a path is a
checkpoint (a state dict, read as weights only); a module is any classifier ending in a linear layer.
"""
from __future__ import annotations

import os
import re
import urllib.error
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchvision import models as tv_models

from ..data.datasets import imagenet_classes
from ..runtime.devices import resolve_device
from ..runtime.errors import CheckpointError, ModelUnavailableError, UserInputError
from . import families
from .builtin.digits import DigitsResNet
from .preprocess import Preprocess, imagenet_preprocess, torchvision_preprocess
from .spec import MODELS, ModelSpec, last_linear, model_spec, module_path

__all__ = ["CHECKPOINT_SUFFIXES", "TIMM_PREFIX", "from_checkpoint", "from_module", "load_model", "model_name",
           "timm_model", "timm_preprocess", "torchvision_model"]

TIMM_PREFIX = "timm:"


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


def _is_torchvision_classifier(name: str) -> bool:
    return name in tv_models.list_models(module=tv_models)


def torchvision_model(name: str, weights: str | None = "DEFAULT") -> ModelSpec:
    """A torchvision ImageNet classifier; its weights come from torchvision's own cache or download."""
    if not _is_torchvision_classifier(name):
        raise UserInputError(f"unknown model {name!r}: use one of {', '.join(MODELS.names())} "
                             "or another torchvision classifier name (torchvision.models.list_models()).")
    enum = tv_models.get_model_weights(name)
    if weights not in (None, "DEFAULT") and weights not in enum.__members__:
        others = ", ".join(repr(m) for m in enum.__members__ if m != "DEFAULT")
        raise UserInputError(f"{name} has no weights called {weights!r}: use 'DEFAULT', {others}, or None for random "
                             "weights.")
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
    return model_spec(name, net.eval(), preprocess, list(meta_from.meta["categories"]), None, card,
                      sample_dataset="photos")


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
    return model_spec(f"{TIMM_PREFIX}{name}", net.eval(), preprocess, classes, None, card, sample_dataset="photos")


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
    head_key = module_path(spec.net, spec.classifier) + ".weight"
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
    return model_spec(base.name, net.eval(), base.transform, [str(i) for i in range(num_classes)], base.family, {},
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
    classifier = last_linear(net)
    names = classes or [str(i) for i in range(classifier.out_features)]
    return model_spec(name, net.eval(), preprocess, names, None, {}, blocks=blocks, sample_dataset=sample)


def _input_channels(net: nn.Module) -> int:
    first = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3
