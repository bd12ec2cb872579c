"""One store for fitted things: prototype explainers now; Q-SENN layers and evaluation runs later.

Anything fitted on a model and its training data is asked for as ``STORE.get(recipe)``. A
*recipe* (``Recipe``) says what to make: its ``Key`` (the kind of thing, the model's
fingerprint, the training data's fingerprint, the settings), how to fit it, its size, how to
make it read-only for sharing and, for kinds with a file format, how to read and write it.
Pages and library methods ask the same store under the same key, so the explainer fitted for
the sidebar's model and training images serves the Segments page, the Prototypes page and the
Saliency page's k-means attribution alike, whichever asked first, with the same progress text.

Where a thing is looked for, in order:

1. memory: what was fitted or read since the server started, shared by every session and
   frozen by its recipe, so that no request can change it for the others;
2. ``.cache/<kind>/`` (or ``$PROTOSCOPE_CACHE/<kind>/``): files written by fits on this machine;
3. ``assets/<kind>/``: files shipped with Protoscope, read-only (the built-in digits model's
   prototypes at the pages' defaults: the prototype pages open in seconds on a fresh machine);
4. a fit, then written to tier 2.

Tiers 2-4 run single-flight in a worker thread: the first caller for a key starts them, any
later caller for that key waits for the same work instead of starting its own. Every waiter,
the first one included, waits in its own thread and passes the work's latest progress to its
own listener (default: the one ``progress.reporting`` set for it), so one session's progress
bar is only ever drawn from that session's thread, and a waiter that stops (a rerun, a closed
tab) does not stop the work the others wait for. A failure reaches every waiter and is not
remembered: the next call tries again. Called from the compute thread (``explainers.runtime.compute``),
whose jobs the fit itself submits, the work runs inline instead of in a worker it would wait for.

Memory is bounded by bytes, least recently used out first: ``PROTOSCOPE_STORE_MB``
(default 512). Bytes rather than a count, because the things kept differ in size by four
orders of magnitude: the digits model's B4 prototypes take 26 KB, a ResNet-50's B1234 explainer
(5,000 prototypes of 3,840 dimensions at each of three levels) about 200 MB. A count low enough
to bound memory with the large ones would throw out dozens of small ones for nothing; one high
enough for the small ones would let a few large ones take the server's memory. A thing larger
than the whole bound is still returned, and kept until the next one arrives. Eviction only
drops the store's reference: a session holding the object keeps using it, and the next request
reads it back from tier 2 in well under a second.
"""
from __future__ import annotations

import os
import threading
import warnings
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Hashable, Protocol, TypeVar, Union

import numpy as np

from ..data.datasets import DatasetSpec, load_dataset
from ..runtime import compute
from ..runtime.devices import for_people
from ..runtime.errors import DatasetError, FitCancelled
from ..runtime.progress import Progress, current_listener, with_eta

if TYPE_CHECKING:
    from ..models import ModelSpec

__all__ = ["ASSETS", "Key", "Recipe", "STORE", "Store", "Tier", "cache_dir", "find",
           "made", "plain_value", "temporary_path", "tiers", "training_set", "write_atomically"]

T = TypeVar("T")
from ..runtime.paths import ASSETS, cache_dir, temporary_path, write_atomically  # noqa: E402

DEFAULT_MEGABYTES = 512
WAIT_POLL = 0.2  # seconds between two looks at the work a waiter waits for
UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)  # a damaged or foreign file


@dataclass(frozen=True)
class Key:
    """What identifies one fitted thing: its kind, the fingerprints of the model and of the data
    it is fitted on, and its settings as sorted (name, value) pairs."""

    kind: str
    model: str
    data: str
    settings: tuple[tuple[str, Hashable], ...]

    @classmethod
    def of(cls, kind: str, model: str, data: str, **settings: Hashable) -> "Key":
        return cls(kind, model, data, tuple(sorted(settings.items())))


def plain_value(value: object) -> object:
    """A numpy scalar as the Python number it is, for a key (so that 5 and np.int64(5) key alike)."""
    return value.item() if isinstance(value, np.generic) else value


class Recipe(Protocol[T]):
    """What the store needs to know about one kind of fitted thing."""

    @property
    def key(self) -> Key: ...

    @property
    def title(self) -> str:
        """What is made, for a progress bar: "Fitting the B4 prototypes, K/C = 5 (once; kept for every session)"."""

    @property
    def filename(self) -> str | None:
        """Its file name in the disk tiers of its kind, or None when the kind has no file format."""

    def fit(self, progress: Progress | None) -> T: ...

    def load(self, path: Path) -> T: ...

    def save(self, value: T, path: Path) -> None: ...

    def share(self, value: T) -> T:
        """The value made read-only, to be shared between sessions and threads."""

    def nbytes(self, value: T) -> int:
        """Memory the value holds, for the store's bound."""


