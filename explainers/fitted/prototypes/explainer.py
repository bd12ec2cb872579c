"""The prototype explainer as an estimator: KMEx and the multi-depth explainer, fitted in three stages, then used."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.datasets import DatasetSpec
from ...engine.trace import trace
from ...models import BLOCK_NAMES, ModelSpec
from ...models.inputs import as_batch
from ...runtime.errors import UserInputError
from ...runtime.maps import upsample
from ...runtime.progress import Progress, report_fraction, scaled
from ...runtime.settings import DeclaredParameters, Setting
from ..checks import LARGEST_SEED, NotFittedError, check_classes, check_dataset, check_model
from ..features import FeatureCache, memory_budget
from ..store import write_atomically
from .classwise import ClassRunner, ClassTask, fit_classes, own_class_best
from .depths import block_activations, depth_blocks, depth_features, fit_stage, on_cpu, recorded_blocks, suffix_depths
from .kmeans import KMEANS_CHOICES, KMEANS_WORKERS
from .patches import PATCH_BYTES, PROJECTIONS, Patch, level_patches, nearest_patches

# The values these settings had before they were settings: a file fitted so (the shipped ones) holds no
# such entry, and its key, digest and saved settings leave them out, so that they stay as they were.
EARLIER_VALUES = {"projection": "all", "kmeans": "sklearn"}


@dataclass
class Level:
    """One k-means explainer at one depth: its prototypes and their nearest training patches."""

    depth: str
    prototypes: np.ndarray      # (K, D)
    labels: np.ndarray          # (K,) class of each prototype, K/C consecutive per class
    resolution: tuple[int, int]  # R' as (h', w'); (1, 1) for KMEx
    patches: list[Patch]


@dataclass
class PrototypeExplanation:
    """What one image looks like to the prototype explainer at one depth."""

    depth: str
    segments: np.ndarray        # (h', w') prototype index of every pixel (eq. 9)
    class_counts: np.ndarray    # (C,) pixels owned by each class's prototypes (eq. 10)
    predicted: int
    target: int
    attribution: np.ndarray     # (h', w') eq. 11, propagated segment-wise to this depth
    attribution_levels: dict[str, np.ndarray]  # the attribution at every depth it passed through
    logits: np.ndarray


class PrototypeExplainer(DeclaredParameters):
    """KMEx (``depth="pooled"``) or the multi-depth explainer (``"B4"``, ``"B34"``, ``"B234"``, ``"B1234"``).

    ``max_pixels_per_class`` bounds the rows given to k-means for one class: when a class
    has more pixels (images x R'), a seeded uniform sample is drawn, the same number from
    every image. Assignments, nearest patches and predictions always use every pixel.
    ``projection``: where each prototype's nearest training patch is searched, among its own class's
    images (``"class"``, ProtoPNet's projection, the default) or every image (``"all"``, C times the work).
    ``kmeans``: ``"torch"`` (``lloyd``: matrix products and Hamerly's bounds, 2-3x as fast; the default) or
    ``"sklearn"`` (scikit-learn's: the shipped files' fits). Both run one class per core, every core busy.
    ``depth`` is checked against the model's blocks (``depth_blocks``); the other settings are declared
    in ``parameters`` and checked there.
    """

    parameters = (
        Setting("per_class", int, 5, "Prototypes per class (K/C)", low=1),
        Setting("seed", int, 0, "Seed of k-means and of the rows drawn for it", low=0, high=LARGEST_SEED),
        Setting("max_pixels_per_class", int, 20_000, "Rows given to k-means for one class at most (a seeded sample "
                "of every image beyond)", low=1),
        Setting("batch_size", int, 128, "Images per network pass when the features are extracted", low=1),
        Setting("projection", str, "class", "Where each prototype's nearest training patch is searched: its own "
                "class's images, or every image", choices=PROJECTIONS),
        Setting("kmeans", str, "torch", "k-means as matrix products with Hamerly's bounds (torch), or "
                "scikit-learn's (the shipped files')", choices=KMEANS_CHOICES),
    )

    def __init__(self, depth: str = "B234", per_class: int = 5, seed: int = 0,
                 max_pixels_per_class: int = 20_000, batch_size: int = 128, projection: str = "class",
                 kmeans: str = "torch") -> None:
        # Settings are only stored here (scikit-learn's contract): ``fit`` checks them, with the model and data.
        self.depth = depth
        self.per_class = per_class
        self.seed = seed
        self.max_pixels_per_class = max_pixels_per_class
        self.batch_size = batch_size
        self.projection = projection
        self.kmeans = kmeans

    # ---- fitting ----
    def fit(self, model: ModelSpec, dataset: DatasetSpec, progress: Progress | None = None,
            features: FeatureCache | None = None, budget: int | None = None,
            class_runner: ClassRunner | None = None) -> "PrototypeExplainer":
        """Fit on ``dataset``, whose classes are matched to the model's by name (``class_map``).

        Three stages, streamed so that memory stays within ``budget`` bytes (default
        ``features.memory_budget()``, 4 GB) whatever the number of classes and images:

        1. the blocks' outputs of every image, written once to ``features`` (a ``FeatureCache``;
           default: the machine's cache of this model and data, so that another K/C, seed or depth
           reuses them, and an interrupted fit resumes from the images already written);
        2. k-means, one class at a time (``classwise``), on rows read from the cache;
        3. the nearest training patch of every prototype: with the own-class projection, found in stage 2
           among the class's rows while they are in memory; with the whole-set scan, scanning the cache a
           chunk at a time.

        ``class_runner`` runs stage 2's classes (default: ``KMEANS_WORKERS`` threads of this process;
        ``explainers.jobs`` passes Ray tasks), with the same results.

        ``progress`` gets (fraction, "stage i of 3, what: done / total"), the stages weighted by their
        expected share of the time, so that an ETA extrapolated from it is fair. A listener that raises
        (``features.FitCancelled``) stops the fit at once; what stage 1 wrote is whole and reused.
        """
        if self.__dict__.get("_frozen"):
            raise AttributeError("this explainer is shared (frozen) and cannot be refitted: "
                                 "fit a new PrototypeExplainer")
        labels = self.validate(model, dataset)
        self.model_ = model  # kept for predict/explain; not saved (the cache key holds its fingerprint)
        self.model_name_ = model.name
        self.num_classes_ = model.num_classes
        self.classifier_ = (model.classifier.weight.detach().cpu().numpy().copy(),
                            model.classifier.bias.detach().cpu().numpy().copy())
        depths = ["pooled"] if self.depth == "pooled" else suffix_depths(self.depth)
        blocks = sorted({b for d in depths for b in depth_blocks(d)})
        budget = budget or memory_budget()
        cache = features if features is not None else FeatureCache(model, dataset)
        try:
            shares = self._shares(cache, recorded_blocks(model, blocks), depths)
            cache.ensure(recorded_blocks(model, blocks), fit_stage(progress, 0.0, shares[0], 1, "extracting features"),
                         self.batch_size, budget)
            tasks = self._class_tasks(model, labels, depths, budget)
            project = self.projection == "class"
            found = fit_classes(cache.files(blocks), tasks, scaled(progress, shares[0], 1.0 if project else shares[1]),
                                class_runner)
            self.levels_: dict[str, Level] = {}
            for depth in depths:
                fitted = [found[task.label][depth] for task in tasks]
                prototypes = np.concatenate([level.centres for level in fitted])
                owners = np.concatenate([np.full(len(level.centres), task.label) for task, level in zip(tasks, fitted)])
                self.levels_[depth] = Level(depth, prototypes, owners, self._resolution(cache, depth), [])
                if project:
                    self.levels_[depth].patches = level_patches(model, self.levels_[depth],
                                                                own_class_best(fitted, prototypes))
            if project:
                report_fraction(1.0, "stage 3 of 3, finding the nearest training patches: found in stage 2, each "
                                "prototype's among its own class's images", progress)
            else:
                patches = nearest_patches(model, self.levels_, cache, budget, scaled(progress, shares[1], 1.0), labels,
                                          self.projection)
                for depth, found_patches in patches.items():
                    self.levels_[depth].patches = found_patches
        finally:
            if features is None:
                cache.close()
        report_fraction(1.0, "done", progress)
        return self

    @staticmethod
    def _shares(cache: FeatureCache, recorded: list[str], depths: list[str]) -> tuple[float, float]:
        """Where stages 1 and 2 end, as fractions of the fit (measured on digits; stage 1 is a
        few reads when the features are cached already)."""
        features, clustering = (0.45, 0.1) if len(depths) == 1 else (0.2, 0.65)
        if cache.complete(recorded):
            features = 0.02
        return features, features + clustering

    def _class_tasks(self, model: ModelSpec, labels: np.ndarray, depths: list[str], budget: int) -> list[ClassTask]:
        """One ``ClassTask`` per class with images (a folder may hold some of the model's classes only), each
        with an equal share of the budget among the classes run at once."""
        present = [label for label in range(model.num_classes) if (labels == label).any()]
        return [ClassTask(label, model.class_name(label), np.flatnonzero(labels == label), tuple(depths),
                          self.per_class, self.seed, self.max_pixels_per_class, self.kmeans,
                          budget // KMEANS_WORKERS, self.projection == "class") for label in present]

    @staticmethod
    def _resolution(cache: FeatureCache, depth: str) -> tuple[int, int]:
        """R' of a level: the shallowest block's (eq. 7); (1, 1) for KMEx's pooled embedding."""
        return (1, 1) if depth == "pooled" else tuple(cache.shape(depth_blocks(depth)[0])[1:])  # type: ignore[return-value]

    def validate(self, model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
        """Check the settings, the model and the data at the door (a ``UserInputError`` or ``DatasetError``
        that says what was expected and what to do); return the data's labels as the model's classes."""
        self.validate_parameters()
        check_model(model)
        depth_blocks(self.depth, model)
        check_dataset(dataset, "prototypes")
        return check_classes(model, dataset, self.per_class, self.depth == "pooled")

    # ---- using ----
    def check_fitted(self) -> None:
        """``NotFittedError`` unless ``fit`` (or ``load``) has run."""
        if not hasattr(self, "levels_"):
            raise NotFittedError("this PrototypeExplainer is not fitted yet: call fit(model, dataset) first")

    @property
    def level_(self) -> Level:
        """The level of the requested depth (the last of the chain)."""
        self.check_fitted()
        return self.levels_["pooled" if self.depth == "pooled" else self.depth]

    @property
    def prototypes_(self) -> np.ndarray:
        return self.level_.prototypes

    @property
    def prototype_labels_(self) -> np.ndarray:
        return self.level_.labels

    def _model(self, model: ModelSpec | None) -> ModelSpec:
        self.check_fitted()
        model = model or getattr(self, "model_", None)
        if model is None:
            raise NotFittedError("no model attached: pass model=, or use the explainer fit_prototypes returned")
        return model

    def predict(self, images: Any, model: ModelSpec | None = None) -> np.ndarray:
        """Class ids of a PIL image, a list of them, or a transformed batch (eq. 10; nearest prototype for KMEx).

        ``model`` defaults to the one the explainer was fitted (or loaded) for.
        """
        model = self._model(model)
        inputs = as_batch(model, images)
        out = []
        for start in range(0, len(inputs), self.batch_size):
            activations = block_activations(model, inputs[start:start + self.batch_size], depth_blocks(self.depth))
            out.append(self.predict_activations(activations))
        return np.concatenate(out)

    def predict_activations(self, activations: dict[str, torch.Tensor]) -> np.ndarray:
        """``predict`` from block activations already recorded (one trace can serve several explainers)."""
        level = self.level_
        features = depth_features(on_cpu(activations), level.depth)
        n = features.shape[0]
        nearest = self._assign(features.reshape(-1, features.shape[-1]), level).reshape(n, -1)
        if self.depth == "pooled":
            return level.labels[nearest[:, 0]]
        counts = np.stack([np.bincount(level.labels[row], minlength=self.num_classes_) for row in nearest])
        return counts.argmax(axis=1)

    @staticmethod
    def _assign(rows: torch.Tensor, level: Level) -> np.ndarray:
        """Eq. 9: the nearest prototype of every row."""
        return torch.cdist(rows, torch.tensor(level.prototypes)).argmin(dim=1).numpy()  # a copy: may be read-only

    def explain(self, image: Any, target: int | None = None, model: ModelSpec | None = None) -> PrototypeExplanation:
        """Segments (eq. 9), class counts and prediction (eq. 10), and the attribution (eq. 11 + steps 1-3)."""
        model = self._model(model)
        if self.depth == "pooled":
            raise UserInputError("KMEx explains the pooled embedding, which has no pixels: "
                                 "use a block depth such as B4")
        inputs = as_batch(model, image)[:1]
        with torch.inference_mode():
            result = trace(model, inputs, blocks=list(model.blocks))
        logits = result.logits[0].cpu().numpy()
        level = self.level_
        activations = on_cpu(result.activations)
        features = depth_features(activations, level.depth)[0]
        segments = self._assign(features.reshape(-1, features.shape[-1]), level).reshape(features.shape[:2])
        counts = np.bincount(level.labels[segments.ravel()], minlength=self.num_classes_)
        chosen = int(counts.argmax()) if target is None else model.check_target(target)
        levels = self.attribution(activations, chosen)
        return PrototypeExplanation(level.depth, segments, counts, int(counts.argmax()), chosen,
                                    levels[level.depth], levels, logits)

    def attribution(self, activations: dict[str, torch.Tensor], target: int) -> dict[str, np.ndarray]:
        """Eq. 11 at the last block, then upsample and average within each segment of every
        shallower explanation map of the chain (the three steps after eq. 11)."""
        weights, _bias = self.classifier_
        activations = on_cpu(activations)
        column = torch.tensor(weights[target])
        last = activations[BLOCK_NAMES[-1]][0]
        current = torch.einsum("dhw,d->hw", last, column) / column.dot(column)
        maps = {BLOCK_NAMES[-1]: current.numpy()}
        for depth, level in self.levels_.items():
            if len(depth) <= 2:  # B4 itself: eq. 11 is already at this resolution
                continue
            features = depth_features({k: v[:1] for k, v in activations.items()}, depth)[0]
            segments = self._assign(features.reshape(-1, features.shape[-1]), level)
            lifted = upsample(current[None], level.resolution)[0].reshape(-1).numpy()
            current = torch.from_numpy(segment_means(lifted, segments).reshape(level.resolution))
            maps[depth] = current.numpy()
        return maps

    # ---- persistence (npz: arrays only, no pickle) ----
    def save(self, path: Path) -> None:
        self.check_fitted()
        arrays: dict[str, Any] = {"classifier_weight": self.classifier_[0],
                                         "classifier_bias": self.classifier_[1]}
        meta: dict[str, Any] = {"settings": self.keyed_params(), "model_name": self.model_name_,
                                "num_classes": self.num_classes_,
                                "levels": {}}
        for depth, level in self.levels_.items():
            arrays[f"{depth}_prototypes"] = level.prototypes
            arrays[f"{depth}_labels"] = level.labels
            meta["levels"][depth] = {"resolution": list(level.resolution),
                                     "patches": [p.__dict__ | {"box": list(p.box)} for p in level.patches]}
        arrays["meta"] = np.array(json.dumps(meta))
        write_atomically(path, lambda temporary: np.savez(temporary, **arrays))

    @classmethod
    def load(cls, path: Path) -> "PrototypeExplainer":
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            explainer = cls(**(EARLIER_VALUES | meta["settings"]))
            explainer.model_name_ = meta["model_name"]
            explainer.num_classes_ = meta["num_classes"]
            explainer.classifier_ = (data["classifier_weight"], data["classifier_bias"])
            explainer.levels_ = {}
            for depth, info in meta["levels"].items():
                patches = [Patch(**(p | {"box": tuple(p["box"])})) for p in info["patches"]]
                explainer.levels_[depth] = Level(depth, data[f"{depth}_prototypes"], data[f"{depth}_labels"],
                                                 tuple(info["resolution"]), patches)
        return explainer

    @property
    def digest_(self) -> str:
        """A hash of what was fitted (settings, prototypes, their classes): keys anything computed from them."""
        self.check_fitted()
        digest = hashlib.sha256(json.dumps(self.keyed_params(), sort_keys=True).encode())
        for depth, level in self.levels_.items():
            digest.update(depth.encode())
            digest.update(np.ascontiguousarray(level.prototypes).tobytes())
            digest.update(np.ascontiguousarray(level.labels).tobytes())
        return digest.hexdigest()[:16]

    @property
    def nbytes_(self) -> int:
        """The memory its fitted state holds: prototypes, their labels, the classifier, the patches."""
        self.check_fitted()
        arrays = [*self.classifier_, *(a for level in self.levels_.values() for a in (level.prototypes, level.labels))]
        patches = sum(len(level.patches) for level in self.levels_.values())
        return int(sum(a.nbytes for a in arrays)) + PATCH_BYTES * patches

    def freeze(self) -> "PrototypeExplainer":
        """Make this fitted explainer read-only, for sharing between sessions and threads: its arrays
        cannot be written, its attributes not set, its patches are tuples, and ``fit`` refuses.
        Using it (``predict``, ``explain``, ``attribution``) is unaffected: none of them writes."""
        self.check_fitted()
        for level in self.levels_.values():
            level.prototypes.setflags(write=False)
            level.labels.setflags(write=False)
            level.patches = tuple(level.patches)  # type: ignore[assignment]
        for array in self.classifier_:
            array.setflags(write=False)
        object.__setattr__(self, "_frozen", True)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"this explainer is shared (frozen): {name} cannot be set; "
                                 "fit a new PrototypeExplainer")
        object.__setattr__(self, name, value)

    def get_params(self) -> dict[str, object]:
        return {"depth": self.depth, "per_class": self.per_class, "seed": self.seed,
                "max_pixels_per_class": self.max_pixels_per_class, "batch_size": self.batch_size,
                "projection": self.projection, "kmeans": self.kmeans}

    def keyed_params(self) -> dict[str, object]:
        """The settings that name a fit (its cache key, digest, saved settings): ``get_params`` less the
        settings at their earlier values (``EARLIER_VALUES``), so that files fitted before those settings
        existed keep their keys and bytes."""
        return {name: value for name, value in self.get_params().items()
                if name not in EARLIER_VALUES or value != EARLIER_VALUES[name]}

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"PrototypeExplainer({settings})"

def segment_means(values: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Every value replaced by the mean over its segment (step 3 after eq. 11)."""
    sums = np.bincount(segments, weights=values)
    sizes = np.bincount(segments)
    return (sums / np.maximum(sizes, 1))[segments].astype(np.float32)
