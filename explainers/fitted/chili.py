"""CHILI's head weights: which attention heads of a ViT look at the object, fitted once on a probing set with
object masks and kept in the store and in ``.cache/chili/`` (seed 001, "Object vs Context"; built on TEXTSPAN,
Gandelsman et al. 2024).

For each head (l, h) TEXTSPAN gives a map A_{l,h} on the patch grid (``explainers.engine.decomposition``).
CHILI removes the pseudo-register tokens (isolated high-norm tokens) with a median filter f_m, binarises the
filtered map (h_m) and compares it with the object's mask G:

    w_{l,h} = E_probes[ 1 - exp(-alpha IoU(h_m(A_{l,h}), G)) ]   in [0, 1 - e^{-alpha}]
    A^Object_{l,h} = w_{l,h} f_m(A_{l,h}),   A^Context_{l,h} = (1 - w_{l,h}) f_m(A_{l,h})
    Sal_CHILI[i] = sum_{l,h} w_{l,h} f_m(A_{i,l,h})

The seed leaves three constants open; Protoscope's defaults (each a setting of the ``chili`` method):

- ``kernel`` = 3: f_m is a 3 x 3 median over the patch grid (edges replicated). A pseudo-register is a single
  token: a 3 x 3 median removes any isolated token while keeping a region two tokens wide.
- ``threshold`` = 0.5: h_m(A) = [f_m(A) >= 0.5 max f_m(A)] (empty when the maximum is not positive): the
  half-maximum rule of weakly supervised localisation, independent of the map's scale and sign convention.
- ``alpha`` = 5: 1 - e^{-5 IoU} is 0.63 at IoU 0.2, 0.92 at IoU 0.5 and 0.99 at IoU 1: a head that overlaps
  the object at all gets most of the weight, a head that never does gets none.

The probing set (``probing_set``): for the built-in digits models, the digits training split with each digit's
ink as its mask (a patch is ink where its mean grey level exceeds ``INK``); for any model, a folder of images
with a ``masks/`` sub-folder holding one PNG per image of the same stem (``photo1.jpg`` -> ``masks/photo1.png``),
white (non-zero) on the object and black elsewhere, of the image's size. Each probe's TEXTSPAN maps are taken
for its labelled class (digits) or the model's predicted class (a mask folder carries no labels).
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import median_filter

from ..data.datasets import IMAGE_SUFFIXES, DatasetSpec, load_dataset
from ..data.images import load_image
from ..engine.decomposition import decompose
from ..engine.trace import trace
from ..models import ModelSpec
from ..runtime.errors import UserInputError
from ..runtime.progress import Progress, report
from .store import STORE, Key, write_atomically

__all__ = ["ALPHA", "CHILI_KIND", "INK", "KERNEL", "PROBES", "THRESHOLD", "ChiliRecipe", "ChiliWeights",
           "ProbingSet", "binarise", "chili_maps", "fitted_chili", "head_weights", "iou", "median_maps",
           "probing_set", "read_probing_folder"]

CHILI_KIND = "chili"  # the store's kind and the disk tier's folder: .cache/chili/
CHILI_VERSION = 1
ALPHA, KERNEL, THRESHOLD, PROBES = 5.0, 3, 0.5, 256
INK = 0.3  # a digits patch is ink where its mean grey level (0..1) exceeds this
PROBES_PER_PASS = 64


@dataclass
class ProbingSet:
    """Probe images with their object masks on the model's patch grid: ``load(i)`` gives image i (PIL),
    ``masks`` (P, h, w) bool, ``labels`` the class of each probe's maps (None: the predicted class)."""

    name: str
    load: Callable[[int], Image.Image]
    masks: np.ndarray
    labels: list[int] | None
    fingerprint: str

    def __len__(self) -> int:
        return len(self.masks)


def _grid_mask(model: ModelSpec, picture: Image.Image, threshold: float) -> np.ndarray:
    """A picture brought to the model's input by its own geometry (resize, crop), as grey levels 0..1, averaged
    over each patch and compared with ``threshold``: (h, w) bool on the patch grid."""
    grid = model.transformer.grid
    grey = np.asarray(model.transform.geometry(picture.convert("RGB")).convert("L"), dtype=np.float64) / 255.0
    rows, cols = grey.shape[0] // grid[0], grey.shape[1] // grid[1]
    pooled = grey[:rows * grid[0], :cols * grid[1]].reshape(grid[0], rows, grid[1], cols).mean(axis=(1, 3))
    return pooled > threshold


def _digits_probes(model: ModelSpec, dataset: DatasetSpec, probes: int) -> ProbingSet:
    chosen = np.linspace(0, len(dataset) - 1, min(probes, len(dataset))).round().astype(int)
    pictures = [dataset[int(i)][0] for i in chosen]
    masks = np.stack([_grid_mask(model, p, INK) for p in pictures])
    return ProbingSet(name=f"{dataset.name} ({dataset.split}), ink masks", load=lambda i: pictures[i], masks=masks,
                      labels=[int(dataset.labels[i]) for i in chosen],
                      fingerprint=f"{dataset.fingerprint}:ink{INK}:{len(chosen)}")


