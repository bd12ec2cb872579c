"""The gradient-free attribution of seed 000 as a registry method, beside the CAM family.

The chosen block sets the depth of the explainer: B4 -> B4, B3 -> B34, B2 -> B234,
B1 -> B1234 (all blocks from the chosen one to the last, seed 000 sec. 3.3).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

from ..progress import current_listener, with_eta
from . import register_method

if TYPE_CHECKING:
    from ..models import ModelSpec
    from ..progress import Progress
    from ..prototypes import PrototypeExplainer
    from ..trace import Trace

PER_CLASS = 5
WAIT_POLL = 0.2  # seconds between two looks at a fit another caller is waiting for


class _Flight:
    """One fit under way in a worker thread, and the latest progress it reported.

    Every caller that asked for it (the one that started it too) waits in its own thread
    and passes the progress on to its own listener: a listener is only ever called from the
    thread of the caller that gave it, so one session's progress bar is never drawn from
    another's thread, and a caller that stops waiting (a page rerun, a closed tab) does
    not stop the fit the others wait for.
    """

    def __init__(self) -> None:
        self.done = threading.Event()
        self.state: tuple[float, str] = (0.0, "starting")
        self.result: "PrototypeExplainer | None" = None
        self.error: BaseException | None = None

    def update(self, fraction: float, text: str) -> None:
        self.state = (fraction, text)  # one tuple assignment: readers never see half an update


_FITTED: dict[tuple[str, str, str, int], "PrototypeExplainer"] = {}
_FLIGHTS: dict[tuple[str, str, str, int], _Flight] = {}
_LOCK = threading.Lock()  # guards _FITTED and _FLIGHTS; never held while fitting or waiting


def depth_for(block: str, model: "ModelSpec") -> str:
    """The depth name of every block from ``block`` to the last: B2 -> "B234"."""
    names = list(model.blocks)
    return "B" + "".join(name[1:] for name in names[names.index(block):])


def fitted(model: "ModelSpec", depth: str, per_class: int = PER_CLASS, source: str | None = None,
           progress: "Progress | None" = None) -> "PrototypeExplainer":
    """The explainer of ``model`` at ``depth`` fitted on ``source`` (a dataset name or an ImageFolder path;
    default: the model's own training set): in memory, else from the disk cache, else fitted now.

    Safe to call from many threads at once, single-flight: the first caller for a key starts
    the fit (in a worker thread), later callers wait for that one fit instead of starting
    their own. Every caller's ``progress`` (default: the listener of ``reporting``) gets the
    fit's stage, images done and time left while it waits; a caller that joined a fit started
    elsewhere is told so in the text. The explainer returned is shared and frozen
    (``PrototypeExplainer.freeze``): no request can change it for the others. A failed fit is
    not remembered: its error goes to every caller waiting, and the next call tries again.
    """
    source = source or model.dataset
    if source is None:
        raise ValueError(f"{model.name} has no known training set to fit prototypes on")
    key = (model.fingerprint, source, depth, per_class)
    with _LOCK:
        if key in _FITTED:
            return _FITTED[key]
        flight = _FLIGHTS.get(key)
        joined = flight is not None
        if flight is None:
            flight = _FLIGHTS[key] = _Flight()
            threading.Thread(target=_fly, args=(key, flight, model, depth, per_class, source), daemon=True,
                             name=f"prototype fit {depth} K/C={per_class}").start()
    return _wait(flight, progress or current_listener(), joined)


def _fly(key: tuple[str, str, str, int], flight: _Flight, model: "ModelSpec", depth: str, per_class: int,
         source: str) -> None:
    """The worker thread of one fit: fit (or load), publish the result, wake the waiters."""
    from ..data import load_dataset
    from ..prototypes import fit_prototypes

    try:
        explainer = fit_prototypes(model, load_dataset(source, "train"), depth, per_class,
                                   progress=with_eta(flight.update)).freeze()
    except BaseException as error:  # noqa: BLE001 - handed to every waiter, raised in their threads
        flight.error = error
        with _LOCK:
            _FLIGHTS.pop(key, None)
    else:
        flight.result = explainer
        with _LOCK:
            _FITTED[key] = explainer
            _FLIGHTS.pop(key, None)
    finally:
        flight.done.set()


def _wait(flight: _Flight, progress: "Progress | None", joined: bool) -> "PrototypeExplainer":
    shown = None
    while not flight.done.wait(WAIT_POLL if progress is not None else None):
        state = flight.state
        if progress is not None and state != shown:
            shown = state
            fraction, text = state
            progress(fraction, f"{text} (a fit another session started)" if joined else text)
    if flight.error is not None:
        raise flight.error
    assert flight.result is not None
    if progress is not None and shown is not None:
        progress(1.0, "done")
    return flight.result


def _has_training_set(model: "ModelSpec", block: str) -> str | None:
    if model.dataset is None:
        return "k-means attribution needs the labelled training set of the model (built in for digits)"
    return None


@register_method(
    "kmex_attribution", label="k-means attribution", family="prototype", signed=True,
    requires_gap_head=True, needs_all_blocks=True, check=_has_training_set,
    description="h·c_j/||c_j||² at B4, averaged within k-means segments down to the chosen depth; no gradient.",
    reference="Boubekki & Clemmensen 2026, Post-hoc Self-explanation of CNNs, eq. 11 and the three steps after it",
)
def kmex_attribution(trace: "Trace", block: str, model: "ModelSpec") -> torch.Tensor:
    """Eq. 11 at the last block, propagated segment-wise to ``block`` (5 prototypes per class)."""
    explainer = fitted(model, depth_for(block, model))
    maps = []
    for i, target in enumerate(trace.targets.tolist()):
        activations = {name: values[i:i + 1] for name, values in trace.activations.items()}
        maps.append(torch.from_numpy(explainer.attribution(activations, target)[explainer.depth]))
    return torch.stack(maps)
