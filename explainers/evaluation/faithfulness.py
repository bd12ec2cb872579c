"""Which map to trust: faithfulness metrics of saliency maps, all from one batched run.

Each metric is one class in ``explainers.evaluation.metrics``, registered in ``METRICS`` with its
scores and their direction, its constants and where they come from, and the perturbed inputs it needs:

- Confidence drop and increase (Feng et al. 2023, *Cluster-CAM*, seed 002, eq. 23): the input
  times its map, X o H, with H = s(Up(map)) the map upsampled and min-max scaled to [0, 1]
  (eq. 9's s); drop = mean over images of max(0, S_c(X) - S_c(X o H)) / S_c(X), in %, and
  increase = % of images with S_c(X o H) > S_c(X), S_c the softmax probability of the target.
- Deletion and insertion (Petsiuk et al. 2018, *RISE*, sec. 4.2): pixels removed from (deletion)
  or restored into (insertion) the image in the order of the map, in a fixed number of steps;
  the target's probability after each step is a curve over the fraction of pixels, its area by
  the trapezoid rule. Deletion replaces pixels by a constant, the mean of the model's training
  data; insertion starts from a blurred copy (RISE's kernel and zero padding, ``blur``), its sigma
  measured per model and images (``insertion_blur``: the smallest of 5, 10, 20, 40 pixels whose
  blurred copy scores below half of the images' probability), and it is flagged when even the
  strongest blur still shows the class (``Evaluation.problems``, and a ``MetricWarning``).
- ROAD (Rong et al. 2022, *Remove and Debias*): the most (MoRF) or least (LeRF) relevant fraction
  of the pixels removed and filled in by noisy linear imputation (``imputation``), for several
  fractions: the probability after MoRF removal should fall fast, after LeRF removal stay high.
- Seed 002's Table 2: each method's seconds and forward passes per image, measured on the same run.

Every perturbed input is a model input (after normalisation): X o H multiplies the normalised
tensor, as pytorch-grad-cam does and as Score-CAM's and Cluster-CAM's own masks here do (eq. 19),
so an occluded pixel becomes the normalisation mean, the zero of the network's input.

Efficiency: for a chunk of images, the maps come from one trace (``explain_trace``); then every
metric adds the perturbed inputs of every method and image to one plan (``perturbation``), where
each is listed once under a key naming what it is (the unmasked image, the blurred copy and the
all-deleted image are shared by all methods and metrics; two methods whose maps order the pixels
alike share their steps), and the distinct inputs run in batches of the size measured fastest for
the network (``explainers.engine.batching``) through its inference copy, each batch a job of the
compute thread (``explainers.runtime.compute``). S_c(X) is one of those inputs: every score of a
metric comes from the same network copy, so no difference between two scores is a rounding
difference between two copies.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data.datasets import DatasetSpec
from ..engine import batching
from ..engine.trace import trace
from ..methods import method_info
from ..methods.explanation import MethodSettings, explain_trace
from ..models import ModelSpec
from ..models.inputs import as_batch
from ..runtime import compute
from ..runtime.errors import DatasetError, ImageError, UserInputError
from ..runtime.progress import Progress, current_listener, report, reporting, scaled
from ..runtime.settings import UnknownSettingError
from .blur import BLUR_FRACTION, BLUR_LADDER, BlurChoice, rise_blur
from .imputation import ROAD_NOISE
from .metrics import BLUR_SIGMA, METRICS, ROAD_FRACTIONS, STEPS, MappedImage, Metric
from .perturbation import ImputedInput, PerturbationPlan, PlainInput, run_plan
from .result import Evaluation
from .settings import EvaluationSettings

__all__ = ["MetricWarning", "PlannedEvaluation", "confidence_change", "deletion_insertion", "evaluate", "evaluate_maps",
           "image_source", "insertion_blur", "planned_evaluation", "road", "subset"]

MAP_SHARE = 0.3  # share of a chunk's progress given to its maps (the rest: the metrics' passes)
BLUR_SHARE = 0.05  # share of the progress given to measuring insertion's blur, when it is measured


class MetricWarning(UserWarning):
    """A metric computed by ``evaluate`` cannot rank the maps here (``Evaluation.problems`` says why)."""


# ------------------------------------------------------------------------------------- public entry points

def evaluate(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
             targets: int | Sequence[int] | None = None, metrics: Sequence[str] | None = None,
             settings: EvaluationSettings | None = None, method_settings: MethodSettings | None = None,
             progress: Progress | None = None, *, training: str | DatasetSpec | None = None) -> Evaluation:
    """Every metric of ``metrics`` (default: every registered one, ``METRICS``) for the maps of ``methods``
    at ``block`` over ``images`` (a list of images in any form ``explain`` takes, an (N, C, H, W) tensor,
    or a ``DatasetSpec``, e.g. ``subset(load_dataset("digits", "test"), 50)``); ``targets`` default to
    each image's predicted class. ``training``: the training images of methods fitted on them (the
    k-means attribution; a folder, a dataset name or a ``DatasetSpec``), as ``explain_trace`` takes it.

    Images go in chunks: one trace per chunk gives every method's map (``explain_trace``), then the
    metrics' distinct perturbed inputs run batched (module docstring). A method that does not apply,
    or fails on an image (its own check), is left out with the reason in ``failures``.
    ``progress`` (default: the listener of ``explainers.runtime.progress.reporting``) hears the fraction done.
    With ``settings.blur_sigma`` None (the default), insertion's blur is measured on these images first
    (``insertion_blur``; ``Evaluation.blur``). A metric that cannot rank the maps here (insertion from a
    blurred copy that still shows the class) is flagged: ``Evaluation.problems()``, and a ``MetricWarning``.
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
                  metrics: Sequence[str] | None = None, settings: EvaluationSettings | None = None,
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
    ``insertion``) and every curve (``Evaluation.curves``). Insertion's blur is measured (``insertion_blur``);
    when even the strongest keeps the class, a ``MetricWarning`` says so and the table's
    ``attrs["problems"]`` holds the reason."""
    found = evaluate(model, images, methods, block, targets, ("deletion", "insertion"),
                     EvaluationSettings(steps=steps), method_settings, progress, training=training)
    table = found.auc_table()
    table.attrs["problems"] = found.problems()
    return table, found.curves()


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


# ------------------------------------------------------------------------------------- what a run will cost

@dataclass(frozen=True)
class PlannedEvaluation:
    """What ``evaluate`` will run, counted before it runs (``planned_evaluation``): ``images``, the ``methods``
    that apply at the block, at most ``inputs`` distinct perturbed inputs for the metrics (fewer when two maps
    order the pixels alike and share steps), of which ``imputed`` are filled in by ROAD's noisy linear
    imputation first (a sparse solve each, on the CPU), ``blur_passes`` to measure insertion's blur, and
    ``seconds_per_input``, the network's measured time per input at its batch size. The maps' own passes
    (Score-CAM's masked inputs, ...) are not counted: a method declares no cost."""

    images: int
    methods: int
    inputs: int
    imputed: int
    blur_passes: int
    seconds_per_input: float

    @property
    def passes(self) -> int:
        """Passes of one input through the network for the metrics: the perturbed inputs and the blur's."""
        return self.inputs + self.blur_passes

    @property
    def seconds(self) -> float:
        """The metrics' passes at the measured speed: what the network alone takes, imputation and maps aside."""
        return self.passes * self.seconds_per_input


def planned_evaluation(model: ModelSpec, methods: Sequence[str], block: str = "B4", images: int = 1,
                       metrics: Sequence[str] | None = None,
                       settings: EvaluationSettings | None = None) -> PlannedEvaluation:
    """Count what ``evaluate(model, <images images>, methods, block, metrics=metrics, settings=settings)`` will
    run, without running it: each metric plans its inputs (its own ``plan``) for one image and one, then two,
    random maps; what the second map adds is what each map needs, the rest is shared by the image's maps (the
    plain, blurred and fully deleted image). The time per input is the network's, measured once per process
    (``explainers.engine.batching``; about a second the first time). Cheap: no map and no metric is computed."""
    chosen = _checked_metrics(metrics)
    settings = settings or EvaluationSettings()
    applying = [name for name in methods if method_info(name).available(model, block) is None]
    height, width = model.input_size
    random = np.random.default_rng(settings.seed)

    def distinct(maps: int) -> tuple[int, int]:
        plan = PerturbationPlan()
        plain = plan.add(PlainInput(0))
        for _ in range(maps):
            case = MappedImage(0, random.random((height, width), dtype=np.float32), plain, settings)
            for metric in chosen:
                metric.plan(plan, case)
        return len(plan.inputs), sum(isinstance(p, ImputedInput) for p in plan.inputs)

    (one, one_imputed), (two, two_imputed) = distinct(1), distinct(2)
    each, each_imputed = two - one, two_imputed - one_imputed
    measured = batching.timings(model)
    blur = settings.blur_sigma is None and any(metric.name == "insertion" for metric in chosen)
    return PlannedEvaluation(images, len(applying), images * (one - each + len(applying) * each),
                             images * (one_imputed - each_imputed + len(applying) * each_imputed),
                             images * (1 + len(BLUR_LADDER)) if blur else 0,
                             measured[batching.choose(measured)])


# ------------------------------------------------------------------------------------- insertion's blur

def insertion_blur(model: ModelSpec, images: Any, targets: int | Sequence[int] | None = None,
                   ladder: Sequence[float] = BLUR_LADDER, fraction: float = BLUR_FRACTION,
                   padding: str = "zeros", chunks: Callable[[], Any] | None = None) -> BlurChoice:
    """The insertion blur for ``model`` on ``images`` (any form ``evaluate`` takes): the smallest sigma of
    ``ladder`` whose RISE-blurred copy (``rise_blur``) gets a probability for the class (``targets``; default
    each image's predicted class), averaged over the images, below ``fraction`` of the images' own average;
    the largest when none does (``BlurChoice.meaningful`` is then False: insertion is flagged). One pass of
    each image and of each blurred copy. ``chunks``: an iterable of (model inputs, targets or None) to use
    instead of loading ``images`` (``evaluate`` passes its own)."""
    ladder = tuple(sorted(float(s) for s in ladder))
    if not ladder or not 0 < fraction <= 1:
        raise ValueError("give at least one sigma and a fraction in (0, 1]")
    if chunks is None:
        count, item = image_source(images)
        wanted = None if targets is None else torch.as_tensor(targets, dtype=torch.long).reshape(-1)
        if wanted is not None and wanted.numel() == 1:
            wanted = wanted.expand(count)
        chunks = lambda: ((as_batch(model, [item(i) for i in range(s, min(s + 16, count))]),  # noqa: E731
                           None if wanted is None else wanted[s:s + 16]) for s in range(0, count, 16))
    full, starts, seen = 0.0, np.zeros(len(ladder)), 0
    for inputs, wanted_here in chunks():
        plain, blurred = compute.run(_blurred_probabilities, model, inputs.to(model.device), wanted_here, ladder,
                                     padding)
        full += float(plain.sum())
        starts += blurred.sum(axis=1)
        seen += len(plain)
    full, starts = full / max(1, seen), starts / max(1, seen)
    chosen = next((s for s, p in zip(ladder, starts) if p < fraction * full), ladder[-1])
    return BlurChoice(chosen, ladder, tuple(float(p) for p in starts), full, float(fraction), seen, padding)


@torch.inference_mode()
def _blurred_probabilities(model: ModelSpec, inputs: torch.Tensor, targets: torch.Tensor | None,
                           ladder: tuple[float, ...], padding: str) -> tuple[np.ndarray, np.ndarray]:
    """The class's probability for each image (n,) and each blurred copy (len(ladder), n)."""
    network = model.inference_net
    logits = network(inputs)
    chosen = logits.argmax(dim=1) if targets is None else targets.to(inputs.device)
    plain = logits.softmax(dim=1).gather(1, chosen[:, None])[:, 0]
    blurred = [network(rise_blur(inputs, sigma, padding)).softmax(dim=1).gather(1, chosen[:, None])[:, 0]
               for sigma in ladder]
    return plain.cpu().double().numpy(), torch.stack(blurred).cpu().double().numpy()


# ------------------------------------------------------------------------------------- the run

@dataclass
class _Maps:
    """One chunk's maps (name -> (n, H, W) float32 at input resolution), targets and map costs."""

    heatmaps: dict[str, np.ndarray]
    targets: torch.Tensor
    cost: dict[str, dict[str, float]]
    seconds: float


@dataclass
class _Scores:
    """One chunk's probabilities: ``original`` (n,), and each metric's arrays, array -> method -> values."""

    original: np.ndarray
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    inputs_run: int = 0
    inputs_requested: int = 0
    pass_seconds: float = 0.0
    imputation_seconds: float = 0.0
    seconds: float = 0.0


def _run(model: ModelSpec, block: str, images: Any, targets: int | Sequence[int] | None,
         metrics: Sequence[str] | None, settings: EvaluationSettings | None, progress: Progress | None,
         maps_of: Callable[[torch.Tensor, torch.Tensor | None, Progress | None], _Maps], names: list[str],
         failures: dict[str, str]) -> Evaluation:
    settings = settings or EvaluationSettings()
    chosen = _checked_metrics(metrics)
    count, item = image_source(images)
    wanted = _targets(targets, count)
    listener = progress or current_listener()
    size = _chunk_size(model)
    blur = None
    if settings.blur_sigma is None:
        if any(metric.name == "insertion" for metric in chosen):
            blur = insertion_blur(model, images, padding=settings.blur_padding, chunks=lambda: (
                (as_batch(model, [item(i) for i in range(s, min(s + size, count))]),
                 None if wanted is None else wanted[s:s + size]) for s in range(0, count, size)))
            report(BLUR_SHARE, 1.0, "Evaluation: insertion's blur measured", listener)
            listener = scaled(listener, BLUR_SHARE, 1.0)
        settings = dataclasses.replace(settings, blur_sigma=blur.sigma if blur else BLUR_SIGMA)
    result = Evaluation(model=model.name, block=block, methods=[], metrics=tuple(m.name for m in chosen),
                        settings=settings, targets=np.zeros(0, dtype=np.int64), original=np.zeros(0),
                        pixels=model.input_size[0] * model.input_size[1], failures=failures, blur=blur)
    parts: list[tuple[_Maps, _Scores]] = []
    for start in range(0, count, size):
        stop = min(start + size, count)
        stage = scaled(listener, start / count, stop / count)
        inputs = as_batch(model, [item(i) for i in range(start, stop)])
        maps = maps_of(inputs, None if wanted is None else wanted[start:stop], scaled(stage, 0, MAP_SHARE))
        live = {name: maps.heatmaps[name] for name in names if name in maps.heatmaps and name not in failures}
        scores = _score(model, inputs, maps.targets, live, chosen, settings, scaled(stage, MAP_SHARE, 1))
        parts.append((maps, scores))
    _gather(result, parts, [name for name in names if name not in failures])
    for name, reason in result.problems().items():
        warnings.warn(f"{METRICS[name].label} cannot rank the maps here: {reason}.", MetricWarning, stacklevel=3)
    return result


def _checked_metrics(metrics: Sequence[str] | None) -> list[Metric]:
    """The registered metrics named, in the registry's order (all of them for None)."""
    if metrics is None:
        return list(METRICS.values())
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UserInputError(f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}: choose among "
                             f"{', '.join(METRICS)}")
    return [metric for name, metric in METRICS.items() if name in metrics]


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
    shared = trace(model, inputs, targets, gradients=any(m.needs_gradients for m in infos), blocks=blocks,
                   attention=sorted({need for m in infos for need in m.attention}))  # a ViT's attention maps
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


