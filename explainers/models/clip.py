"""CLIP as a zero-shot classifier, through open_clip: ``open_clip_model`` (``load_model("open_clip:<arch>",
weights=<file>)``).

A CLIP model scores an image against texts: the cosine similarity of the image embedding and each text
embedding, times the learned logit scale. With one prompt per class ("a photo of a {}."), those scores are the
logits of a linear classifier on the normalised image embedding whose rows are the normalised text embeddings
times the scale (Radford et al. 2021, Figure 3). ``ZeroShotCLIP`` is exactly that: open_clip's image tower, then
``F.normalize``, then an ``nn.Linear`` (``head``) built once from the text tower, which is then dropped. So the
model is a classifier ending in a linear layer, and its image tower, a ViT, is explained by the ``open_clip``
family adapter (``explainers.models.families.clip_vit``).

Nothing is downloaded: the architecture comes from open_clip's own configs (random weights), the weights from a
file the user names, read with ``torch.load(..., weights_only=True)`` or safetensors, and checked against the
architecture before loading (``CheckpointError`` naming the misfit).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import imagenet_classes
from ..runtime.errors import CheckpointError, ModelUnavailableError, UserInputError
from ..runtime.paths import cache_dir, write_atomically
from .preprocess import Preprocess
from .spec import ModelSpec, model_spec
from .vit_checkpoints import misfit_message

__all__ = ["text_embeddings", "OPEN_CLIP_PREFIX", "PROMPT", "ZeroShotCLIP", "kept_zero_shot_head", "open_clip_model",
           "split_open_clip_name", "zero_shot_head"]

OPEN_CLIP_PREFIX = "open_clip:"
PROMPT = "a photo of a {}."  # CLIP's ImageNet prompt (Radford et al. 2021, sec. 3.1.4)
TEXT_BATCH = 256
HEADS_KIND = "clip_heads"  # .cache/clip_heads/: zero-shot heads of weights files, kept between server starts
HEADS_VERSION = 1


class ZeroShotCLIP(nn.Module):
    """A CLIP image tower under a zero-shot head: logits = head(normalize(visual(x)))."""

    def __init__(self, visual: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.visual = visual
        self.head = head  # registered last: the network's last nn.Linear is the classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.normalize(self.visual(x), dim=-1))


def split_open_clip_name(name: str) -> tuple[str, str | None]:
    """``"open_clip:ViT-B-32@/path/w.pt"`` -> ``("ViT-B-32", "/path/w.pt")``; without ``@``: (arch, None)."""
    if not name.startswith(OPEN_CLIP_PREFIX):
        raise UserInputError(f"{name!r} is not an open_clip model name: write open_clip:<arch> (open_clip:ViT-B-32)")
    arch, _, path = name[len(OPEN_CLIP_PREFIX):].partition("@")
    return arch.strip(), (path.strip() or None)


def _config(arch: str) -> dict[str, Any]:
    """open_clip's config of ``arch``, refused (``UserInputError``) unless its image tower is open_clip's own ViT
    and nothing of it needs a download (a Hugging Face text tower or tokenizer)."""
    import open_clip

    config = open_clip.get_model_config(arch) if arch else None
    if config is None:
        close = [m for m in open_clip.list_models() if arch and arch.split("-")[0].lower() in m.lower()][:8]
        raise UserInputError(f"unknown open_clip architecture {arch!r}" + (f"; similar: {', '.join(close)}" if close
                                                                          else "") + " (open_clip.list_models()).")
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if vision.get("timm_model_name") or not isinstance(vision.get("layers", 12), int):
        raise UserInputError(f"open_clip:{arch}'s image tower is a ResNet or a timm model, not open_clip's own "
                             "Vision Transformer: Protoscope explains CLIP ViTs (ViT-B-32, ViT-B-16, ViT-L-14, ...)")
    if text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        raise UserInputError(f"open_clip:{arch} needs a text tower or tokenizer from Hugging Face, which would be "
                             "downloaded; use one with CLIP's own text transformer (ViT-B-32, ViT-B-16, ...)")
    return config


def read_weights(path: Path) -> Mapping[str, torch.Tensor]:
    """A state dict from ``path``: safetensors, or ``torch.load(..., weights_only=True)`` (never unpickling code);
    a ``{"state_dict": ...}`` training checkpoint is unwrapped and DataParallel's ``module.`` prefix dropped."""
    if not path.is_file():
        raise CheckpointError(f"CLIP weights file not found: {path}. Give the path of a local open_clip weights file "
                              "(open_clip_pytorch_model.bin, open_clip_model.safetensors or a .pt state dict).")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded: Any = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise several types for unreadable or unsafe files
        raise CheckpointError(
            f"{path.name} could not be read as a weights file ({error.__class__.__name__}). OpenAI's original .pt "
            "files are TorchScript archives: load one with open_clip once and save model.state_dict(); files that "
            "need code to unpickle are refused.") from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path.name} holds no state dict (a mapping of parameter names to tensors)")
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k[len("module."):]: v for k, v in loaded.items()}
    return loaded


