"""How the store finds, fits, keeps and shares a prototype explainer: its key, its file name, ``fit_prototypes``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...data.datasets import DatasetSpec
from ...models import ModelSpec
from ...runtime.progress import Progress
from ..checks import mapping_note
from ..features import FeatureCache
from ..store import ASSETS, Key, made, plain_value
from .classwise import ClassRunner
from .explainer import EARLIER_VALUES, PrototypeExplainer

# 3: features streamed from a float16 cache, rows drawn per image; 4: one k-means++ start
PROTOTYPES_VERSION = 4
# the store's kind, and the folder of the disk tiers: .cache/prototypes/, assets/prototypes/
PROTOTYPES_KIND = "prototypes"
# Read-only second tier of the disk cache: fitted files shipped with Protoscope (see ``explainers.fitted.prototypes``).
SHIPPED = ASSETS / PROTOTYPES_KIND


def cache_key(model: ModelSpec, dataset: DatasetSpec, explainer: PrototypeExplainer) -> str:
    """The file name (without ``.npz``) of ``explainer`` fitted for ``model`` on ``dataset`` in the disk tiers."""
    settings = json.dumps(explainer.keyed_params(), sort_keys=True, default=plain_value)
    text = (f"{PROTOTYPES_VERSION}|{model.fingerprint}|{dataset.fingerprint}|{settings}"
            + mapping_note(model, dataset))
    return f"{explainer.depth}-k{explainer.per_class}-" + hashlib.sha256(text.encode()).hexdigest()[:16]


class PrototypeRecipe:
    """A ``PrototypeExplainer`` with the settings of ``explainer``, fitted for ``model`` on ``dataset``: what
    ``explainers.fitted.store`` needs to find it (in memory, then in the disk tiers), fit it, keep and share it.

    The settings, the model and the data are checked here, before any key is computed from them, with
    the messages of ``PrototypeExplainer.fit``.

    The shipped files were fitted before ``projection`` and ``kmeans`` were settings (whole-set scan,
    scikit-learn's k-means): a request at the defaults that Protoscope ships a file for at those earlier
    values (the built-in digits models' pages) is served by it, so that the pages open from it on a fresh
    machine and ``python -m explainers.cli prototypes`` reproduces it; ``settings`` then says so.
    """

    def __init__(self, model: ModelSpec, dataset: DatasetSpec, explainer: PrototypeExplainer,
                 keep_features: bool = True, class_runner: ClassRunner | None = None) -> None:
        explainer.validate(model, dataset)
        explainer = shipped_equivalent(model, dataset, explainer)
        self.keep_features = keep_features  # False: the features go to a temporary folder, deleted after the fit
        self.class_runner = class_runner  # where stage 2's classes run (threads here, Ray tasks): not in the key
        self.model, self.dataset, self.settings = model, dataset, explainer.get_params()
        self.key = Key.of(PROTOTYPES_KIND, model.fingerprint, dataset.fingerprint + mapping_note(model, dataset),
                          version=PROTOTYPES_VERSION,
                          **{name: plain_value(value) for name, value in explainer.keyed_params().items()})
        self.filename = f"{cache_key(model, dataset, explainer)}.npz"
        self.title = (f"Fitting the {explainer.depth} prototypes, K/C = {explainer.per_class} "
                      "(once; kept for every session)")

    def fit(self, progress: Progress | None) -> PrototypeExplainer:
        explainer = PrototypeExplainer(**self.settings)  # type: ignore[arg-type]
        if self.keep_features:
            return explainer.fit(self.model, self.dataset, progress, class_runner=self.class_runner)
        with FeatureCache(self.model, self.dataset, persistent=False) as features:
            return explainer.fit(self.model, self.dataset, progress, features=features, class_runner=self.class_runner)

    def load(self, path: Path) -> PrototypeExplainer:
        loaded = PrototypeExplainer.load(path)
        loaded.model_ = self.model  # a file holds no model: its key holds the model's fingerprint
        return loaded

    @staticmethod
    def save(value: PrototypeExplainer, path: Path) -> None:
        value.save(path)

    @staticmethod
    def share(value: PrototypeExplainer) -> PrototypeExplainer:
        return value.freeze()

    @staticmethod
    def nbytes(value: PrototypeExplainer) -> int:
        return value.nbytes_


def shipped_equivalent(model: ModelSpec, dataset: DatasetSpec, explainer: PrototypeExplainer) -> PrototypeExplainer:
    """``explainer`` at the earlier values of ``projection`` and ``kmeans`` when it asks for their defaults and
    ``assets/prototypes/`` ships a fit of those earlier values at its other settings; else ``explainer``."""
    defaults = {setting.name: setting.default for setting in PrototypeExplainer.parameters}
    settings = explainer.get_params()
    if any(settings[name] != defaults[name] for name in EARLIER_VALUES):
        return explainer
    earlier = PrototypeExplainer(**(settings | EARLIER_VALUES))  # type: ignore[arg-type]
    return earlier if (SHIPPED / f"{cache_key(model, dataset, earlier)}.npz").is_file() else explainer


def fit_prototypes(model: ModelSpec, dataset: DatasetSpec, depth: str = "B234", per_class: int = 5, seed: int = 0,
                   progress: Progress | None = None, max_pixels_per_class: int = 20_000,
                   cache: bool = True, class_runner: ClassRunner | None = None) -> PrototypeExplainer:
    """Fit (or read from the disk cache) the prototype explainer of ``model`` on ``dataset``.

    The disk cache has two tiers (``explainers.fitted.store.tiers``): this machine's ``.cache/prototypes/``,
    then the files shipped in ``assets/prototypes/``; a fit is written to the first only. Nothing is
    kept in memory here: ``explainers.methods.kmeans_attribution.fitted`` is the shared, single-flight way.
    ``class_runner``: where the per-class stage runs (``PrototypeExplainer.fit``), with the same results.
    """
    return made(PrototypeRecipe(model, dataset, PrototypeExplainer(depth, per_class, seed, max_pixels_per_class),
                                keep_features=cache, class_runner=class_runner), progress, cache)