# --- disk tiers -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tier:
    """One disk tier of a kind: its folder, whether fits are written there, and what a read from it is called."""

    folder: Path
    writable: bool
    loaded: str  # what the progress says when a file is read from here


def tiers(kind: str) -> list[Tier]:
    """The disk tiers of ``kind``, in the order they are read: this machine's cache, then the shipped files."""
    return [Tier(cache_dir() / kind, True, "loaded from the cache"),
            Tier(ASSETS / kind, False, "loaded (shipped with Protoscope)")]


def find(kind: str, filename: str) -> Path | None:
    """The file ``filename`` of ``kind`` in the first tier that holds it, or None."""
    for tier in tiers(kind):
        if (tier.folder / filename).is_file():
            return tier.folder / filename
    return None


def made(recipe: "Recipe[T]", progress: Progress | None = None, cache: bool = True) -> T:
    """The thing ``recipe`` describes, read from the first disk tier that has a readable file of it,
    else fitted now and written to this machine's tier. Not frozen and not kept in memory: that is
    ``Store.get``. A file that cannot be read is deleted from this machine's tier (never from the
    shipped one) and the next tier tried; ``cache=False`` neither reads nor writes any file."""
    kind, filename = recipe.key.kind, recipe.filename if cache else None
    if filename:
        for tier in tiers(kind):
            path = tier.folder / filename
            if not path.is_file():
                continue
            try:
                value = recipe.load(path)
            except UNREADABLE:
                if tier.writable:
                    path.unlink(missing_ok=True)
                continue
            if progress is not None:
                progress(1.0, tier.loaded)
            return value
    value = recipe.fit(progress)
    if filename:
        path = tiers(kind)[0].folder / filename
        try:
            recipe.save(value, path)
        except OSError as error:  # a read-only or full disk costs the next fit, not this result
            warnings.warn(f"could not keep {path.name} in {path.parent}: {error}", RuntimeWarning, stacklevel=2)
    return value


# --- memory, single flight --------------------------------------------------------------------------

