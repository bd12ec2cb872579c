"""Which map to trust: faithfulness metrics of saliency maps, all from one batched run.

- Confidence drop and increase (Feng et al. 2023, *Cluster-CAM*, seed 002, eq. 23): the input
  times its map, X o H, with H = s(Up(map)) the map upsampled and min-max scaled to [0, 1]
  (eq. 9's s); drop = mean over images of max(0, S_c(X) - S_c(X o H)) / S_c(X), in %, and
  increase = % of images with S_c(X o H) > S_c(X), S_c the softmax probability of the target.
- Deletion and insertion (Petsiuk et al. 2018, *RISE*, sec. 4.2): pixels removed from (deletion)
  or restored into (insertion) the image in the order of the map, in a fixed number of steps;
  the target's probability after each step is a curve over the fraction of pixels, its area by
  the trapezoid rule. Deletion replaces pixels by a constant, the mean of the model's training
  data; insertion starts from a blurred copy (RISE's Gaussian, kernel 11, sigma 5 pixels, for
  photographs; ``suggested_blur``), and its curves are withheld when the blurred copy still shows
  the class (``Evaluation.insertion_problem``).
- ROAD (Rong et al. 2022, *Remove and Debias*): the most (MoRF) or least (LeRF) relevant fraction
  of the pixels removed and filled in by noisy linear imputation (``imputation``), for several
  fractions: the probability after MoRF removal should fall fast, after LeRF removal stay high.
- Seed 002's Table 2: each method's seconds and forward passes per image, measured on the same run.

Every perturbed input is a model input (after normalisation): X o H multiplies the normalised
tensor, as pytorch-grad-cam does and as Score-CAM's and Cluster-CAM's own masks here do (eq. 19),
so an occluded pixel becomes the normalisation mean, the zero of the network's input.

Efficiency: for a chunk of images, the maps come from one trace (``explain_trace``); then every
perturbed input of every metric, method and image is listed once under a key naming what it is
(the unmasked image, the blurred copy and the all-deleted image are shared by all methods and
metrics; two methods whose maps order the pixels alike share their steps), and the distinct
inputs run in batches of the size measured fastest for the network (``explainers.engine.batching``)
through its inference copy, each batch a job of the compute thread (``explainers.runtime.compute``).
S_c(X) is one of those inputs: every score of a metric comes from the same network copy, so no
difference between two scores is a rounding difference between two copies.
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.functional import gaussian_blur

from ..data.datasets import DatasetSpec, imagenet_classes
from ..engine import batching
from ..engine.trace import trace
from ..methods import method_info
from ..methods.explanation import MethodSettings, explain_trace
from ..models.inputs import as_batch
from ..models.loading import ModelSpec
from ..models.preprocess import IMAGENET_MEAN
from ..runtime import compute
from ..runtime.errors import DatasetError, ImageError, UserInputError
from ..runtime.progress import Progress, current_listener, report, reporting, scaled
from ..runtime.settings import SettingValueError, UnknownSettingError
from .imputation import ROAD_NOISE, noisy_linear_imputation

__all__ = ["METRICS", "Evaluation", "EvaluationSettings", "confidence_change", "deletion_baseline",
           "deletion_insertion", "evaluate", "evaluate_maps", "pixel_order", "road", "step_counts", "subset",
           "suggested_blur", "unit_scaled"]

METRICS = ("confidence", "deletion", "insertion", "road")
STEPS = 20  # deletion/insertion steps: 5% of the pixels each (RISE uses one row of pixels per step)
ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # Rong et al.'s removal fractions
BLUR_SIGMA = 5.0  # RISE's insertion start: gaussian_blur(klen=11, nsig=5)
MAP_SHARE = 0.3  # share of a chunk's progress given to its maps (the rest: the metrics' passes)


@dataclass(frozen=True)
class EvaluationSettings:
    """How the metrics perturb: ``steps`` of deletion/insertion, ROAD's removal ``road_fractions`` and
    imputation ``road_noise``, the insertion start's Gaussian ``blur_sigma`` (pixels), and the ``seed``
    of tie-breaking and of ROAD's noise."""

    steps: int = STEPS
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS
    road_noise: float = ROAD_NOISE
    blur_sigma: float = BLUR_SIGMA
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= int(self.steps) <= 1000:
            raise SettingValueError(f"deletion/insertion needs 2 to 1000 steps, not {self.steps}")
        if not self.road_fractions or any(not 0 < f < 1 for f in self.road_fractions):
            raise SettingValueError(f"ROAD removes fractions strictly between 0 and 1, not {self.road_fractions}")
        if not 0 < self.blur_sigma <= 100:
            raise SettingValueError(f"the insertion blur's sigma is in pixels, above 0 and at most 100, not "
                                    f"{self.blur_sigma}")
        if self.road_noise < 0:
            raise SettingValueError(f"ROAD's noise is a standard deviation, >= 0, not {self.road_noise}")

    @property
    def blur_kernel(self) -> int:
        """The Gaussian's support, 2 sigma + 1 pixels as RISE's (kernel 11 for sigma 5)."""
        return 2 * int(round(self.blur_sigma)) + 1