def _check_fit(filename: str, arch: str, own: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    misfit = misfit_message(filename, f"open_clip:{arch}", own, state)
    if misfit:
        raise CheckpointError(misfit)


def _class_names(classes: Sequence[str] | None) -> list[str]:
    if classes is None:
        return list(imagenet_classes())
    names = [str(c).strip() for c in classes if str(c).strip()]
    if not names:
        raise UserInputError("no zero-shot classes given: type at least one class name (comma-separated)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserInputError(f"zero-shot class names given twice: {', '.join(repeated)}; each class once")
    return names


def _prompts(prompt: str, names: list[str]) -> list[str]:
    if "{}" not in prompt and "{class}" not in prompt:
        raise UserInputError(f"the prompt {prompt!r} has no place for the class name: write {{}} or {{class}} in it, "
                             "e.g. 'a photo of a {}.'")
    return [prompt.replace("{class}", "{}").replace("{}", name) for name in names]


# duck-typed: open_clip classes read by attribute (torch types nn.Module.__getattr__ as Tensor | Module), so the
# functions below take the CLIP model or its image tower as Any.
@torch.no_grad()
def text_embeddings(clip: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text(tokens)``, computed on the tokens up to the longest prompt's end only.

    Exact, not an approximation: CLIP's text transformer is causal (its ``attn_mask`` lets a token see
    only those before it) and the embedding is read at the end-of-text token, so the padding after the
    longest prompt never reaches it; cutting the 77-token context to that length gives the same numbers
    (checked by a test) in a fraction of the time (1,000 ImageNet prompts: about 10 tokens instead of 77).
    Any other text tower (no causal mask, another pooling) gets ``encode_text`` itself."""
    mask = getattr(clip, "attn_mask", None)
    pooling = getattr(clip, "text_pool_type", None)
    if mask is None or pooling != "argmax" or not hasattr(clip, "positional_embedding"):
        return clip.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max()) + 1  # the end-of-text token is the highest id of each prompt
    tokens = tokens[:, :length]
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:length].to(cast)
    x = clip.ln_final(clip.transformer(x, attn_mask=mask[:length, :length]))
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)]
    projection = clip.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, nn.Linear) else x @ projection


@torch.no_grad()
def zero_shot_head(clip: Any, tokenizer: Any, names: list[str], prompt: str = PROMPT) -> nn.Linear:
    """The linear head of zero-shot classification: weight row j = exp(logit_scale) * t_j / |t_j|, t_j the text
    embedding of the prompt for class j; bias = CLIP's logit bias where it has one (SigLIP), else 0."""
    texts = _prompts(prompt, names)
    embedded = torch.cat([text_embeddings(clip, tokenizer(texts[i:i + TEXT_BATCH]))
                          for i in range(0, len(texts), TEXT_BATCH)])
    weight = clip.logit_scale.exp() * F.normalize(embedded, dim=-1)
    head = nn.Linear(weight.shape[1], weight.shape[0])
    head.weight.copy_(weight)
    bias = getattr(clip, "logit_bias", None)
    head.bias.fill_(float(bias) if bias is not None else 0.0)
    return head.eval()


def kept_zero_shot_head(clip: Any, tokenizer: Any, names: list[str], prompt: str, arch: str,
                        weights: Path | None) -> nn.Linear:
    """``zero_shot_head``, kept in ``.cache/clip_heads/`` for a weights file: keyed by the architecture, the file
    (path, size, modification time), the prompt and the class names, so that the next server start reads it
    instead of running the text tower again (1,000 ImageNet prompts: 7 s for ViT-B-32 on two cores). Random
    weights (``weights=None``) differ at every load and are never kept."""
    if weights is None:
        return zero_shot_head(clip, tokenizer, names, prompt)
    found = weights.stat()
    text = json.dumps([HEADS_VERSION, arch, str(weights.resolve()), found.st_size, found.st_mtime_ns, prompt, names])
    path = cache_dir() / HEADS_KIND / f"{arch}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
    width = int(clip.text_projection.shape[-1]) if getattr(clip, "text_projection", None) is not None else None
    try:
        with np.load(path, allow_pickle=False) as data:
            weight, bias = torch.from_numpy(data["weight"]), torch.from_numpy(data["bias"])
        if weight.shape[0] == len(names) and bias.shape == (len(names),) and width in (None, weight.shape[1]):
            head = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            return head.eval()
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # none kept yet, or unreadable: computed again and rewritten
    head = zero_shot_head(clip, tokenizer, names, prompt)
    rows, offsets = head.weight.detach().numpy(), head.bias.detach().numpy()
    try:
        write_atomically(path, lambda temporary: np.savez(temporary, weight=rows, bias=offsets))
    except OSError:
        pass  # a read-only or full disk costs the next start, not this one
    return head


def _preprocess(visual: Any) -> Preprocess:
    """open_clip's evaluation transform (``image_transform_v2`` with its preprocess config): the shorter side to
    the input size, centre crop (``resize_mode`` "shortest"), or a squash; its interpolation, mean and std."""
    cfg = dict(getattr(visual, "preprocess_cfg", {}) or {})
    size = tuple(cfg.get("size") or visual.image_size)
    size = (size[0], size[0]) if len(size) == 1 else (int(size[0]), int(size[1]))
    mode = cfg.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise UserInputError(f"open_clip's resize mode {mode!r} is not reproduced here (shortest and squash are)")
    resize: int | tuple[int, int] = size[0] if size[0] == size[1] and mode == "shortest" else size
    return Preprocess(input_size=size, mode="RGB", mean=tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                      std=tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711))), resize=resize,
                      interpolation=cfg.get("interpolation", "bicubic"),
                      crop_mode="center" if mode == "shortest" else "squash")


