"""How the faithfulness metrics perturb (``EvaluationSettings``, its parameters declared once), and a model's blur."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..runtime.settings import DeclaredParameters, Setting, SettingValueError
from .blur import BLUR_LADDER, BLUR_PADDINGS
from .imputation import ROAD_NOISE, ROAD_UNITS
from .metrics import ROAD_FRACTIONS, STEPS

__all__ = ["EvaluationSettings", "OpenSetting"]


@dataclass(frozen=True)
class OpenSetting(Setting):
    """A number ``Setting`` whose bounds may be left out (``open_low``, ``open_high``: a blur above 0 pixels, a
    fraction strictly between 0 and 1), and whose value may be one or more such numbers (``many``: a tuple)."""

    open_low: bool = False
    open_high: bool = False
    many: bool = False

    def accepted(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        interval = f"{'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"
        kind = "an integer" if self.type is int else "a number"
        return f"one or more numbers, each in {interval}" if self.many else f"{kind} in {interval}"

    def check(self, value: Any, what: str | None = None) -> Any:
        if not self.many:
            return super().check(value, what)
        values = tuple(value) if isinstance(value, (tuple, list, np.ndarray)) else ()
        converted = tuple(self._converted(item) for item in values)
        if not values or any(item is None or not self._in_range(item) for item in converted):
            raise SettingValueError(f"{what or f'setting {self.name!r}'} must be {self.accepted()}, not {value!r}")
        return converted

    def _in_range(self, value: Any) -> bool:
        if not super()._in_range(value):
            return False
        return not (self.open_low and value == self.low) and not (self.open_high and value == self.high)


@dataclass(frozen=True)
class EvaluationSettings(DeclaredParameters):
    """How the metrics perturb: ``steps`` of deletion/insertion, ROAD's removal ``road_fractions``, imputation
    ``road_noise`` and the units it is added in (``road_units``: "pixels", [0, 1] before the model's
    normalisation, as the authors; or "model", the normalised input), the insertion start's blur
    ``blur_sigma`` (pixels; None, the default: measured per model and images by ``insertion_blur``) and what
    lies beyond the border while blurring (``blur_padding``: RISE's "zeros" or "reflect"), and the ``seed``
    of tie-breaking and of ROAD's noise. Each is declared once in ``parameters`` (its range and help) and
    checked there: a value outside raises ``SettingValueError`` (a ``UserInputError``) saying what is accepted.
    Where the defaults come from: each metric's ``constants``."""

    parameters = (
        Setting("steps", int, STEPS, "Pixels are removed or inserted in this many equal steps (RISE)", low=2,
                high=1000, label="Deletion / insertion steps"),
        OpenSetting("road_fractions", float, ROAD_FRACTIONS, "The fractions of the pixels ROAD removes", low=0.0,
                    high=1.0, open_low=True, open_high=True, many=True, label="ROAD removal levels"),
        Setting("road_noise", float, ROAD_NOISE, "Standard deviation of the noise added to ROAD's imputed pixels, "
                "in road_units", low=0.0, label="ROAD noise"),
        Setting("road_units", str, ROAD_UNITS[0], "Where ROAD imputes and adds its noise: pixels in [0, 1] before "
                "the model's normalisation (the authors'), or the normalised model input", choices=ROAD_UNITS,
                label="ROAD noise units"),
        OpenSetting("blur_sigma", float, None, "Insertion starts from the image blurred by RISE's kernel of this "
                    f"σ, in pixels; None: the smallest of {', '.join(f'{s:g}' for s in BLUR_LADDER)} that hides the "
                    "class (insertion_blur)", low=0.0, high=100.0, open_low=True, label="Insertion blur σ (pixels)"),
        Setting("blur_padding", str, BLUR_PADDINGS[0], "Beyond the border while blurring: zeros (the normalisation "
                "mean, RISE's code) or the image reflected", choices=BLUR_PADDINGS, label="Insertion blur padding"),
        Setting("seed", int, 0, "Seed of the order of tied pixels and of ROAD's noise", low=0),
    )

    steps: int = STEPS
    road_fractions: tuple[float, ...] = ROAD_FRACTIONS
    road_noise: float = ROAD_NOISE
    road_units: str = ROAD_UNITS[0]
    blur_sigma: float | None = None
    blur_padding: str = BLUR_PADDINGS[0]
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate_parameters()
