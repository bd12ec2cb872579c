"""Progress of heavy work (Score-CAM, Ablation-CAM, Cluster-CAM), reported to whoever listens.

A registry method keeps the signature ``compute(trace, block, model)``, so the listener is
set around the call instead of passed through it:

    with reporting(lambda fraction, text: print(f"{fraction:5.0%} {text}")):
        explain(model, image, "scorecam")

The dashboard turns the calls into ``st.progress``; with no listener, reporting costs nothing.
``with_eta`` adds the time left, extrapolated from the time spent so far, to every message;
``terminal`` prints them on one updating line (the command line's listener).

``Progress`` is the one type for all of it, in the library and the dashboard: a listener called
with (fraction done, what is being done). Work takes ``progress: Progress | None``, hands a stage
of itself ``scaled(progress, low, high)``, and tells it with ``report``.
"""
from __future__ import annotations

import time
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


def report(done: float, total: float, text: str, listener: Progress | None = None) -> None:
    """Tell ``listener`` (default: the one set by ``reporting``) that ``done`` of ``total`` steps are done."""
    listener = listener or _LISTENER.get()
    if listener is not None and total > 0:
        listener(min(1.0, done / total), text)


def report_fraction(fraction: float, text: str, listener: Progress | None = None) -> None:
    """``report`` for work measured as a fraction (clamped to [0, 1]) rather than in steps."""
    listener = listener or _LISTENER.get()
    if listener is not None:
        listener(float(min(max(fraction, 0.0), 1.0)), text)


def terminal(label: str) -> Progress:
    """A listener printing one updating line: ``label``, the percentage done (floored: 100% only when
    done) and the message; the line ends when the work does."""
    def update(fraction: float, text: str) -> None:
        percent = f"{int(fraction * 100):3d}%"
        print(f"\r{label:14} {percent} {text[:90]:90}", end="\n" if fraction >= 1 else "", flush=True)
    return update


def time_span(seconds: float) -> str:
    """A time span as a person says it: "8 s", "1 min 20 s", "2 h 5 min"."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s" if seconds else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def with_eta(listener: Progress | None, clock: Callable[[], float] = time.monotonic,
             settle: float = 1.0) -> Progress | None:
    """``listener`` with "· about 12 s left" appended to every message but the last.

    The time left is the time spent so far times (1 - fraction) / fraction: it assumes the
    fractions a job reports grow in proportion to its work, so a job should weight its stages
    by their expected cost. Nothing is promised before ``settle`` seconds or 2% of the work
    ("estimating the time left" is shown instead), when the estimate would be noise.
    """
    if listener is None:
        return None
    started = clock()

    def update(fraction: float, text: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        elapsed = clock() - started
        if fraction >= 1.0:
            listener(fraction, text)
        elif elapsed < settle or fraction < 0.02:
            listener(fraction, f"{text} · estimating the time left")
        else:
            listener(fraction, f"{text} · about {time_span(elapsed * (1 - fraction) / fraction)} left")

    return update


def current_listener() -> Progress | None:
    """The listener ``reporting`` set for this context, if any (for work that reports from elsewhere)."""
    return _LISTENER.get()