def read_probing_folder(model: ModelSpec, folder: str | Path, probes: int = PROBES) -> ProbingSet:
    """A folder of images with ``masks/<stem>.png`` for each (module docstring), checked: ``UserInputError``
    naming the first image whose mask is missing, of another size, or not binary (two grey levels at most)."""
    root = Path(folder)
    if not (root / "masks").is_dir():
        raise UserInputError(f"CHILI's probing folder {root} has no masks/ sub-folder: put one mask per image in "
                             f"{root / 'masks'}, named like the image with .png (photo1.jpg -> masks/photo1.png), "
                             "white on the object, black elsewhere, of the image's size")
    images = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserInputError(f"CHILI's probing folder {root} holds no images")
    images = [images[int(i)] for i in np.linspace(0, len(images) - 1, min(probes, len(images))).round()]
    masks, digest = [], hashlib.sha256(str(root.resolve()).encode())
    for path in images:
        mask_path = root / "masks" / f"{path.stem}.png"
        if not mask_path.is_file():
            raise UserInputError(f"{path.name} has no mask: CHILI expects masks/{path.stem}.png in {root}")
        picture, mask = load_image(path, name=str(path)), load_image(mask_path, name=str(mask_path))
        if mask.size != picture.size:
            raise UserInputError(f"the mask masks/{mask_path.name} is {mask.size[0]}x{mask.size[1]} but its image "
                                 f"{path.name} is {picture.size[0]}x{picture.size[1]}: a mask must have its "
                                 "image's size")
        levels = np.unique(np.asarray(mask.convert("L")))
        if len(levels) > 2:
            raise UserInputError(f"the mask masks/{mask_path.name} is not binary ({len(levels)} grey levels): "
                                 "use black for the background and one other value for the object")
        binary = Image.fromarray(((np.asarray(mask.convert("L")) > 0) * 255).astype(np.uint8))
        masks.append(_grid_mask(model, binary, 0.5))
        for file in (path, mask_path):  # an edited image or mask is another probe (the weights are kept on disk)
            found = file.stat()
            digest.update(f"{file.name}:{found.st_size}:{found.st_mtime_ns}".encode())
    return ProbingSet(name=f"{root.name} (mask folder)", load=lambda i: load_image(images[i]),
                      masks=np.stack(masks), labels=None, fingerprint=digest.hexdigest()[:16])


def probing_set(model: ModelSpec, data: "str | Path | DatasetSpec | None" = None, probes: int = PROBES) -> ProbingSet:
    """CHILI's probing set for ``model``: ``data`` a folder with ``masks/`` (``read_probing_folder``), or the
    digits dataset (by name, loaded, or None for a model trained on it: ink masks); else ``UserInputError``."""
    if isinstance(data, (str, Path)) and Path(data).is_dir():
        return read_probing_folder(model, data, probes)
    chosen = model.dataset if data is None else data
    name = chosen.name if isinstance(chosen, DatasetSpec) else chosen
    if name == "digits":
        dataset = chosen if isinstance(chosen, DatasetSpec) else load_dataset("digits", "train")
        return _digits_probes(model, dataset, probes)
    raise UserInputError(f"CHILI weighs the heads of {model.name} on probing images with object masks, which "
                         f"{name or 'its training set'} does not have: give a folder of images with a masks/ "
                         "sub-folder (one PNG per image, same stem, white on the object) as its training images")


# --- the equations -------------------------------------------------------------------------------------------

def median_maps(maps: np.ndarray, kernel: int = KERNEL) -> np.ndarray:
    """f_m: a kernel x kernel median over the last two axes (the patch grid) of maps (..., h, w), edges
    replicated; kernel 1 is the identity."""
    if kernel < 1 or kernel % 2 == 0:
        raise UserInputError(f"the median kernel must be an odd size of at least 1, not {kernel}")
    maps = np.asarray(maps, dtype=np.float64)
    size = (1,) * (maps.ndim - 2) + (kernel, kernel)
    return median_filter(maps, size=size, mode="nearest")