def suggested_blur(model: ModelSpec) -> float:
    """The insertion blur sigma for ``model``'s pictures: RISE's 5 pixels for photographs; 20 for the
    digits, whose 8x8 cells are drawn at 64x64, so that sigma 5 leaves them readable (measured on 50
    test digits: the blurred copy keeps p = 0.96 of the class at sigma 5, 0.15, chance, at sigma 20)."""
    return 20.0 if model.sample_dataset == "digits" else BLUR_SIGMA


@dataclass
class Evaluation:
    """Per-image scores of every metric for every method, and what the run cost.

    Probabilities are the target's softmax probability on the network's inference copy:
    ``original`` S_c(X) (N,); ``masked[m]`` S_c(X o H) (N,); ``deletion[m]`` / ``insertion[m]``
    (N, steps + 1) at the pixel fractions ``step_fractions``; ``morf[m]`` / ``lerf[m]`` (N, P) at
    ``settings.road_fractions``. ``cost[m]``: the map's seconds, forward and backward passes per
    image. ``failures``: methods left out, and why. ``inputs_run`` distinct perturbed inputs of
    ``inputs_requested`` went through the network, in ``pass_seconds`` of network time; ROAD's
    imputation took ``imputation_seconds``; the metrics ``metric_seconds`` in all.
    """

    model: str
    block: str
    methods: list[str]
    metrics: tuple[str, ...]
    settings: EvaluationSettings
    targets: np.ndarray
    original: np.ndarray
    step_fractions: np.ndarray
    masked: dict[str, np.ndarray] = field(default_factory=dict)
    deletion: dict[str, np.ndarray] = field(default_factory=dict)
    insertion: dict[str, np.ndarray] = field(default_factory=dict)
    morf: dict[str, np.ndarray] = field(default_factory=dict)
    lerf: dict[str, np.ndarray] = field(default_factory=dict)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    inputs_run: int = 0
    inputs_requested: int = 0
    pass_seconds: float = 0.0
    imputation_seconds: float = 0.0
    metric_seconds: float = 0.0
    map_seconds: float = 0.0

    @property
    def images(self) -> int:
        return len(self.original)

    def confidence_table(self) -> pd.DataFrame:
        """Seed 002's Table 1 (eq. 23): ``drop`` (relative, %, lower is better) and ``increase`` (% of
        images whose probability rose, higher is better), one row per method."""
        self._needs("confidence")
        rows = []
        for name in self.methods:
            masked = self.masked[name]
            drop = np.maximum(0.0, self.original - masked) / self.original
            rows.append({"method": name, "drop": 100 * float(drop.mean()),
                         "increase": 100 * float((masked > self.original).mean())})
        return pd.DataFrame(rows, columns=["method", "drop", "increase"])

    def auc_table(self) -> pd.DataFrame:
        """Area under the deletion curve (lower is better) and the insertion curve (higher is better),
        mean over images, trapezoid rule over the fraction of pixels (RISE)."""
        columns = [kind for kind in ("deletion", "insertion") if kind in self.metrics]
        if not columns:
            self._needs("deletion")
        rows = [{"method": name, **{kind: float(np.mean(self.aucs(kind)[name])) for kind in columns}}
                for name in self.methods]
        return pd.DataFrame(rows, columns=["method", *columns])

    def aucs(self, kind: str) -> dict[str, np.ndarray]:
        """Each image's area under its ``kind`` ("deletion" or "insertion") curve, per method."""
        self._needs(kind)
        curves = self.deletion if kind == "deletion" else self.insertion
        return {name: np.trapezoid(curves[name], self.step_fractions, axis=1) for name in self.methods}

    def insertion_problem(self) -> str | None:
        """Why the insertion curves cannot rank the maps here, or None: the blurred copy they start from
        must hold clearly less of the class than the image (its probability below half of the image's,
        on average), else every curve starts near its end and the areas differ by noise."""
        self._needs("insertion")
        if not self.methods:
            return None
        start, full = float(self.insertion[self.methods[0]][:, 0].mean()), float(self.original.mean())
        if start < 0.5 * full:
            return None
        return (f"the blurred copy that insertion starts from still gets p = {start:.2f} for the class on average, "
                f"against {full:.2f} for the images themselves: blurred with σ = {self.settings.blur_sigma:g} px, "
                "the class is still visible to the network, so inserting pixels adds little. Raise the blur under "
                "*Metric settings*")

    def road_table(self) -> pd.DataFrame:
        """ROAD: mean probability over the removal fractions and images, removing the most relevant
        pixels first (``morf``, lower is better) and the least relevant first (``lerf``, higher is
        better); ``gap`` = lerf - morf (higher is better)."""
        self._needs("road")
        rows = []
        for name in self.methods:
            morf, lerf = float(self.morf[name].mean()), float(self.lerf[name].mean())
            rows.append({"method": name, "morf": morf, "lerf": lerf, "gap": lerf - morf})
        return pd.DataFrame(rows, columns=["method", "morf", "lerf", "gap"])

    def timing_table(self) -> pd.DataFrame:
        """Seed 002's Table 2: seconds and forward (and backward) passes per image of each map, measured
        on this run. The shared pass is charged in full to every method, as each would need it alone."""
        rows = [{"method": name, **self.cost[name]} for name in self.methods]
        return pd.DataFrame(rows, columns=["method", "seconds", "forwards", "backwards"])

    def curves(self) -> pd.DataFrame:
        """Every deletion and insertion curve, long format: method, image, curve, fraction, probability."""
        frames = []
        for kind, curves in (("deletion", self.deletion), ("insertion", self.insertion)):
            for name, values in curves.items():
                frames.append(_long(name, kind, self.step_fractions, values, "curve"))
        return pd.concat(frames, ignore_index=True) if frames else _long_empty("curve")

    def road_curves(self) -> pd.DataFrame:
        """Every ROAD curve, long format: method, image, order (MoRF or LeRF), fraction, probability."""
        frames = []
        fractions = np.asarray(self.settings.road_fractions)
        for order, curves in (("MoRF", self.morf), ("LeRF", self.lerf)):
            for name, values in curves.items():
                frames.append(_long(name, order, fractions, values, "order"))
        return pd.concat(frames, ignore_index=True) if frames else _long_empty("order")

    def _needs(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ValueError(f"this evaluation did not compute {metric!r} (it has {', '.join(self.metrics)})")


def _long(name: str, kind: str, fractions: np.ndarray, values: np.ndarray, column: str) -> pd.DataFrame:
    images, steps = values.shape
    return pd.DataFrame({"method": name, "image": np.repeat(np.arange(images), steps), column: kind,
                         "fraction": np.tile(fractions, images), "probability": values.reshape(-1)})


def _long_empty(column: str) -> pd.DataFrame:
    return pd.DataFrame(columns=["method", "image", column, "fraction", "probability"])


# ------------------------------------------------------------------------------------- public entry points

def evaluate(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
             targets: int | Sequence[int] | None = None, metrics: Sequence[str] = METRICS,
             settings: EvaluationSettings | None = None, method_settings: MethodSettings | None = None,
             progress: Progress | None = None, *, training: str | DatasetSpec | None = None) -> Evaluation:
    """Every metric of ``metrics`` for the maps of ``methods`` at ``block`` over ``images`` (a list of
    images in any form ``explain`` takes, an (N, C, H, W) tensor, or a ``DatasetSpec``, e.g.
    ``subset(load_dataset("digits", "test"), 50)``); ``targets`` default to each image's predicted class.
    ``training``: the training images of methods fitted on them (the k-means attribution; a folder, a
    dataset name or a ``DatasetSpec``), as ``explain_trace`` takes it.

    Images go in chunks: one trace per chunk gives every method's map (``explain_trace``), then the
    metrics' distinct perturbed inputs run batched (module docstring). A method that does not apply,
    or fails on an image (its own check), is left out with the reason in ``failures``.
    ``progress`` (default: the listener of ``explainers.runtime.progress.reporting``) hears the fraction done.
    """
    chosen = [method_info(name).name for name in methods]  # unknown names refused here
    stray = [name for name in (method_settings or {}) if name not in chosen]
    if stray:
        raise UnknownSettingError(f"settings were given for {', '.join(stray)}, not among the methods evaluated")
    failures = {name: reason for name in chosen if (reason := method_info(name).available(model, block))}

    def maps_of(inputs: torch.Tensor, wanted: torch.Tensor | None, listener: Progress | None) -> _Maps:
        return _traced_maps(model, inputs, wanted, [n for n in chosen if n not in failures], block,
                            method_settings or {}, failures, listener, training)

    return _run(model, block, images, targets, metrics, settings, progress, maps_of, chosen, failures)


def evaluate_maps(model: ModelSpec, images: Any, maps: Mapping[str, Any], targets: int | Sequence[int] | None = None,
                  metrics: Sequence[str] = METRICS, settings: EvaluationSettings | None = None,
                  progress: Progress | None = None) -> Evaluation:
    """The metrics of maps given rather than computed: ``maps`` name -> (N, H, W) array at the model's
    input resolution, one map per image. For maps from elsewhere, and for constructed cases."""
    count, _ = image_source(images)
    given = {name: np.asarray(values, dtype=np.float32) for name, values in maps.items()}
    for name, values in given.items():
        if values.shape != (count, *model.input_size):
            raise ValueError(f"map {name!r} is {values.shape}; give ({count}, {model.input_size[0]}, "
                             f"{model.input_size[1]}): one map per image at the input's resolution")
    position = {"next": 0}

    def maps_of(inputs: torch.Tensor, wanted: torch.Tensor | None, listener: Progress | None) -> _Maps:
        start = position["next"]
        position["next"] = start + len(inputs)
        if wanted is None:
            wanted = compute.run(_predicted, model, inputs)
        part = {name: values[start:start + len(inputs)] for name, values in given.items()}
        return _Maps(part, wanted, {name: {"seconds": 0.0, "forwards": 0, "backwards": 0} for name in given}, 0.0)

    return _run(model, "given", images, targets, metrics, settings, progress, maps_of, list(given), {})


def confidence_change(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
                      targets: int | Sequence[int] | None = None, method_settings: MethodSettings | None = None,
                      progress: Progress | None = None, *, training: str | DatasetSpec | None = None) -> pd.DataFrame:
    """Seed 002's Table 1 for this model (eq. 23): one row per method, ``method``, ``drop`` and
    ``increase`` in %. Methods that could not be evaluated are left out (``evaluate`` says why)."""
    return evaluate(model, images, methods, block, targets, ("confidence",), None, method_settings,
                    progress, training=training).confidence_table()


def deletion_insertion(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
                       targets: int | Sequence[int] | None = None, steps: int = STEPS,
                       method_settings: MethodSettings | None = None, progress: Progress | None = None, *,
                       training: str | DatasetSpec | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """RISE's deletion and insertion: the table of mean AUCs per method (``method``, ``deletion``,
    ``insertion``) and every curve (``Evaluation.curves``)."""
    found = evaluate(model, images, methods, block, targets, ("deletion", "insertion"),
                     EvaluationSettings(steps=steps), method_settings, progress, training=training)
    return found.auc_table(), found.curves()


def road(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
         targets: int | Sequence[int] | None = None, fractions: Sequence[float] = ROAD_FRACTIONS,
         noise: float = ROAD_NOISE, method_settings: MethodSettings | None = None,
         progress: Progress | None = None, *, training: str | DatasetSpec | None = None
         ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROAD (Rong et al. 2022): the table (``method``, ``morf``, ``lerf``, ``gap``) and every curve
    (``Evaluation.road_curves``)."""
    found = evaluate(model, images, methods, block, targets, ("road",),
                     EvaluationSettings(road_fractions=tuple(fractions), road_noise=noise), method_settings, progress,
                     training=training)
    return found.road_table(), found.road_curves()


def subset(dataset: DatasetSpec, count: int) -> DatasetSpec:
    """``count`` images of ``dataset`` spread evenly over it (its first, its last and evenly spaced ones
    between, so a split sorted by class gives every class its share); all of it when it has fewer."""
    if int(count) < 1:
        raise DatasetError(f"choose at least one image, not {count}")
    if len(dataset) == 0:
        raise DatasetError(f"{dataset.name} ({dataset.split}) has no images")
    chosen = np.unique(np.linspace(0, len(dataset) - 1, min(int(count), len(dataset))).round().astype(int))
    digest = hashlib.blake2b(f"{dataset.fingerprint}|{chosen.tolist()}".encode(), digest_size=8).hexdigest()
    return DatasetSpec(name=dataset.name, split=dataset.split, classes=dataset.classes, labels=dataset.labels[chosen],
                       _load=lambda i: dataset[int(chosen[i])][0], fingerprint=digest, skipped=dataset.skipped,
                       names=[dataset.names[i] for i in chosen] if dataset.names else [])


# ------------------------------------------------------------------------------------- the pieces

def unit_scaled(heatmap: np.ndarray) -> np.ndarray:
    """s(.) of seed 002 (eq. 9): the map min-max scaled to [0, 1], the same affine scaling for signed
    and unsigned maps (so a signed map's most negative pixel is occluded fully and its zeros partly).
    A constant map singles out no pixel, so it occludes none: all ones (min-max would be 0/0)."""
    values = np.asarray(heatmap, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.ones_like(values)
    return (values - low) / (high - low)


def pixel_order(heatmap: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pixel indices (row-major) from the most to the least relevant: descending value, ties in a
    seeded random order (the same for every map of the image size, so equal maps order alike;
    raster order would delete the top rows of a flat region first)."""
    values = np.asarray(heatmap, dtype=np.float64).reshape(-1)
    tiebreak = np.random.default_rng(seed).permutation(values.size)
    return np.lexsort((tiebreak, -values))


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels removed (or inserted) after each of ``steps`` equal steps: 0, ..., ``pixels``."""
    return np.round(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def deletion_baseline(model: ModelSpec) -> torch.Tensor:
    """Deletion's constant, as model input values (C,): the mean pixel of the data the model was
    trained on. For an ImageNet classifier ImageNet's mean (EfficientNet-Lite0 normalises with 0.5,
    which is not its data's mean); otherwise the mean its preprocessing subtracts (the digits'
    training mean 0.30; a checkpoint's own normalisation)."""
    mean = model.transform.mean
    if len(mean) == 3 and list(model.classes) == list(imagenet_classes()):
        mean = IMAGENET_MEAN
    pixels = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return model.transform.model_values(pixels).view(-1)


def image_source(images: Any) -> tuple[int, Callable[[int], Any]]:
    """How many images ``images`` holds and how to get image i, without loading them all."""
    if isinstance(images, DatasetSpec):
        return len(images), lambda i: images[i][0]
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return images.shape[0], lambda i: images[i]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("no images were given (an empty list): give at least one image")
        return len(images), lambda i: images[i]
    return 1, lambda i: images


# ------------------------------------------------------------------------------------- the run

@dataclass
class _Maps:
    """One chunk's maps (name -> (n, H, W) float32 at input resolution), targets and map costs."""

    heatmaps: dict[str, np.ndarray]
    targets: torch.Tensor
    cost: dict[str, dict[str, float]]
    seconds: float


def _run(model: ModelSpec, block: str, images: Any, targets: int | Sequence[int] | None, metrics: Sequence[str],
         settings: EvaluationSettings | None, progress: Progress | None,
         maps_of: Callable[[torch.Tensor, torch.Tensor | None, Progress | None], _Maps], names: list[str],
         failures: dict[str, str]) -> Evaluation:
    settings = settings or EvaluationSettings()
    metrics = _checked_metrics(metrics)
    count, item = image_source(images)
    wanted = _targets(targets, count)
    listener = progress or current_listener()
    pixels = model.input_size[0] * model.input_size[1]
    result = Evaluation(model=model.name, block=block, methods=[], metrics=metrics, settings=settings,
                        targets=np.zeros(0, dtype=np.int64), original=np.zeros(0),
                        step_fractions=step_counts(pixels, settings.steps) / pixels, failures=failures)
    parts: list[tuple[_Maps, _Scores]] = []
    size = _chunk_size(model)
    for start in range(0, count, size):
        stop = min(start + size, count)
        stage = scaled(listener, start / count, stop / count)
        inputs = as_batch(model, [item(i) for i in range(start, stop)])
        maps = maps_of(inputs, None if wanted is None else wanted[start:stop], scaled(stage, 0, MAP_SHARE))
        live = {name: maps.heatmaps[name] for name in names if name in maps.heatmaps and name not in failures}
        scores = _score(model, inputs, maps.targets, live, metrics, settings, scaled(stage, MAP_SHARE, 1))
        parts.append((maps, scores))
    _gather(result, parts, [name for name in names if name not in failures])
    return result


def _checked_metrics(metrics: Sequence[str]) -> tuple[str, ...]:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UserInputError(f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}: choose among "
                             f"{', '.join(METRICS)}")
    return tuple(m for m in METRICS if m in metrics)


def _targets(targets: int | Sequence[int] | None, count: int) -> torch.Tensor | None:
    if targets is None:
        return None
    values = torch.as_tensor(targets, dtype=torch.long).reshape(-1)
    if values.numel() == 1:
        return values.expand(count).clone()
    if values.numel() != count:
        raise UserInputError(f"{values.numel()} target classes were given for {count} images: give one class for "
                             "all of them, one per image, or None for each image's predicted class.")
    return values


def _chunk_size(model: ModelSpec) -> int:
    """Images per trace: up to 16, fewer for large inputs (each holds its perturbation masks meanwhile)."""
    return int(max(1, min(16, 200_000 // (model.input_size[0] * model.input_size[1]))))


@torch.inference_mode()
def _predicted(model: ModelSpec, inputs: torch.Tensor) -> torch.Tensor:
    return model.net(inputs.to(model.device)).argmax(dim=1)


def _traced_maps(model: ModelSpec, inputs: torch.Tensor, targets: torch.Tensor | None, names: list[str], block: str,
                 method_settings: MethodSettings, failures: dict[str, str], listener: Progress | None,
                 training: str | DatasetSpec | None) -> _Maps:
    """Every method's map of a chunk from one trace; a method failing its own check joins ``failures``."""
    started = time.perf_counter()
    infos = [method_info(name) for name in names]
    blocks = list(model.blocks) if any(m.needs_all_blocks for m in infos) else [block]
    shared = trace(model, inputs, targets, gradients=any(m.needs_gradients for m in infos), blocks=blocks)
    heatmaps: dict[str, np.ndarray] = {}
    cost: dict[str, dict[str, float]] = {}
    for index, name in enumerate(names):
        try:
            with reporting(scaled(listener, index / max(1, len(names)), (index + 1) / max(1, len(names)))):
                found = explain_trace(model, shared, [name], block,
                                      {name: method_settings[name]} if name in method_settings else None,
                                      training=training)
        except UserInputError as error:  # the method's own check failed on this input: it is not scored
            failures[name] = str(error)
            continue
        heatmaps[name] = np.stack([one[name].heatmap for one in found])
        cost[name] = {"seconds": float(sum(one[name].seconds + one[name].trace_seconds for one in found)),
                      "forwards": float(sum(one[name].forwards for one in found)),
                      "backwards": float(sum(one[name].backwards for one in found))}
    return _Maps(heatmaps, shared.targets, cost, time.perf_counter() - started)


# ------------------------------------------------------------------------------------- the metrics' inputs

@dataclass
class _Recipe:
    """One perturbed input of a chunk: image ``image`` changed as ``kind`` says, with ``data`` (the
    scaled map, the removal mask, or the ROAD input once imputed)."""

    image: int
    kind: str  # "x", "baseline", "blur", "scale", "delete", "insert", "road"
    data: Any = None
    seed: int = 0


class _Plan:
    """The distinct inputs of a chunk, each listed once under its key (image, kind, content digest)."""

    def __init__(self) -> None:
        self.recipes: list[_Recipe] = []
        self.keys: dict[Hashable, int] = {}
        self.requested = 0

    def add(self, key: Hashable, recipe: Callable[[], _Recipe]) -> int:
        self.requested += 1
        found = self.keys.get(key)
        if found is None:
            found = self.keys[key] = len(self.recipes)
            self.recipes.append(recipe())
        return found


def _digest(array: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()


@dataclass
class _Scores:
    """One chunk's probabilities: ``original`` (n,), and per method the metrics' arrays."""

    original: np.ndarray
    masked: dict[str, np.ndarray]
    deletion: dict[str, np.ndarray]
    insertion: dict[str, np.ndarray]
    morf: dict[str, np.ndarray]
    lerf: dict[str, np.ndarray]
    inputs_run: int
    inputs_requested: int
    pass_seconds: float
    imputation_seconds: float
    seconds: float


def _score(model: ModelSpec, inputs: torch.Tensor, targets: torch.Tensor, heatmaps: Mapping[str, np.ndarray],
           metrics: tuple[str, ...], settings: EvaluationSettings, listener: Progress | None) -> _Scores:
    """Plan every metric's inputs for the chunk, run the distinct ones, and read each metric off them."""
    started = time.perf_counter()
    count, pixels = inputs.shape[0], inputs.shape[-2] * inputs.shape[-1]
    plan = _Plan()
    counts = step_counts(pixels, settings.steps)
    road_counts = [int(round(f * pixels)) for f in settings.road_fractions]
    plain = [plan.add((i, "x"), lambda i=i: _Recipe(i, "x")) for i in range(count)]
    where: dict[str, dict[str, np.ndarray]] = {metric: {} for metric in ("masked", "deletion", "insertion", "morf",
                                                                          "lerf")}
    for name, maps in heatmaps.items():
        indices = {key: [] for key in where}
        for i in range(count):
            order = pixel_order(maps[i], settings.seed)
            if "confidence" in metrics:
                indices["masked"].append(_scaled_input(plan, i, maps[i], plain[i]))
            if "deletion" in metrics:
                indices["deletion"].append(_steps(plan, i, order, counts, "delete", pixels, plain[i]))
            if "insertion" in metrics:
                indices["insertion"].append(_steps(plan, i, order, counts, "insert", pixels, plain[i]))
            if "road" in metrics:
                indices["morf"].append([_road(plan, i, order[:k], pixels, settings.seed) for k in road_counts])
                indices["lerf"].append([_road(plan, i, order[pixels - k:], pixels, settings.seed) for k in road_counts])
        for key, found in indices.items():
            if found:
                where[key][name] = np.asarray(found)
    values, pass_seconds, imputation_seconds = _run_plan(model, inputs, targets, plan, settings, listener)
    return _Scores(original=values[plain], **{key: {n: values[ix] for n, ix in found.items()}
                                              for key, found in where.items()},
                   inputs_run=len(plan.recipes), inputs_requested=plan.requested,
                   pass_seconds=pass_seconds, imputation_seconds=imputation_seconds,
                   seconds=time.perf_counter() - started)


def _scaled_input(plan: _Plan, image: int, heatmap: np.ndarray, plain: int) -> int:
    """X o H (eq. 23) with H = s(map): the plain image itself when H is all ones."""
    unit = unit_scaled(heatmap)
    if bool((unit == 1).all()):
        return plain
    return plan.add((image, "scale", _digest(unit)), lambda: _Recipe(image, "scale", torch.from_numpy(unit)))


def _steps(plan: _Plan, image: int, order: np.ndarray, counts: np.ndarray, kind: str, pixels: int,
           plain: int) -> list[int]:
    """Deletion (``kind`` "delete": the first k pixels of ``order`` set to the baseline) or insertion
    ("insert": the first k pixels of the image put into its blurred copy), for every k of ``counts``."""
    found = []
    for k in counts:
        if (kind == "delete" and k == 0) or (kind == "insert" and k == pixels):
            found.append(plain)
        elif k == pixels:  # everything deleted: the same for every map
            found.append(plan.add((image, "baseline"), lambda: _Recipe(image, "baseline")))
        elif k == 0:  # nothing inserted yet: the blurred copy, the same for every map
            found.append(plan.add((image, "blur"), lambda: _Recipe(image, "blur")))
        else:
            mask = _mask(order[:k], pixels)
            found.append(plan.add((image, kind, _digest(np.packbits(mask))),
                                  lambda mask=mask: _Recipe(image, kind, torch.from_numpy(mask))))
    return found


def _road(plan: _Plan, image: int, removed: np.ndarray, pixels: int, seed: int) -> int:
    """ROAD's input with the pixels ``removed`` imputed; its noise seeded by what is removed, so two
    maps that remove the same pixels share one input."""
    mask = _mask(removed, pixels)
    digest = _digest(np.packbits(mask))
    noise_seed = (seed << 64) | int.from_bytes(digest[:8], "little")
    return plan.add((image, "road", digest), lambda: _Recipe(image, "road", mask, noise_seed))


def _mask(indices: np.ndarray, pixels: int) -> np.ndarray:
    mask = np.zeros(pixels, dtype=bool)
    mask[indices] = True
    return mask


def _run_plan(model: ModelSpec, inputs: torch.Tensor, targets: torch.Tensor, plan: _Plan,
              settings: EvaluationSettings, listener: Progress | None) -> tuple[np.ndarray, float, float]:
    """The target's probability for every recipe of ``plan``: batches of the measured size through the
    inference copy, each a compute job. ROAD inputs are imputed in this thread (scipy, not torch) while
    the previous batch runs on the compute thread, so the two overlap."""
    network = model.inference_net
    size = batching.batch_size(model)
    # On the model's device; ROAD's imputation reads the CPU copy (scipy), and its results go to the device in _build.
    shared = compute.run(_chunk_tensors, inputs.to(model.device), deletion_baseline(model).to(model.device),
                         settings.blur_kernel, settings.blur_sigma)
    values = np.zeros(len(plan.recipes))
    timing = {"passes": 0.0, "imputation": 0.0}
    total = len(plan.recipes)

    def collect(start: int, running: Future) -> None:
        scores, seconds = running.result()
        values[start:start + len(scores)] = scores
        timing["passes"] += seconds
        report(start + len(scores), total, f"Evaluation: {start + len(scores)} of {total} perturbed inputs", listener)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="protoscope-evaluation") as submitter:
        pending: tuple[int, Future] | None = None
        for start in range(0, total, size):
            batch = plan.recipes[start:start + size]
            began = time.perf_counter()
            for recipe in batch:
                if recipe.kind == "road" and isinstance(recipe.data, np.ndarray):
                    recipe.data = noisy_linear_imputation(
                        inputs[recipe.image], recipe.data.reshape(inputs.shape[-2:]), settings.road_noise,
                        recipe.seed)
            timing["imputation"] += time.perf_counter() - began
            if pending is not None:
                collect(*pending)
            pending = (start, submitter.submit(compute.run_batch, _score_job, network, shared, targets, batch))
        if pending is not None:
            collect(*pending)
    return values, timing["passes"], timing["imputation"]


@dataclass
class _ChunkTensors:
    inputs: torch.Tensor  # (n, C, H, W)
    blurred: torch.Tensor  # (n, C, H, W)
    baseline: torch.Tensor  # (C, 1, 1)


def _chunk_tensors(inputs: torch.Tensor, baseline: torch.Tensor, kernel: int, sigma: float) -> _ChunkTensors:
    blurred = gaussian_blur(inputs, [kernel, kernel], [sigma, sigma])  # RISE's insertion start, per channel
    return _ChunkTensors(inputs, blurred, baseline.view(-1, 1, 1))


def _build(shared: _ChunkTensors, recipe: _Recipe) -> torch.Tensor:
    x = shared.inputs[recipe.image]
    if recipe.kind == "x":
        return x
    if recipe.kind == "baseline":
        return shared.baseline.expand_as(x)
    if recipe.kind == "blur":
        return shared.blurred[recipe.image]
    if recipe.kind == "scale":
        return x * recipe.data.to(x.device)
    if recipe.kind == "road":
        return recipe.data.to(x.device)
    mask = recipe.data.view(x.shape[-2:]).to(x.device)
    if recipe.kind == "delete":
        return torch.where(mask, shared.baseline, x)
    return torch.where(mask, x, shared.blurred[recipe.image])  # insert


@torch.inference_mode()
def _score_job(network: torch.nn.Module, shared: _ChunkTensors, targets: torch.Tensor,
               batch: list[_Recipe]) -> tuple[np.ndarray, float]:
    """One compute job: build the batch's inputs, one pass, each input's target probability."""
    stacked = torch.stack([_build(shared, recipe) for recipe in batch]).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    probabilities = network(stacked).softmax(dim=1)
    seconds = time.perf_counter() - started
    chosen = targets[torch.tensor([recipe.image for recipe in batch], device=targets.device)]
    return probabilities.gather(1, chosen[:, None])[:, 0].cpu().numpy().astype(np.float64), seconds


# ------------------------------------------------------------------------------------- gathering chunks

def _gather(result: Evaluation, parts: list[tuple[_Maps, _Scores]], names: list[str]) -> None:
    result.methods = names
    result.targets = np.concatenate([maps.targets.cpu().numpy() for maps, _ in parts]) if parts else result.targets
    result.original = np.concatenate([scores.original for _, scores in parts]) if parts else result.original
    for key in ("masked", "deletion", "insertion", "morf", "lerf"):
        table = getattr(result, key)
        for name in names:
            found = [getattr(scores, key).get(name) for _, scores in parts]
            if found and all(f is not None for f in found):
                table[name] = np.concatenate(found)
    count = max(1, len(result.original))
    for name in names:
        totals = [maps.cost[name] for maps, _ in parts]
        result.cost[name] = {k: sum(t[k] for t in totals) / count for k in ("seconds", "forwards", "backwards")}
    result.inputs_run = sum(scores.inputs_run for _, scores in parts)
    result.inputs_requested = sum(scores.inputs_requested for _, scores in parts)
    result.pass_seconds = sum(scores.pass_seconds for _, scores in parts)
    result.imputation_seconds = sum(scores.imputation_seconds for _, scores in parts)
    result.metric_seconds = sum(scores.seconds for _, scores in parts)
    result.map_seconds = sum(maps.seconds for maps, _ in parts)
