"""One registry class for everything built or chosen by name (timm's idea): methods, models,
datasets, family adapters. Each entry registers itself where it is defined, and the UI, the API
and the tests read the registry.

A ``Registry[T]`` is a read-only mapping name -> entry in registration order, with a one-line
description per entry. An entry is whatever the kind needs: a builder function (models,
datasets: ``build(name, **kwargs)`` calls it), a ``Method`` record, an adapter instance. An
entry registered with ``last=True`` (a catch-all such as the generic family adapter) stays after
every entry registered later, so "the first entry that matches" finds it only when nothing
more specific does.

    MODELS: Registry[Callable[..., ModelSpec]] = Registry("model")

    @MODELS.register("digits", description="compact ResNet trained on scikit-learn's digits")
    def digits(weights="DEFAULT"): ...

    MODEL_FAMILIES.add("generic", GenericFamily(), "any CNN", last=True)
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Generic, TypeVar

from .errors import UserInputError

T = TypeVar("T")
E = TypeVar("E")

__all__ = ["Registry", "UnknownNameError"]


class UnknownNameError(UserInputError):
    """A name that is not in a registry (the message lists the known names)."""


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry of one ``kind`` ("method", "model", ...), each with a one-line description."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._last: set[str] = set()
        self._lock = threading.Lock()  # registration may happen while another thread reads

    # --- registering ---------------------------------------------------------------------------

    def add(self, name: str, entry: E, description: str = "", *, last: bool = False) -> E:
        """Register ``entry`` under ``name``; returns it. A name registered twice is an error."""
        with self._lock:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            entries: dict[str, Any] = {**self._entries, name: entry}  # an E is a T of this registry
            if last:
                self._last.add(name)
            ordered = [n for n in entries if n not in self._last] + [n for n in entries if n in self._last]
            self._entries = {n: entries[n] for n in ordered}  # replaced whole: readers never see half an update
            self._descriptions[name] = description
        return entry

    def register(self, name: str, description: str = "", *, last: bool = False) -> Callable[[E], E]:
        """Decorator form of ``add``: registers the decorated function or class itself."""
        def decorate(entry: E) -> E:
            return self.add(name, entry, description, last=last)

        return decorate

    # --- reading -------------------------------------------------------------------------------

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise UnknownNameError(f"unknown {self.kind} {name!r}; known: {', '.join(self._entries)}") from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._entries
        except TypeError:  # an unhashable name is simply not registered
            return False

    def get(self, name: str, default: Any = None) -> Any:
        return self._entries.get(name, default) if name in self else default

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return list(self._entries)

    def description(self, name: str) -> str:
        self[name]  # unknown names raise with the known ones
        return self._descriptions[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        """Call the entry registered under ``name`` (a builder) with ``kwargs``."""
        return self[name](**kwargs)  # type: ignore[operator]

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