def open_clip_model(arch: str, weights: str | Path | None = None, classes: Sequence[str] | None = None,
                    prompt: str = PROMPT) -> ModelSpec:
    """CLIP ``arch`` (an open_clip config name, e.g. ``ViT-B-32``) as a zero-shot classifier of ``classes`` (default:
    ImageNet-1k's names), one prompt per class (``prompt`` with ``{}`` for the name).

    ``weights``: a local weights file (never downloaded; ``CheckpointError`` when it does not fit ``arch``), or
    None for random weights. ``"DEFAULT"`` is refused with what to do: open_clip's pretrained weights are not
    shipped, and Protoscope never downloads."""
    import open_clip

    config = _config(arch)
    names = _class_names(classes)
    if weights == "DEFAULT":
        raise ModelUnavailableError(f"open_clip:{arch} needs a weights file: write open_clip:{arch}@/path/to/weights "
                                    "(a local open_clip_pytorch_model.bin, .safetensors or .pt state dict; nothing is "
                                    "downloaded), or tick Random weights for the untrained architecture.")
    clip = open_clip.create_model(arch, pretrained=None, pretrained_image=False, pretrained_text=False,
                                  load_weights=False, device="cpu").eval()
    card: dict[str, Any] = {"arch": arch, "weights": "random (weights=None)", "zero_shot_prompt": prompt,
                            "embed_dim": config.get("embed_dim")}
    path = None
    if weights is not None:
        path = Path(weights).expanduser()
        state = read_weights(path)
        _check_fit(path.name, arch, clip.state_dict(), state)
        clip.load_state_dict(state)
        card["weights"] = str(path)
    tokenizer = open_clip.get_tokenizer(arch)
    net = ZeroShotCLIP(clip.visual, kept_zero_shot_head(clip, tokenizer, names, prompt, arch, path)).eval()
    card["logit_scale"] = round(float(clip.logit_scale.detach().exp()), 4)
    del clip  # the text tower is done with: the head holds what it had to say
    spec = model_spec(f"{OPEN_CLIP_PREFIX}{arch}", net, _preprocess(net.visual), names, "open_clip", card,
                      sample_dataset="photos")
    return spec