def _score(model: ModelSpec, inputs: torch.Tensor, targets: torch.Tensor, heatmaps: Mapping[str, np.ndarray],
           metrics: list[Metric], settings: EvaluationSettings, listener: Progress | None) -> _Scores:
    """Every metric plans its inputs for every map of the chunk into one plan (each distinct input once); the
    distinct inputs run; each metric's arrays are read off their probabilities."""
    started = time.perf_counter()
    plan = PerturbationPlan()
    plain = [plan.add(PlainInput(i)) for i in range(inputs.shape[0])]
    where: dict[str, dict[str, np.ndarray]] = {array: {} for metric in metrics for array in metric.arrays}
    for name, maps in heatmaps.items():
        indices: dict[str, list] = {array: [] for array in where}
        for i in range(len(plain)):
            case = MappedImage(i, maps[i], plain[i], settings)
            for metric in metrics:
                for array, found in metric.plan(plan, case).items():
                    indices[array].append(found)
        for array, found in indices.items():
            if found:
                where[array][name] = np.asarray(found)
    values, pass_seconds, preparation_seconds = run_plan(model, inputs, targets, plan, settings, listener)
    return _Scores(original=values[plain],
                   arrays={array: {n: values[ix] for n, ix in found.items()} for array, found in where.items()},
                   inputs_run=len(plan.inputs), inputs_requested=plan.requested, pass_seconds=pass_seconds,
                   imputation_seconds=preparation_seconds, seconds=time.perf_counter() - started)


def _gather(result: Evaluation, parts: list[tuple[_Maps, _Scores]], names: list[str]) -> None:
    result.methods = names
    result.targets = np.concatenate([maps.targets.cpu().numpy() for maps, _ in parts]) if parts else result.targets
    result.original = np.concatenate([scores.original for _, scores in parts]) if parts else result.original
    for array in dict.fromkeys(array for metric in result.metrics for array in METRICS[metric].arrays):
        table = result.arrays[array]
        for name in names:
            found = [part for _, scores in parts if (part := scores.arrays[array].get(name)) is not None]
            if found and len(found) == len(parts):  # scored in every chunk
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
