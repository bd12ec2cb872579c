"""Where the torch work of every request runs: one compute thread that all sessions share.

Why one thread: a CPU runs a network's operations fastest when one operation at a time uses
every core (PyTorch's intra-op parallelism). Each thread that calls torch gets an OpenMP team
of its own, and a Streamlit server starts a thread for every script run, so four sessions
computing at once put four teams on two cores that spin against each other (issue 9: four
concurrent Saliency pages took a median 10.6 s where one alone took 1-1.5 s). Here every pass
is a *job* run by one long-lived compute thread, first come first served, while the sessions'
threads do the rest (drawing, encoding, waiting for the browser) in parallel.

Fairness: long methods (Score-CAM, Ablation-CAM, Cluster-CAM) submit one batch per job with
``run_batch``, and such jobs wait behind every single-pass job (``run``: a trace, a CAM, an
LRP pass) already queued. A Grad-CAM of one student waits for at most the one batch of
another's Score-CAM that is running, never for all of it.

Context: a job runs in a copy of the caller's ``contextvars`` context, so the hooks that record
for this request only (``explainers.runtime.hooks``) and its progress listener are the caller's.
Grad mode is per thread in torch: a job sets its own (``torch.inference_mode`` or
``torch.set_grad_enabled`` inside the job function).

Exclusivity: torch.fx's symbolic tracing patches ``nn.Module.__call__`` for the whole process
while it traces; a forward pass of another thread during that time would be traced instead
of run. With one compute thread, running the tracing as a job makes it exclusive.

A job that submits a job runs it inline (no deadlock). Exceptions reach the caller; a device that ran
out of memory reaches it as ``DeviceOutOfMemoryError``, a ``UserInputError`` the pages show as a message.
"""
from __future__ import annotations

import contextvars
import itertools
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, TypeVar

from .devices import for_people

__all__ = ["on_compute_thread", "run", "run_batch"]

T = TypeVar("T")
SINGLE_PASS, BATCH = 0, 1  # queue priorities: lower runs first

_JOBS: "queue.PriorityQueue[tuple[int, int, Future, contextvars.Context, Callable[[], Any]]]" = queue.PriorityQueue()
_ORDER = itertools.count()  # first come, first served within a priority
_STARTED = threading.Lock()
_worker: threading.Thread | None = None
_local = threading.local()


def on_compute_thread() -> bool:
    """True inside a job (the compute thread itself)."""
    return getattr(_local, "inside", False)


def run(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run ``function(*args, **kwargs)`` on the compute thread, in the caller's context, and return
    its result (or raise its exception). Called from a job, it runs inline."""
    return _submit(SINGLE_PASS, function, args, kwargs)


def run_batch(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Like ``run``, for one batch of a long method: it waits behind the single-pass jobs already queued."""
    return _submit(BATCH, function, args, kwargs)


def _submit(priority: int, function: Callable[..., T], args: tuple, kwargs: dict) -> T:
    if on_compute_thread():
        return function(*args, **kwargs)
    future: Future = Future()
    _JOBS.put((priority, next(_ORDER), future, contextvars.copy_context(), lambda: function(*args, **kwargs)))
    _ensure_worker()
    return future.result()


def _ensure_worker() -> None:
    global _worker
    if _worker is not None and _worker.is_alive():
        return
    with _STARTED:
        if _worker is None or not _worker.is_alive():
            _worker = threading.Thread(target=_serve, name="protoscope-compute", daemon=True)
            _worker.start()


def _serve() -> None:
    _local.inside = True
    while True:
        _priority, _order, future, context, job = _JOBS.get()
        if not future.set_running_or_notify_cancel():
            continue
        try:
            result = context.run(job)
        except BaseException as error:  # noqa: BLE001 - every failure belongs to the caller, not to this thread
            future.set_exception(for_people(error))  # a GPU out of memory: a message, not a traceback
        else:
            future.set_result(result)
        del future, context, job