class _Flight:
    """One piece of work under way, and the latest progress it reported."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.cancelled = threading.Event()
        self.state: tuple[float, str] = (0.0, "starting")
        self.result: object = None
        self.error: BaseException | None = None

    def update(self, fraction: float, text: str) -> None:
        """Publish the work's progress; raise ``FitCancelled`` into the work once a cancel was asked (the
        work reports between its steps, so it stops at the next one, with what it wrote whole)."""
        if self.cancelled.is_set():
            raise FitCancelled("The fit was cancelled. What it had computed of the features is kept on disk: "
                               "the next fit of this model and data resumes from there.")
        self.state = (fraction, text)  # one tuple assignment: readers never see half an update


class Store:
    """Fitted things in memory, at most ``max_bytes`` of them (least recently used out first), made
    single-flight. Safe to use from any number of threads; see the module docstring."""

    def __init__(self, max_bytes: int | None = None) -> None:
        if max_bytes is None:
            max_bytes = int(float(os.environ.get("PROTOSCOPE_STORE_MB", DEFAULT_MEGABYTES)) * 2 ** 20)
        self.max_bytes = max_bytes
        self._memory: OrderedDict[Key, tuple[object, int]] = OrderedDict()
        self._flights: dict[Key, _Flight] = {}
        self._bytes = 0
        self._lock = threading.Lock()  # guards the three above; never held while fitting or waiting

    def get(self, recipe: "Recipe[T]", progress: Progress | None = None) -> T:
        """The thing ``recipe`` describes: from memory, else read or fitted (once, however many callers
        ask at once). ``progress`` (default: the listener of ``progress.reporting``) gets the recipe's
        title and the work's stage while this caller waits; a caller that joined work another started
        is told so. What is returned is shared and frozen (``recipe.share``)."""
        key = recipe.key
        progress = progress if progress is not None else current_listener()
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key][0]  # type: ignore[return-value]
            flight = self._flights.get(key)
            joined = flight is not None
            inline = False
            if flight is None:
                flight = self._flights[key] = _Flight()
                inline = compute.on_compute_thread()  # a worker's passes would queue behind this very job
                if not inline:
                    threading.Thread(target=self._fly, args=(recipe, flight), daemon=True,
                                     name=f"store: {recipe.title}"[:60]).start()
        if inline:
            self._fly(recipe, flight, _titled(progress, recipe.title, False))
        return self._wait(flight, _titled(progress, recipe.title, joined))

    def _fly(self, recipe: "Recipe[T]", flight: _Flight, also: Progress | None = None) -> None:
        """Make one thing (in a worker thread, or inline), publish it, wake the waiters."""
        def update(fraction: float, text: str) -> None:
            flight.update(fraction, text)
            if also is not None:
                also(fraction, text)

        key = recipe.key
        try:
            value = recipe.share(made(recipe, with_eta(update)))
            size = int(recipe.nbytes(value))
        except BaseException as error:  # noqa: BLE001 - handed to every waiter, raised in their threads
            flight.error = for_people(error)  # a GPU out of memory (the patch scan, a fit's pass): a message
            with self._lock:
                self._flights.pop(key, None)
        else:
            flight.result = value
            with self._lock:
                self._flights.pop(key, None)
                self._keep(key, value, size)
        finally:
            flight.done.set()

    def _keep(self, key: Key, value: object, size: int) -> None:
        """Add to memory (lock held), then drop the least recently used until within the bound; the
        newest is kept even when it alone exceeds it."""
        self._memory[key] = (value, size)
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._memory) > 1:
            _, (_, freed) = self._memory.popitem(last=False)
            self._bytes -= freed

    @staticmethod
    def _wait(flight: _Flight, progress: Progress | None) -> Any:
        shown = None
        while not flight.done.wait(WAIT_POLL if progress is not None else None):
            state = flight.state
            if progress is not None and state != shown:
                shown = state
                progress(*state)
        if flight.error is not None:
            raise flight.error
        if progress is not None and shown is not None:
            progress(1.0, "done")
        return flight.result

    def cancel(self, key: Key) -> bool:
        """Stop the work under way for ``key`` at its next step (every session waiting for it is told
        ``FitCancelled``); False when nothing is under way for it."""
        with self._lock:
            flight = self._flights.get(key)
        if flight is None:
            return False
        flight.cancelled.set()
        return True

    def is_under_way(self, key: Key) -> bool:
        with self._lock:
            return key in self._flights

    # ---- looking inside (tests, a future admin page) ----
    def __contains__(self, key: Key) -> bool:
        with self._lock:
            return key in self._memory

    def __len__(self) -> int:
        with self._lock:
            return len(self._memory)

    def keys(self) -> list[Key]:
        """The keys in memory, least recently used first."""
        with self._lock:
            return list(self._memory)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._bytes

    def under_way(self) -> int:
        """How many things are being made right now."""
        with self._lock:
            return len(self._flights)

    def clear(self) -> None:
        """Forget everything in memory (work under way carries on and is kept when done)."""
        with self._lock:
            self._memory.clear()
            self._bytes = 0


def _titled(progress: Progress | None, title: str, joined: bool) -> Progress | None:
    if progress is None:
        return None
    note = " (a fit another session started)" if joined else ""
    return lambda fraction, text: progress(fraction, f"{title}: {text}{note if fraction < 1 else ''}")


STORE: Store = Store()  # the one store of this process: every session and page asks it


# --- the training data a fit is asked for ----------------------------------------------------------

# A dataset name, an ImageFolder path or a loaded DatasetSpec: what a caller passes as ``training=``
# (``explain``, ``evaluate``, the prototype pages) for the things fitted on labelled training images.
TrainingData = Union[str, DatasetSpec]


def training_set(model: "ModelSpec", data: TrainingData | None = None, purpose: str = "This") -> DatasetSpec:
    """The training split to fit on: ``data`` if given, else the model's own training set; a
    ``DatasetError`` saying what to do if there is none."""
    chosen = data if data is not None else model.dataset
    if chosen is None:
        raise DatasetError(no_training_set(model, purpose))
    return chosen if isinstance(chosen, DatasetSpec) else load_dataset(chosen, "train")


def no_training_set(model: "ModelSpec", purpose: str = "This") -> str:
    """Why there is nothing to fit on, and what to do."""
    return (f"{purpose} is fitted on the model's labelled training images, and {model.name} comes without them: "
            "name a folder of them (one sub-folder per class, named like the model's classes) under *Training "
            "images* in the sidebar, or in Python pass training='folder/' to explain or evaluate")
