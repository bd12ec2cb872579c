"""torchvision's and timm's classifiers by name (``torchvision_model``, ``timm_model``): each with the
preprocessing its weights were trained with, its weights from the library's own cache (torchvision's may
download; timm's never do), and what to do when they are not there (``ModelUnavailableError``)."""
from __future__ import annotations

import os
import urllib.error
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision import models as tv_models

from ..data.datasets import imagenet_classes
from ..runtime.errors import ModelUnavailableError, UserInputError
from .preprocess import Preprocess, imagenet_preprocess, torchvision_preprocess
from .spec import MODELS, ModelSpec, model_spec

__all__ = ["TIMM_PREFIX", "is_torchvision_classifier", "timm_model", "timm_preprocess", "torchvision_model"]

TIMM_PREFIX = "timm:"


def is_torchvision_classifier(name: str) -> bool:
    """Whether torchvision has a classifier called ``name`` (``torchvision.models.list_models()``)."""
    return name in tv_models.list_models(module=tv_models)


def torchvision_model(name: str, weights: str | None = "DEFAULT") -> ModelSpec:
    """A torchvision ImageNet classifier; its weights come from torchvision's own cache or download."""
    if not is_torchvision_classifier(name):
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
    net: Any  # duck-typed: timm's model read by attribute (pretrained_cfg, num_classes)
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
        assert isinstance(cfg.url, str)  # timm types it str | tuple[str, str]; a URL string is what is read here
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
