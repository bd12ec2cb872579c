"""Settings a method declares: name, type, range, default and one line of help.

A method with settings of its own (Cluster-CAM's Q, alpha and clustering, LRP's epsilon and gamma,
Score-CAM's batch size) lists them in its registry entry, and its compute function takes them as
keyword arguments with the same defaults:

    @register_method("clustercam", ..., settings=(
        Setting("q", int, 6, "Clusters of channels (the paper's Table 2: 6)", low=2, high=16, label="Clusters Q"),
        Setting("alpha", float, 0.5, "H = alpha x base - (1 - alpha) x scissors", low=0.0, high=1.0,
                step=0.05, display_only=True),
    ), recombine=...)
    def cluster_cam(trace, block, model, *, q=6, alpha=0.5): ...

``explain(..., method_settings={"clustercam": {"q": 4}})`` validates what it is given against the
declaration (``Method.resolve``: an unknown name raises ``UnknownSettingError``, a value of the
wrong type or outside the range ``SettingValueError``, both ``UserInputError`` s with a message
that says what is accepted), fills in the defaults and calls the function with them. The
dashboard draws one control per declared setting (``ui/settings.py``) and its caches key on the
values.

``display_only``: the setting changes only how a computed result is combined, never a network pass
(Cluster-CAM's alpha recombines the stored base and scissors maps). The method then names a
``recombine`` function, and a cache keys on the other settings only: moving alpha reruns nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .errors import UserInputError

__all__ = ["DeclaredParameters", "Setting", "SettingError", "SettingValueError", "UnknownSettingError"]

TYPES = (bool, int, float, str)


class SettingError(UserInputError):
    """A method setting that cannot be used as given."""


class UnknownSettingError(SettingError):
    """A setting name the method does not declare (or settings for a method not being explained)."""


class SettingValueError(SettingError):
    """A setting value of the wrong type or outside the declared range."""


@dataclass(frozen=True)
class Setting:
    """One setting of a method.

    ``type`` is bool, int, float or str; ``low``/``high`` bound numbers (inclusive), ``choices``
    lists the accepted strings. ``default=None`` means "decided by the method" (Score-CAM's
    batch size: measured per network), and None is then accepted as a value. ``label``, ``step``
    and ``choice_labels`` (the shown names of choices) are for the controls: a bounded number
    with a ``step`` is drawn as a slider, any other number as a number box.
    """

    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    display_only: bool = False
    label: str = ""
    step: float | None = None
    choice_labels: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise TypeError(f"setting {self.name!r}: type must be one of bool, int, float, str, not {self.type}")
        if self.type is str and not self.choices:
            raise TypeError(f"setting {self.name!r}: a str setting lists its choices")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"setting {self.name!r}: low {self.low} > high {self.high}")
        if self.default is not None:
            self.check(self.default, "the declared default")
        object.__setattr__(self, "choice_labels", dict(self.choice_labels))

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def optional(self) -> bool:
        """None is accepted (and is the default): the method decides."""
        return self.default is None

    def accepted(self) -> str:
        """What this setting accepts, in words: "an integer in [2, 16]", "one of 'kmeans', 'spectral'"."""
        if self.type is str:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.type is bool:
            text = "True or False"
        else:
            kind = "an integer" if self.type is int else "a number"
            if self.low is not None and self.high is not None:
                text = f"{kind} in [{self.low:g}, {self.high:g}]"
            elif self.low is not None:
                text = f"{kind} >= {self.low:g}"
            elif self.high is not None:
                text = f"{kind} <= {self.high:g}"
            else:
                text = kind
        return text + (" or None (the method decides)" if self.optional else "")

    def check(self, value: Any, what: str | None = None) -> Any:
        """``value`` converted to the setting's type (an int for a float setting, a numpy scalar for
        its Python type), or ``SettingValueError`` saying what is accepted."""
        if value is None and self.optional:
            return None
        converted = self._converted(value)
        if converted is None or not self._in_range(converted):
            raise SettingValueError(f"{what or f'setting {self.name!r}'} must be {self.accepted()}, not {value!r}")
        return converted

    def _converted(self, value: Any) -> Any:
        if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
            value = value.item()  # a numpy or torch scalar
        if self.type is bool:
            return value if isinstance(value, bool) else None
        if isinstance(value, bool):
            return None  # True is an int in Python, never a number here
        if self.type is int:
            if isinstance(value, int):
                return value
            return int(value) if isinstance(value, float) and value.is_integer() else None
        if self.type is float:
            return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
        return value if isinstance(value, str) and value in self.choices else None

    def _in_range(self, value: Any) -> bool:
        if self.type in (int, float):
            return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        return True


def resolve(owner: str, declared: tuple[Setting, ...], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """Every declared setting's value: ``given`` checked against ``declared``, defaults for the rest.

    ``owner`` names what the settings belong to in the messages ("Cluster-CAM").
    """
    given = dict(given or {})
    by_name = {s.name: s for s in declared}
    unknown = [name for name in given if name not in by_name]
    if unknown:
        known = ", ".join(by_name) if by_name else "none"
        raise UnknownSettingError(f"{owner} has no setting {', '.join(repr(n) for n in unknown)}; "
                                  f"its settings: {known}")
    return {name: (setting.check(given[name], f"{owner}'s {name}") if name in given else setting.default)
            for name, setting in by_name.items()}


class DeclaredParameters:
    """Parameters declared once and validated in one place (scikit-learn's ``_parameter_constraints``,
    with the ``Setting`` a method's controls are drawn from): a class lists its ``parameters``, and
    ``validate_parameters()`` checks each attribute of the same name against its declaration,
    storing the converted value (an int given for a float becomes a float), or raises
    ``SettingValueError`` saying what is accepted. Call it at the door (``fit``, ``__post_init__``).

        class KMeansExplainer(DeclaredParameters):
            parameters = (Setting("per_class", int, 5, "Prototypes per class (K/C)", low=1, high=100),)
    """

    parameters: ClassVar[tuple[Setting, ...]] = ()

    def validate_parameters(self) -> None:
        owner = type(self).__name__
        for setting in self.parameters:
            value = setting.check(getattr(self, setting.name), f"{owner}'s {setting.name}")
            object.__setattr__(self, setting.name, value)  # frozen dataclasses too

    @classmethod
    def parameter(cls, name: str) -> Setting:
        """The declaration of one parameter (for a control or a message)."""
        return next(s for s in cls.parameters if s.name == name)