def binarise(maps: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """h_m: [map >= threshold * max(map)] per map (..., h, w); all False where the maximum is not positive."""
    peak = maps.max(axis=(-2, -1), keepdims=True)
    return (maps >= threshold * peak) & (peak > 0)


def iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Intersection over union of boolean maps (..., h, w) (0 where both are empty)."""
    union = (first | second).sum(axis=(-2, -1))
    return np.where(union > 0, (first & second).sum(axis=(-2, -1)) / np.maximum(union, 1), 0.0)


def head_weights(head_maps: np.ndarray, masks: np.ndarray, alpha: float = ALPHA, kernel: int = KERNEL,
                 threshold: float = THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """w_{l,h} = mean over probes of 1 - exp(-alpha IoU(h_m(f_m(A_{l,h})), G)) for head maps (P, L, H, h, w) and
    masks G (P, h, w); returns (w, mean IoU), both (L, H)."""
    overlap = iou(binarise(median_maps(head_maps, kernel), threshold), masks[:, None, None].astype(bool))
    return (1.0 - np.exp(-alpha * overlap)).mean(axis=0), overlap.mean(axis=0)


def chili_maps(head_maps: np.ndarray, weights: np.ndarray, kernel: int = KERNEL) -> dict[str, np.ndarray]:
    """For head maps (..., L, H, h, w): ``object`` A^Object = w f_m(A) and ``context`` (1 - w) f_m(A) per head,
    and ``saliency`` Sal_CHILI = sum_{l,h} w f_m(A) (..., h, w)."""
    filtered = median_maps(head_maps, kernel)
    w = np.asarray(weights, dtype=np.float64)[..., None, None]
    objects = w * filtered
    return {"object": objects, "context": (1.0 - w) * filtered, "saliency": objects.sum(axis=(-4, -3))}


# --- fitted once, kept in the store and on disk ----------------------------------------------------------------------

@dataclass
class ChiliWeights:
    """CHILI's fitted head weights w (L, H) in [0, 1], the mean IoU behind them, and the constants used."""

    weights: np.ndarray
    mean_iou: np.ndarray
    alpha: float
    kernel: int
    threshold: float
    probes: int
    probing: str
    constants: dict[str, float] = field(default_factory=dict)

    def freeze(self) -> "ChiliWeights":
        self.weights.setflags(write=False)
        self.mean_iou.setflags(write=False)
        return self


def probe_head_maps(model: ModelSpec, probing: ProbingSet, progress: Progress | None = None) -> np.ndarray:
    """TEXTSPAN's checked head maps (P, L, H, h, w) of every probe, for its label (or its predicted class)."""
    out = []
    for start in range(0, len(probing), PROBES_PER_PASS):
        indices = range(start, min(start + PROBES_PER_PASS, len(probing)))
        x = torch.stack([model.transform(probing.load(i)) for i in indices])
        targets = [probing.labels[i] for i in indices] if probing.labels is not None else None
        recorded = trace(model, x, targets, attention=("maps", "stream"))
        decomposition = decompose(recorded, model)
        decomposition.check()
        out.append(decomposition.head_maps().cpu().numpy())
        report(indices.stop, len(probing), "CHILI: TEXTSPAN maps of the probes", progress)
    return np.concatenate(out)


class ChiliRecipe:
    """CHILI's head weights of ``model`` on a probing set: what ``explainers.fitted.store`` needs to find them (in
    memory, then ``.cache/chili/``), fit them (one pass over the probes), keep and share them."""

    def __init__(self, model: ModelSpec, probing: ProbingSet, alpha: float = ALPHA, kernel: int = KERNEL,
                 threshold: float = THRESHOLD) -> None:
        self.model, self.probing = model, probing
        self.alpha, self.kernel, self.threshold = float(alpha), int(kernel), float(threshold)
        self.key = Key.of(CHILI_KIND, model.fingerprint, probing.fingerprint, version=CHILI_VERSION, alpha=self.alpha,
                          kernel=self.kernel, threshold=self.threshold)
        text = json.dumps([CHILI_VERSION, model.fingerprint, probing.fingerprint, self.alpha, self.kernel,
                           self.threshold])
        self.filename = f"chili-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
        self.title = f"Weighing {model.name}'s heads on {len(probing)} probes for CHILI (once; kept for every session)"

    def fit(self, progress: Progress | None) -> ChiliWeights:
        maps = probe_head_maps(self.model, self.probing, progress)
        weights, overlap = head_weights(maps, self.probing.masks, self.alpha, self.kernel, self.threshold)
        return ChiliWeights(weights=weights, mean_iou=overlap, alpha=self.alpha, kernel=self.kernel,
                            threshold=self.threshold, probes=len(self.probing), probing=self.probing.name,
                            constants={"max_weight": 1.0 - math.exp(-self.alpha)})

    @staticmethod
    def load(path: Path) -> ChiliWeights:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            return ChiliWeights(weights=data["weights"], mean_iou=data["mean_iou"], **meta)

    @staticmethod
    def save(value: ChiliWeights, path: Path) -> None:
        meta = {"alpha": value.alpha, "kernel": value.kernel, "threshold": value.threshold, "probes": value.probes,
                "probing": value.probing, "constants": value.constants}
        write_atomically(path, lambda temporary: np.savez(temporary, weights=value.weights, mean_iou=value.mean_iou,
                                                          meta=np.array(json.dumps(meta))))

    @staticmethod
    def share(value: ChiliWeights) -> ChiliWeights:
        return value.freeze()

    @staticmethod
    def nbytes(value: ChiliWeights) -> int:
        return int(value.weights.nbytes + value.mean_iou.nbytes)


def fitted_chili(model: ModelSpec, data: "str | Path | DatasetSpec | None" = None, alpha: float = ALPHA,
                 kernel: int = KERNEL, threshold: float = THRESHOLD, probes: int = PROBES,
                 progress: Progress | None = None) -> ChiliWeights:
    """CHILI's head weights of ``model`` on the probing set ``data`` (``probing_set``), from the process's one
    store: fitted by the first caller, shared (frozen) with every later one."""
    probing = probing_set(model, data, probes)
    return STORE.get(ChiliRecipe(model, probing, alpha, kernel, threshold), progress)
