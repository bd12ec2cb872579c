"""What ``evaluate`` found (``Evaluation``): each metric's probabilities per method and image, its tables and curves."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from .blur import BlurChoice
from .metrics import METRICS, PixelCurveMetric
from .perturbation import step_counts
from .settings import EvaluationSettings

__all__ = ["Evaluation"]


@dataclass
class Evaluation:
    """Per-image scores of every metric for every method, and what the run cost.

    Probabilities are the target's softmax probability on the network's inference copy:
    ``original`` S_c(X) (N,), and each metric's arrays (``Metric.arrays``) as attributes, method ->
    array: ``masked[m]`` S_c(X o H) (N,); ``deletion[m]`` / ``insertion[m]`` (N, steps + 1) at the pixel
    fractions ``step_fractions``; ``morf[m]`` / ``lerf[m]`` (N, P) at ``settings.road_fractions``
    (``arrays`` holds them all, array -> method -> values; a metric not computed has none).
    ``cost[m]``: the map's seconds, forward and backward passes per image. ``failures``: methods left
    out, and why. ``inputs_run`` distinct perturbed inputs of ``inputs_requested`` went through the
    network, in ``pass_seconds`` of network time; preparing inputs off the compute thread (ROAD's
    imputation) took ``imputation_seconds``; the metrics ``metric_seconds`` in all. ``blur``: what
    ``insertion_blur`` measured when the insertion blur was left to it (``settings.blur_sigma`` is then the
    sigma it chose), else None. ``problems()``: each computed metric that cannot rank the maps here, and why.
    """

    model: str
    block: str
    methods: list[str]
    metrics: tuple[str, ...]
    settings: EvaluationSettings
    targets: np.ndarray
    original: np.ndarray
    pixels: int
    arrays: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    cost: dict[str, dict[str, float]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    inputs_run: int = 0
    inputs_requested: int = 0
    pass_seconds: float = 0.0
    imputation_seconds: float = 0.0
    metric_seconds: float = 0.0
    map_seconds: float = 0.0
    blur: BlurChoice | None = None

    def __post_init__(self) -> None:
        for metric in METRICS.values():
            for array in metric.arrays:
                self.arrays.setdefault(array, {})

    def __getattr__(self, name: str) -> dict[str, np.ndarray]:
        arrays = self.__dict__.get("arrays", {})  # not self.arrays: unpickling asks before __dict__ is filled
        if name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def images(self) -> int:
        """How many images were scored."""
        return len(self.original)

    @property
    def step_fractions(self) -> np.ndarray:
        """The fraction of pixels taken at each deletion/insertion step: 0, ..., 1."""
        return step_counts(self.pixels, self.settings.steps) / self.pixels

    # --- any metric -------------------------------------------------------------------------------

    def table(self, metrics: Sequence[str] | None = None) -> pd.DataFrame:
        """One row per method: ``method`` and the score columns (``Metric.scores``) of ``metrics`` (default:
        every metric computed), each a mean over the images."""
        chosen = [METRICS[name] for name in (self.metrics if metrics is None else metrics)]
        for metric in chosen:
            self._needs(metric.name)
        columns = ["method", *(score.column for metric in chosen for score in metric.scores)]
        rows = [{"method": name, **{column: value for metric in chosen
                                    for column, value in metric.summary(self, name).items()}}
                for name in self.methods]
        return pd.DataFrame(rows, columns=columns)

    def problem(self, metric: str) -> str | None:
        """Why ``metric``'s result cannot rank the maps here (``Metric.problem``), or None."""
        self._needs(metric)
        return METRICS[metric].problem(self)

    def problems(self) -> dict[str, str]:
        """Every computed metric whose result cannot rank the maps here: metric -> why (``Metric.problem``)."""
        return {name: reason for name in self.metrics if (reason := METRICS[name].problem(self))}

    def curve_table(self, metrics: Sequence[str] | None = None, column: str = "curve") -> pd.DataFrame:
        """Every curve of ``metrics`` (default: every metric computed that has curves), long format: ``method``,
        ``image``, ``column`` (the curve's label: deletion, MoRF, ...), ``fraction``, ``probability``."""
        names = [m for m in self.metrics if METRICS[m].curves] if metrics is None else list(metrics)
        frames = []
        for name in names:
            self._needs(name)
            metric = METRICS[name]
            fractions = metric.positions(self.settings, self.pixels)
            for array, label in metric.curves.items():
                for method, values in self.arrays[array].items():
                    frames.append(_long(method, label, fractions, values, column))
        return pd.concat(frames, ignore_index=True) if frames else _long_empty(column)

    def timing_table(self) -> pd.DataFrame:
        """Seed 002's Table 2: seconds and forward (and backward) passes per image of each map, measured
        on this run. The shared pass is charged in full to every method, as each would need it alone."""
        rows = [{"method": name, **self.cost[name]} for name in self.methods]
        return pd.DataFrame(rows, columns=["method", "seconds", "forwards", "backwards"])

    # --- the built-in metrics, by name --------------------------------------------------------------

    def confidence_table(self) -> pd.DataFrame:
        """Seed 002's Table 1 (eq. 23): ``drop`` (relative, %, lower is better) and ``increase`` (% of
        images whose probability rose, higher is better), one row per method."""
        return self.table(["confidence"])

    def auc_table(self) -> pd.DataFrame:
        """Area under the deletion curve (lower is better) and the insertion curve (higher is better),
        mean over images, trapezoid rule over the fraction of pixels (RISE)."""
        return self.table([kind for kind in ("deletion", "insertion") if kind in self.metrics] or ["deletion"])

    def aucs(self, kind: str) -> dict[str, np.ndarray]:
        """Each image's area under its ``kind`` ("deletion" or "insertion") curve, per method."""
        self._needs(kind)
        metric = METRICS[kind]
        if not isinstance(metric, PixelCurveMetric):
            raise ValueError(f"{kind!r} has no area under a curve: choose deletion or insertion")
        return {name: metric.areas(self, name) for name in self.methods}

    def insertion_problem(self) -> str | None:
        """Why the insertion curves cannot rank the maps here, or None (``InsertionMetric.problem``)."""
        return self.problem("insertion")

    def road_table(self) -> pd.DataFrame:
        """ROAD: mean probability over the removal fractions and images, removing the most relevant
        pixels first (``morf``, lower is better) and the least relevant first (``lerf``, higher is
        better); ``gap`` = lerf - morf (higher is better)."""
        return self.table(["road"])

    def curves(self) -> pd.DataFrame:
        """Every deletion and insertion curve, long format: method, image, curve, fraction, probability."""
        return self.curve_table([kind for kind in ("deletion", "insertion") if kind in self.metrics])

    def road_curves(self) -> pd.DataFrame:
        """Every ROAD curve, long format: method, image, order (MoRF or LeRF), fraction, probability."""
        return self.curve_table(["road"] if "road" in self.metrics else [], column="order")

    def _needs(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ValueError(f"this evaluation did not compute {metric!r} (it has {', '.join(self.metrics)})")


def _long(name: str, kind: str, fractions: np.ndarray, values: np.ndarray, column: str) -> pd.DataFrame:
    images, steps = values.shape
    return pd.DataFrame({"method": name, "image": np.repeat(np.arange(images), steps), column: kind,
                         "fraction": np.tile(fractions, images), "probability": values.reshape(-1)})


def _long_empty(column: str) -> pd.DataFrame:
    return pd.DataFrame(columns=["method", "image", column, "fraction", "probability"])
