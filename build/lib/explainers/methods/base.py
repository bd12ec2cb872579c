"""What a method is: one compute function plus one registry entry (``register_method``).

``compute(trace, block, model, **settings)``: a function of one shared ``Trace`` at ``block``,
returning the (N, h, w) maps or a ``MethodOutput``. A method with settings of its own declares
them in its entry (``settings=(Setting(...), ...)``, ``explainers.runtime.settings``) and takes each as a
keyword argument with the declared default, so calling the function directly and calling
``explain(..., method_settings=...)`` are the same computation.

The method modules import this module, never the package, so that no module imports one that
imports it back.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Union

import numpy as np
import torch

from ..fitted.store import TrainingData, no_training_set
from ..runtime.registry import Registry
from ..runtime.settings import Setting, UnknownSettingError, resolve

if TYPE_CHECKING:
    from ..models import ModelSpec

METHOD_FAMILIES = ("gradient", "gradient-free", "perturbation", "propagation", "classic", "prototype")

__all__ = ["METHOD_FAMILIES", "METHODS", "Method", "MethodOutput", "Recombine", "method_info", "method_names",
           "register_method"]


@dataclass
class MethodOutput:
    """Maps (N, h, w) at block resolution plus any passes the method ran beyond the shared trace.

    ``extras`` hold what holds for the whole batch; ``per_image`` (one dict per image, or empty)
    what belongs to one image. Image i's ``Explanation.extras`` merges both.
    """

    maps: torch.Tensor
    forwards: int = 0
    backwards: int = 0
    extras: dict[str, Any] = field(default_factory=dict)
    per_image: list[dict[str, Any]] = field(default_factory=list)

    def extras_of(self, index: int) -> dict[str, Any]:
        return {**self.extras, **(self.per_image[index] if self.per_image else {})}


Compute = Callable[..., Union[torch.Tensor, MethodOutput]]
# recombine(extras of one image, **display-only settings) -> (raw map at block resolution, new extras)
Recombine = Callable[..., "tuple[np.ndarray, dict[str, Any]]"]


@dataclass(frozen=True)
class Method:
    """A registered method: its compute function, what it needs (gradients, every block, a GAP head,
    training images, attention) and its settings, with the words the pages show."""

    name: str
    label: str
    family: str
    description: str
    reference: str
    compute: Compute
    needs_gradients: bool = False
    signed: bool = False
    last_block_only: bool = False
    requires_gap_head: bool = False
    needs_all_blocks: bool = False  # the trace must record every block, not only the chosen one
    check: Callable[["ModelSpec", str], str | None] | None = None  # any further condition, as a reason
    # Fitted on labelled training images: ``compute`` takes ``training`` (a dataset name, a folder or a
    # ``DatasetSpec``; None: the model's own training set), given by the caller of ``explain``.
    needs_training: bool = False
    settings: tuple[Setting, ...] = ()  # the method's own settings, passed to ``compute`` as keywords
    recombine: Recombine | None = None  # applies the display-only settings to a computed result, no pass
    # What of a transformer's attention the shared trace must record ("maps", "gradients", "layers":
    # ``explainers.engine.attention``).
    attention: tuple[str, ...] = ()

    def available(self, model: "ModelSpec", block: str, training: "TrainingData | None" = None) -> str | None:
        """None when the method applies to this model and block (and, for a method fitted on training
        images, ``training`` or the model's own set), else the reason it does not."""
        last = list(model.blocks)[-1]
        if self.last_block_only and block != last:
            return f"{self.label} is defined at the last block only ({last}): the classifier lives in its channels"
        if self.requires_gap_head and not model.gap_head:
            return (f"{self.label} needs a global-average-pooling + linear head right after {last}; "
                    f"{model.name} has more layers in between")
        if self.needs_training and training is None and model.dataset is None:
            return no_training_set(model, f"The {self.label}")
        return self.check(model, block) if self.check else None

    def setting(self, name: str) -> Setting:
        """The declaration of setting ``name`` (``UnknownSettingError`` lists the declared ones)."""
        found = {s.name: s for s in self.settings}
        if name not in found:
            raise UnknownSettingError(f"{self.label} has no setting {name!r}; its settings: "
                                      f"{', '.join(found) or 'none'}")
        return found[name]

    def resolve(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Every declared setting's value: ``given`` validated (``UnknownSettingError``,
        ``SettingValueError``), the declared defaults for the others."""
        return resolve(self.label, self.settings, given)

    def display_only(self) -> tuple[str, ...]:
        """The settings applied by ``recombine`` to a computed result, without a pass."""
        return tuple(s.name for s in self.settings if s.display_only)


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, *, label: str, family: str, description: str, reference: str,
                    **options: Any) -> Callable[[Compute], Compute]:
    """Register ``compute(trace, block, model, **settings)`` under ``name``; ``options`` are ``Method``
    fields (needs_gradients, signed, last_block_only, requires_gap_head, needs_all_blocks, check,
    needs_training, settings, recombine, attention).

    Each declared setting must be a keyword parameter of ``compute`` whose default is the declared
    one (one default, stated twice only where the reader needs it), and display-only settings need
    a ``recombine``.
    """
    if family not in METHOD_FAMILIES:
        raise ValueError(f"family must be one of {METHOD_FAMILIES}, not {family!r}")
    options["settings"] = tuple(options.get("settings", ()))

    def add(compute: Compute) -> Compute:
        method = Method(name, label, family, description, reference, compute, **options)
        _check_declaration(method)
        METHODS.add(name, method, description)
        return compute

    return add


def _check_declaration(method: Method) -> None:
    parameters = inspect.signature(method.compute).parameters
    names = [s.name for s in method.settings]
    if len(set(names)) != len(names):
        raise ValueError(f"method {method.name!r} declares a setting twice: {names}")
    for setting in method.settings:
        parameter = parameters.get(setting.name)
        if parameter is None or parameter.kind not in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            raise ValueError(f"method {method.name!r} declares setting {setting.name!r}, which its compute "
                             f"function {method.compute.__name__} does not take as a keyword argument")
        if parameter.default != setting.default:
            raise ValueError(f"method {method.name!r}: setting {setting.name!r} is declared with default "
                             f"{setting.default!r} but {method.compute.__name__} defaults to {parameter.default!r}")
    if method.needs_training and "training" not in parameters:
        raise ValueError(f"method {method.name!r} needs training images but {method.compute.__name__} takes no "
                         "'training' keyword")
    if method.display_only() and method.recombine is None:
        raise ValueError(f"method {method.name!r} has display-only settings ({', '.join(method.display_only())}) "
                         "but no recombine function")


def method_names(family: str | None = None) -> list[str]:
    """Registry ids, in registration order, optionally of one family."""
    return [name for name, method in METHODS.items() if family is None or method.family == family]


def method_info(name: str) -> Method:
    """The registry entry of ``name`` (``UnknownNameError``, a ``UserInputError``, lists the known ones)."""
    return METHODS[name]
