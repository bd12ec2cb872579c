"""The dataset-scale jobs behind the ``protoscope`` command: explain, evaluate, fit and sanity over whole
folders, on this process or on Ray (``EngineOptions``), resumable and safe to stop.

Every job lists its images, skips those its output folder already holds whole (and counts them), runs the
rest in batches on its engine and writes each result whole as it arrives (``outputs``); a progress
listener hears the fraction done with the time left. A file that cannot be read is listed and left out;
everything else is done.
"""
from __future__ import annotations

import csv
import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data import load_dataset
from ..display import evaluation_curves_png, maps_sheet, sanity_curves_png
from ..evaluation import METRICS, EvaluationSettings, insertion_blur, randomization_check
from ..fitted import fit_prototypes, store
from ..fitted.features import FeatureCache
from ..methods import method_info
from ..models import load_model
from ..runtime import ImageError, UserInputError
from ..runtime.progress import Progress, report
from .classes import ray_class_runner
from .engines import EngineOptions, connect, disconnect, open_engine
from .evaluations import gather, load_part, save_part
from .features import feature_names, ray_feature_pass
from .outputs import OutputFolder, write_bytes, write_file, write_text
from .sources import ImageRef, list_images, load_ref
from .work import ExplainedImage

__all__ = ["CSV_COLUMNS", "JobReport", "evaluate_folder", "explain_folder", "fit_folder", "sanity_folder"]

CSV_COLUMNS = ("image", "class", "class_name", "score", "method", "block", "forwards", "backwards", "passes",
               "seconds")
EXPLAIN_BATCH = 16  # images per shared trace
WRITERS = 2  # threads drawing and writing an explain job's files (local engine)
WRITE_AHEAD = 2  # batches whose files may still be in flight while the next is explained
EVALUATE_BATCH = 48  # images per part: a multiple of evaluate's chunk sizes of 1, 2, 3, 4, 6, 8, 12 and 16


@dataclass
class JobReport:
    """What a job did: images ``done`` now, ``resumed`` (complete before, skipped), ``skipped`` (unreadable:
    name, why), and the files it wrote last (``outputs``)."""

    done: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.done:,} images done"]
        if self.resumed:
            parts.append(f"{self.resumed:,} complete from an earlier run (skipped)")
        if self.skipped:
            listed = "; ".join(f"{name} ({why})" for name, why in self.skipped[:5])
            more = f"; and {len(self.skipped) - 5} more" if len(self.skipped) > 5 else ""
            parts.append(f"{len(self.skipped):,} unreadable, left out: {listed}{more}")
        return ", ".join(parts)


