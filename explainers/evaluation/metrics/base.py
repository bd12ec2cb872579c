"""What a faithfulness metric is (``Metric``: one class declaring its scores, constants and inputs) and its registry."""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, TypeVar

import numpy as np

from ...runtime.registry import Registry
from ..perturbation import PerturbationPlan, pixel_order

if TYPE_CHECKING:
    from ..result import Evaluation
    from ..settings import EvaluationSettings

__all__ = ["METRICS", "Constant", "MappedImage", "Metric", "Score", "register_metric"]

_MetricClass = TypeVar("_MetricClass", bound=type)


@dataclass(frozen=True)
class Score:
    """One column of a metric's table: ``column`` (its name in the DataFrame), ``label`` (as shown), whether a
    higher value is better (``higher_is_better``: the score's direction) and the shown ``format``."""

    column: str
    label: str
    higher_is_better: bool
    format: str = "%.3f"

    @property
    def direction(self) -> str:
        """"higher is better" or "lower is better"."""
        return "higher is better" if self.higher_is_better else "lower is better"


@dataclass(frozen=True)
class Constant:
    """A number (or choice) a metric is defined with: ``value`` (ours; when ``EvaluationSettings`` can change it,
    the default of its parameter of the same ``name``), ``source`` (where it comes from), ``paper`` (the paper's
    or its authors' code's value; None where they set none) and ``differs`` (where and why ours differs from
    it; "" where it does not)."""

    name: str
    value: Any
    source: str
    paper: Any = None
    differs: str = ""

    def describe(self) -> str:
        """One line: the value, the paper's, and the difference (Markdown)."""
        value = f"{self.value:g}" if isinstance(self.value, float) else self.value
        text = f"{self.name} = {value} — {self.source}"
        if self.paper is not None:
            text += f"; the paper's: {self.paper}"
        return text + (f"; **differs**: {self.differs}" if self.differs else "")


@dataclass
class MappedImage:
    """One image of a chunk and one method's map of it, which a metric plans its inputs from: ``image`` (the
    index in the chunk), ``heatmap`` (H, W) at input resolution, ``plain`` (the plan's index of the image
    unchanged) and the ``settings``. ``order`` (``pixel_order``) is computed once and shared by every
    metric that takes pixels in the map's order."""

    image: int
    heatmap: np.ndarray
    plain: int
    settings: EvaluationSettings

    @property
    def pixels(self) -> int:
        """Pixels of the image (H x W)."""
        return int(self.heatmap.size)

    @cached_property
    def order(self) -> np.ndarray:
        """Pixel indices from the most to the least relevant (``pixel_order``, seeded by ``settings.seed``)."""
        return pixel_order(self.heatmap, self.settings.seed)


class Metric:
    """A faithfulness metric (Quantus' idea: one class per metric, declaring its score directions). A subclass
    declares, as class attributes:

    - ``name`` (what ``evaluate(metrics=...)`` takes), ``label``, ``reference`` (the paper), ``section`` (the
      heading it is shown under: metrics that share one are shown together, as deletion and insertion);
    - ``scores``: the columns of its table, each with its direction (``Score``);
    - ``arrays``: the probabilities it keeps per method, ``Evaluation.<array>[method]`` of shape (N,) or
      (N, P); of those, ``curves`` (array -> curve label) are curves over ``positions``, drawn for the
      current image (``curves_per_image``) or averaged over the images, along ``curve_axis``;
    - ``constants``: the numbers it is defined with and where they come from (``Constant``);

    and implements ``plan`` (the perturbed inputs it needs for one image and map, added to the chunk's
    shared plan, which computes each distinct input once for every metric and method) and ``summary`` (its
    table row for one method, from the probabilities ``evaluate`` found). ``caption`` explains it in the
    dashboard, ``problem`` says when its result cannot rank the maps. Registered with ``register_metric``,
    ``evaluate``, ``Evaluation.table`` and the Evaluation page pick it up.
    """

    name: ClassVar[str]
    label: ClassVar[str]
    reference: ClassVar[str]
    section: ClassVar[str]
    scores: ClassVar[tuple[Score, ...]]
    arrays: ClassVar[tuple[str, ...]]
    curves: ClassVar[Mapping[str, str]] = {}
    curves_per_image: ClassVar[bool] = False
    curve_axis: ClassVar[str] = "fraction of pixels"
    constants: ClassVar[tuple[Constant, ...]] = ()
    off_note: ClassVar[str] = ""  # why the dashboard may leave it off, and how to turn it on

    def plan(self, plan: PerturbationPlan, case: MappedImage) -> dict[str, int | list[int]]:
        """The inputs this metric needs for one image and map: array -> the plan's index of each (one index
        for an (N,) array, a list for a curve), from ``plan.add(...)`` (or ``case.plain``)."""
        raise NotImplementedError

    def summary(self, found: Evaluation, method: str) -> dict[str, float]:
        """This metric's scores of ``method`` over the images: column -> value (the columns of ``scores``)."""
        raise NotImplementedError

    def positions(self, settings: EvaluationSettings, pixels: int) -> np.ndarray:
        """Where each point of this metric's curves lies (e.g. the fraction of pixels removed)."""
        raise NotImplementedError(f"{self.name} has no curves")

    def caption(self, settings: EvaluationSettings) -> str:
        """What the metric does and which values are good, for the dashboard (Markdown)."""
        return f"{self.label} ({self.reference})."

    def preamble(self, settings: EvaluationSettings) -> str:
        """What the metrics of this one's section share, said once before their captions (Markdown)."""
        return ""

    def problem(self, found: Evaluation) -> str | None:
        """Why this metric's result cannot rank the maps of ``found``, or None."""
        return None

    def finding(self, found: Evaluation) -> str:
        """What was measured to set this metric up for ``found`` (insertion's blur), for the page; "" if nothing."""
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


METRICS: Registry[Metric] = Registry("faithfulness metric")


def register_metric(cls: _MetricClass) -> _MetricClass:
    """Class decorator: register one instance of the ``Metric`` subclass ``cls`` under its ``name``; the
    registry's order is the order of the tables. Its arrays and score columns must be new names."""
    metric = cls()
    taken = {array for other in METRICS.values() for array in other.arrays}
    columns = {score.column for other in METRICS.values() for score in other.scores}
    clashes = sorted(taken & set(metric.arrays)) + sorted(columns & {s.column for s in metric.scores})
    if clashes or "method" in {s.column for s in metric.scores}:
        raise ValueError(f"metric {metric.name!r}: {', '.join(clashes) or 'method'} already names another "
                         "metric's array or column")
    unknown = [array for array in metric.curves if array not in metric.arrays]
    if unknown or not all(array.isidentifier() and not array.startswith("_") for array in metric.arrays):
        raise ValueError(f"metric {metric.name!r}: arrays are public identifiers and curves are among them "
                         f"({', '.join(unknown)})")
    METRICS.add(metric.name, metric, metric.label)
    return cls
