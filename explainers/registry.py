"""Registries that build things by name (timm's idea): each entry registers itself where it
is defined, and the UI, the API and the tests read the registry."""
from __future__ import annotations

from typing import Any, Callable


class Registry:
    """Name -> builder function, with a one-line description per entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def add(builder: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._builders:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._builders[name] = builder
            self._descriptions[name] = description
            return builder

        return add

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def names(self) -> list[str]:
        return list(self._builders)

    def description(self, name: str) -> str:
        return self._descriptions[name]

    def build(self, name: str, **kwargs: Any) -> Any:
        if name not in self._builders:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self._builders)}")
        return self._builders[name](**kwargs)