def checked_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` by registry name; an unknown one is refused with the known ones listed."""
    if not methods:
        raise UserInputError("choose at least one method (--methods gradcam,cam,...)")
    return [method_info(name).name for name in methods]


def batched(refs: Sequence[ImageRef], size: int) -> list[list[ImageRef]]:
    return [list(refs[i:i + size]) for i in range(0, len(refs), size)]


def _csv_text(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _write_skipped(folder: OutputFolder, skipped: list[tuple[str, str]]) -> None:
    text = "".join(f"{name}\t{why}\n" for name, why in skipped)
    write_file(folder.path("skipped.tsv"), lambda path: path.write_text("image\twhy\n" + text))


def explain_folder(model: str, sources: Sequence[str], methods: Sequence[str], out: Path, block: str = "B4",
                   target: int | None = None, options: EngineOptions | None = None, overwrite: bool = False,
                   batch_size: int = EXPLAIN_BATCH, cmap: str = "jet", split: str = "test",
                   progress: Progress | None = None) -> JobReport:
    """Explain every image of ``sources`` with ``methods`` at ``block``: per image ``overlays/<name>.png`` (the
    sheet), ``maps/<name>/<method>.npy`` (raw maps at the block's resolution) and ``rows/<name>.csv``, written
    last, so an image is complete when its rows exist; ``explanations.csv`` gathers every row (``CSV_COLUMNS``)."""
    options = options or EngineOptions()
    methods = checked_methods(methods)
    refs = list_images(sources, split)
    folder = OutputFolder(out, {"command": "explain", "model": model, "methods": methods, "block": block,
                                "target": target, "cmap": cmap}, ("overlays", "maps", "rows"), overwrite)
    todo = [ref for ref in refs if folder.replace or not folder.path("rows", f"{ref.name}.csv").is_file()]
    result = JobReport(resumed=len(refs) - len(todo))
    # In this process the sheets are drawn and every file written by WRITERS threads while the next batch is
    # explained (PIL's drawing and zlib, numpy and the file system release the GIL); Ray's actors draw
    # their own sheets, in parallel already.
    render = options.engine == "ray"
    batches = [(chunk, methods, block, target, cmap, render) for chunk in batched(todo, batch_size)]
    report(result.resumed, len(refs), f"{result.resumed:,} of {len(refs):,} images", progress)
    if not batches:
        folder.create()
    else:
        with open_engine(model, options) as engine, ThreadPoolExecutor(WRITERS, "protoscope-write") as writers:
            folder.create()
            pending: deque[tuple[list[Future], int]] = deque()
            try:
                for _, (explained, skipped) in engine.run("explain", batches):
                    pending.append(([writers.submit(_write_explained, folder, one) for one in explained],
                                    len(explained)))
                    result.skipped.extend(skipped)
                    while len(pending) > WRITE_AHEAD:  # memory stays flat: at most WRITE_AHEAD batches in flight
                        _written(pending.popleft(), result, len(refs), progress)
                while pending:
                    _written(pending.popleft(), result, len(refs), progress)
            except BaseException:
                wait([future for futures, _ in pending for future in futures])  # what was explained is kept
                raise
    rows = [row for ref in refs if folder.path("rows", f"{ref.name}.csv").is_file()
            for row in csv.DictReader(folder.path("rows", f"{ref.name}.csv").open())]
    write_file(folder.path("explanations.csv"), lambda path: path.write_text(_csv_text(rows)))
    _write_skipped(folder, result.skipped)
    result.outputs = [folder.path("explanations.csv")]
    return result


def _write_explained(folder: OutputFolder, one: ExplainedImage) -> None:
    """One image's files: its sheet, its raw maps, then its rows (last: the image is complete when they exist)."""
    write_bytes(folder.path("overlays", f"{one.name}.png"), one.png())
    for method, raw in one.maps.items():
        write_bytes(folder.path("maps", one.name, f"{method}.npy"), _npy_bytes(raw))
    write_text(folder.path("rows", f"{one.name}.csv"), _csv_text(one.rows))


def _written(batch: tuple[list[Future], int], result: JobReport, total: int, progress: Progress | None) -> None:
    """Wait for one batch's files (an error writing them is raised here), then count and report it."""
    futures, count = batch
    for future in futures:
        future.result()
    result.done += count
    finished = result.resumed + result.done + len(result.skipped)
    report(finished, total, f"{finished:,} of {total:,} images", progress)


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, dtype=np.float32))
    return buffer.getvalue()


def evaluate_folder(model: str, sources: Sequence[str], methods: Sequence[str], out: Path, block: str = "B4",
                    metrics: Sequence[str] | None = None, settings: EvaluationSettings | None = None,
                    options: EngineOptions | None = None, overwrite: bool = False, batch_size: int = EVALUATE_BATCH,
                    split: str = "test", progress: Progress | None = None) -> JobReport:
    """The Evaluation page's tables and curves over every image of ``sources`` (each explained for its
    predicted class): ``confidence.csv``, ``auc.csv``, ``road.csv``, ``timing.csv``, ``curves.csv``,
    ``road_curves.csv``, ``curves.png``, ``road_curves.png``. Each batch's scores are kept in ``parts/`` as
    they finish, so a stopped run resumes; the tables are those of ``evaluate`` over all the images."""
    options = options or EngineOptions()
    methods = checked_methods(methods)
    metrics = list(METRICS) if metrics is None else list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise UserInputError(f"unknown metric {', '.join(unknown) or '(none)'}: choose among {', '.join(METRICS)}")
    settings = settings or EvaluationSettings()
    refs = list_images(sources, split)
    if settings.blur_sigma is None and "insertion" in metrics:
        settings = _measured_blur(model, refs, settings, options)
    folder = OutputFolder(out, {"command": "evaluate", "model": model, "methods": methods, "block": block,
                                "metrics": list(metrics), "settings": repr(settings), "batch": batch_size,
                                "images": [ref.name for ref in refs]}, ("parts",), overwrite)
    batches = batched(refs, batch_size)
    paths = [folder.path("parts", f"{i:06d}.npz") for i in range(len(batches))]
    todo = [i for i, path in enumerate(paths) if folder.replace or not path.is_file()]
    result = JobReport(resumed=sum(len(batches[i]) for i in range(len(batches)) if i not in todo))
    report(result.resumed, len(refs), f"{result.resumed:,} of {len(refs):,} images", progress)
    if not todo:
        folder.create()
    else:
        with open_engine(model, options) as engine:
            folder.create()
            work = [(batches[i], methods, block, tuple(metrics), settings) for i in todo]
            for index, part in engine.run("evaluate", work):
                save_part(paths[todo[index]], part)
                result.done += len(part.names)
                finished = result.resumed + sum(len(batches[i]) for i in todo[:index + 1])
                report(min(finished, len(refs)), len(refs), f"{result.done + result.resumed:,} of {len(refs):,} images",
                       progress)
    parts = [load_part(path) for path in paths]
    result.resumed = sum(len(part.names) for i, part in enumerate(parts) if i not in todo)  # readable ones
    result.skipped = [item for part in parts for item in part.skipped]
    found = gather(parts, methods)
    if found is None:
        raise UserInputError("none of the images could be read: " + JobReport(skipped=result.skipped).summary())
    tables: dict[str, pd.DataFrame] = {"timing": found.timing_table()}
    if "confidence" in found.metrics:
        tables["confidence"] = found.confidence_table()
    if {"deletion", "insertion"} & set(found.metrics):
        tables["auc"] = found.auc_table()
        tables["curves"] = found.curves()
    if "road" in found.metrics:
        tables["road"] = found.road_table()
        tables["road_curves"] = found.road_curves()
    for name, table in tables.items():
        write_text(folder.path(f"{name}.csv"), table.to_csv(index=False))
        result.outputs.append(folder.path(f"{name}.csv"))
    for name, column in (("curves", "curve"), ("road_curves", "order")):
        if name in tables and len(tables[name]):
            png = evaluation_curves_png(tables[name], column, {m: method_info(m).label for m in found.methods},
                                        title=f"{found.model} at {block}, {found.images:,} images")
            write_bytes(folder.path(f"{name}.png"), png)
            result.outputs.append(folder.path(f"{name}.png"))
    if found.failures:
        text = "".join(f"{name}\t{why}\n" for name, why in found.failures.items())
        write_file(folder.path("failures.tsv"), lambda p: p.write_text("method\twhy\n" + text))
    _write_skipped(folder, result.skipped)
    return result


def fit_folder(model: str, data: str, depth: str = "B234", per_class: int = 5, seed: int = 0,
               options: EngineOptions | None = None, progress: Progress | None = None) -> tuple[JobReport, Path]:
    """Fit the prototype explainer of ``model`` on ``data``'s training split (a folder of class sub-folders or
    a dataset name) into the store's disk cache (``.cache/prototypes/``), where the pages read it. On Ray, the
    feature pass runs there first (``ray_feature_pass``), into the feature cache the fit reads, then each class's
    k-means and own-class projection as a Ray task (``classes.ray_class_runner``), on the cached features."""
    options = options or EngineOptions()
    spec = load_model(model, device=options.device if options.engine == "local" else "cpu")
    dataset = load_dataset(data, "train")
    result = JobReport(skipped=list(dataset.skipped))
    names = feature_names(spec, depth)
    cache = FeatureCache(spec, dataset)
    result.resumed = min(cache.done(name) for name in names)
    if options.engine != "ray":
        result.done = len(dataset) - result.resumed
        fit_prototypes(spec, dataset, depth, per_class, seed, progress=progress)
    else:
        started = connect(options.address, options.timeout)  # one connection for both stages
        try:
            result.done = ray_feature_pass(model, data, "train", cache, names, options,
                                           _stage(progress, 0.0, 0.5, "feature pass on Ray: "))
            fit_prototypes(spec, dataset, depth, per_class, seed, progress=_stage(progress, 0.5, 1.0),
                           class_runner=ray_class_runner(options))
        finally:
            if started:
                disconnect()
    written = sorted((store.cache_dir() / "prototypes").glob(f"{depth}-k{per_class}-*.npz"),
                     key=lambda path: path.stat().st_mtime)
    result.outputs = written[-1:]  # the file just written or read (the newest of these settings)
    return result, cache.folder


def _stage(progress: Progress | None, low: float, high: float, prefix: str = "") -> Progress | None:
    """``progress`` for one stage of a job: fractions [0, 1] to [low, high], messages after ``prefix``."""
    if progress is None:
        return None
    listener = progress
    return lambda fraction, text: listener(low + (high - low) * fraction, prefix + text)


BLUR_SAMPLE = 256  # images the insertion blur is measured on, evenly spread over the folder


def _measured_blur(model: str, refs: Sequence[ImageRef], settings: EvaluationSettings,
                   options: EngineOptions) -> EvaluationSettings:
    """``settings`` with the insertion blur measured once for the whole folder (``insertion_blur``: the
    evaluation's own rule), on at most ``BLUR_SAMPLE`` of its images, evenly spread: every batch, on
    any engine, then blurs alike, and a resumed job measures the same sigma (its settings are its key)."""
    step = max(1, len(refs) // BLUR_SAMPLE)
    images = []
    for ref in list(refs)[::step][:BLUR_SAMPLE]:
        try:
            images.append(load_ref(ref))
        except ImageError:
            continue  # listed as skipped by the job itself
    if not images:
        return settings
    choice = insertion_blur(load_model(model, device=options.device), images, padding=settings.blur_padding)
    return replace(settings, blur_sigma=choice.sigma)


def sanity_folder(model: str, sources: Sequence[str], methods: Sequence[str], out: Path, block: str = "B4",
                  mode: str = "cascading", device: str | None = None, overwrite: bool = False, split: str = "test",
                  progress: Progress | None = None) -> JobReport:
    """Adebayo et al.'s randomisation check of ``methods`` over the images of ``sources`` (this process): the
    table (``sanity.csv``), per image (``sanity_per_image.csv``), the curves (``sanity_curves.png``), the first
    image's maps per step (``sanity_maps.png``) and the flags in words (``flags.txt``)."""
    methods = checked_methods(methods)
    refs = list_images(sources, split)
    folder = OutputFolder(out, {"command": "sanity", "model": model, "methods": methods, "block": block,
                                "mode": mode, "images": [ref.name for ref in refs]}, (), overwrite).create()
    result = JobReport()
    if folder.path("flags.txt").is_file():
        result.resumed = len(refs)
        return result
    images, names = [], []
    for ref in refs:
        try:
            images.append(load_ref(ref))
            names.append(ref.name)
        except UserInputError as error:
            result.skipped.append((ref.name, str(error)))
    if not images:
        raise UserInputError("none of the images could be read: " + result.summary())
    spec = load_model(model, device=device)
    found = randomization_check(spec, images, methods, block, mode=mode, progress=progress)
    per_image = found.per_image.assign(name=[names[int(i)] for i in found.per_image["image"]])
    write_file(folder.path("sanity.csv"), lambda p: found.table.to_csv(p, index=False))
    write_file(folder.path("sanity_per_image.csv"), lambda p: per_image.to_csv(p, index=False))
    write_file(folder.path("sanity_curves.png"), lambda p: p.write_bytes(sanity_curves_png(found)))
    write_file(folder.path("sanity_maps.png"), lambda p: maps_sheet(found, images[0]).save(p, format="PNG"))
    _write_skipped(folder, result.skipped)
    flags = "".join(f"{text}\n" for text in found.flags().values()) or "no method was flagged\n"
    write_file(folder.path("flags.txt"), lambda p: p.write_text(flags))
    result.done = len(images)
    result.outputs = [folder.path("sanity.csv"), folder.path("flags.txt")]
    return result
