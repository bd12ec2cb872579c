"""Progress of heavy work (Score-CAM, Ablation-CAM, Cluster-CAM), reported to whoever listens.

A registry method keeps the signature ``compute(trace, block, model)``, so the listener is
set around the call instead of passed through it:

    with reporting(lambda fraction, text: print(f"{fraction:5.0%} {text}")):
        explain(model, image, "scorecam")

The dashboard turns the calls into ``st.progress``; with no listener, reporting costs nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Optional

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], what is being done)

_LISTENER: ContextVar[Optional[Progress]] = ContextVar("protoscope_progress", default=None)


@contextmanager
def reporting(listener: Progress | None) -> Iterator[None]:
    """Send the progress of everything run inside the ``with`` body to ``listener`` (None: to nobody)."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


def scaled(listener: Progress | None, low: float, high: float) -> Progress | None:
    """A listener for one stage of a longer job: its fractions [0, 1] map to [low, high] of ``listener``."""
    if listener is None:
        return None
    return lambda fraction, text: listener(low + (high - low) * min(max(fraction, 0.0), 1.0), text)


def report(done: int, total: int, text: str, listener: Progress | None = None) -> None:
    """Tell ``listener`` (default: the one set by ``reporting``) that ``done`` of ``total`` steps are done."""
    listener = listener or _LISTENER.get()
    if listener is not None and total > 0:
        listener(min(1.0, done / total), text)
