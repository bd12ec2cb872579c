"""An evaluation over a folder in parts: each part (a batch of images) kept on disk as it finishes, and the
parts gathered into one ``Evaluation`` equal to evaluating every image at once.

Why equal: ``evaluate`` already works in chunks of images that share nothing (each chunk's maps come from
its own trace and its perturbed inputs from its own plan; ROAD's noise is seeded by what each input
removes), so parts that start on a chunk's boundary give the same per-image numbers. A part is an ``.npz``
of its arrays with its names, costs and failures as JSON inside: no pickle is ever read back.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluation import Evaluation, EvaluationSettings
from .outputs import write_file
from .work import EvaluationPart

__all__ = ["gather", "load_part", "save_part"]

TOTALS = ("inputs_run", "inputs_requested", "pass_seconds", "imputation_seconds", "metric_seconds", "map_seconds")


def save_part(path: Path, part: EvaluationPart) -> None:
    """Write ``part`` whole to ``path`` (an ``.npz``)."""
    found = part.evaluation
    meta: dict = {"names": part.names, "skipped": part.skipped}
    arrays: dict[str, np.ndarray] = {}
    if found is not None:
        meta.update(model=found.model, block=found.block, methods=found.methods, metrics=list(found.metrics),
                    settings=dataclasses.asdict(found.settings), cost=found.cost, failures=found.failures,
                    **{name: getattr(found, name) for name in TOTALS})
        meta["pixels"] = int(found.pixels)
        arrays.update(targets=found.targets, original=found.original)
        for key, per_method in found.arrays.items():  # every registered metric's arrays, method -> values
            arrays.update({f"{key}/{name}": values for name, values in per_method.items()})
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    write_file(path, lambda temporary: _save(temporary, arrays))


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with path.open("wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def load_part(path: Path) -> EvaluationPart:
    """A part written by ``save_part``."""
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        skipped = [tuple(item) for item in meta["skipped"]]
        if "methods" not in meta:
            return EvaluationPart(meta["names"], None, skipped)
        settings = dict(meta["settings"])
        settings["road_fractions"] = tuple(settings["road_fractions"])
        found = Evaluation(model=meta["model"], block=meta["block"], methods=meta["methods"],
                           metrics=tuple(meta["metrics"]), settings=EvaluationSettings(**settings),
                           targets=data["targets"], original=data["original"], pixels=meta["pixels"],
                           cost=meta["cost"], failures=meta["failures"], **{name: meta[name] for name in TOTALS})
        for name in data.files:
            if "/" in name:
                key, method = name.split("/", 1)
                found.arrays.setdefault(key, {})[method] = data[name]
    return EvaluationPart(meta["names"], found, skipped)


def gather(parts: Sequence[EvaluationPart], methods: Sequence[str]) -> Evaluation | None:
    """One ``Evaluation`` of every image of ``parts`` (in their order), as ``evaluate`` over all of them gives:
    a method that failed on any part is left out of all, with its reason."""
    found = [part.evaluation for part in parts if part.evaluation is not None]
    if not found:
        return None
    first = found[0]
    failures: dict[str, str] = {}
    for one in found:
        failures.update(one.failures)
    names = [name for name in methods if name not in failures and all(name in one.methods for one in found)]
    count = sum(len(one.original) for one in found)
    result = Evaluation(model=first.model, block=first.block, methods=names, metrics=first.metrics,
                        settings=first.settings, targets=np.concatenate([one.targets for one in found]),
                        original=np.concatenate([one.original for one in found]),
                        pixels=first.pixels, failures=failures)
    for key in first.arrays:
        table = result.arrays.setdefault(key, {})
        for name in names:
            if all(name in one.arrays.get(key, {}) for one in found):
                table[name] = np.concatenate([one.arrays[key][name] for one in found])
    for name in names:  # per-image means, weighted by each part's images
        result.cost[name] = {k: sum(one.cost[name][k] * len(one.original) for one in found) / max(1, count)
                             for k in ("seconds", "forwards", "backwards")}
    for name in TOTALS:
        setattr(result, name, type(getattr(first, name))(sum(getattr(one, name) for one in found)))
    return result
