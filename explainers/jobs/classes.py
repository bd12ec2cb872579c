"""A prototype fit's per-class stage on Ray: one task per class (k-means and the own-class projection,
``explainers.fitted.prototypes.classwise.fit_class``), one CPU each, reading the class's rows from the
feature cache, which on a cluster lies on storage every node reads (the shared ``.cache/``).

The tasks run the fitting code's own function on one thread each, as the local threads do, so the prototypes
are the local fit's bit for bit. A task whose worker dies is run again (it only reads: ``retries`` times);
once the retries are spent the fit stops with ``JobInterrupted``, the feature cache whole, and the next run
recomputes no image.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..fitted.features import FeatureFiles
from ..fitted.prototypes import ClassLevel, ClassRunner, ClassTask, fit_class
from .engines import EngineOptions, ray_result
from .work import FAULT_VARIABLE

__all__ = ["ray_class_runner"]


def ray_class_runner(options: EngineOptions) -> ClassRunner:
    """A ``ClassRunner`` for ``PrototypeExplainer.fit``: each class a Ray task on the cluster Ray is connected
    to (the caller connects, ``engines.connect``), yielding classes as they finish."""

    def run(files: FeatureFiles, tasks: Sequence[ClassTask]) -> Iterator[tuple[ClassTask, dict[str, ClassLevel]]]:
        import ray  # connected by the caller (``engines.connect``), which says when Ray is missing

        remote = ray.remote(num_cpus=1, max_retries=options.retries, retry_exceptions=False)(_class_task)
        shared = ray.put(files)
        fault = os.environ.get(FAULT_VARIABLE)
        pending = {remote.remote(shared, task, fault): task for task in tasks}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                yield pending.pop(done[0]), ray_result(done[0])
        finally:
            for ref in pending:  # a cancel, an error: the classes not finished yet are dropped
                ray.cancel(ref)

    return run


def _class_task(files: FeatureFiles, task: ClassTask, fault: str | None) -> Any:
    """``fit_class`` in a Ray worker. ``fault`` is a test hook (a file path), as ``work.ModelWorker``'s: the
    first task to find the file absent creates it and ends its process, as a machine lost mid-fit would."""
    if fault and not Path(fault).exists():
        Path(fault).write_text("crashed once\n")
        os._exit(1)
    return fit_class(files, task)
