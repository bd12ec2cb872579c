"""Seed 003's Table 1 for a model (every layer's accuracy, sparsity and diversity@5) and the order of W_Q's columns."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ...data.datasets import DatasetSpec
from ...engine.trace import trace
from ...models import ModelSpec
from ...runtime.errors import UserInputError
from ...runtime.progress import Progress, report_fraction
from ..checks import model_labels
from ..prototypes.depths import image_batches
from ..store import cache_dir, find, write_atomically
from .diversity import diversity_per_image
from .layer import QSENN, tensor_of
from .recipe import QSENN_KIND

# Splits beyond train that Table 1 covers where a dataset has them: "test_clean", a spurious-correlation set's test
# images without the correlated mark (digits_marked).
CONCEPT_SPLITS = ("test", "test_clean")
TABLE_VERSION = 1  # a change to what concept_table computes: stored tables of earlier versions are not found


@dataclass
class _Row:
    name: str
    weights: np.ndarray  # (C, F) over the maps it reads
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None  # from the block's pooled maps (None: the model's own)
    selected: bool  # reads the selected features (else every channel of the block)
    tuned: bool  # reads the fine-tuned copy (full mode's Q-SENN)


def _layers(layer: QSENN, model: ModelSpec) -> list[_Row]:
    """The rows of the table: each layer, what it reads and how it computes its logits."""
    base = layer.baseline_
    rows: list = []
    if layer.block_ == list(model.blocks)[-1] and model.gap_head:
        weight = model.classifier.weight.detach().cpu().numpy()
        rows.append(_Row("Dense (the model's own layer)", weight, None, False, False))
    rows.append(_Row(f"glm-saga5 (sparse, all {base['weights'].shape[1]} features)", base["weights"],
                     lambda f: ((f - tensor_of(base["mean"])) / tensor_of(base["std"]))
                     @ tensor_of(base["weights"]).T + tensor_of(base["bias"]), False, False))
    if layer.mode == "post-hoc":
        rows.append(_Row(f"W_sp ({layer.n_features_} selected features, before quantisation)", layer.sparse_weights_,
                         lambda f: layer.standardised(f) @ tensor_of(layer.sparse_weights_).T
                         + tensor_of(layer.sparse_bias_), True, False))
    rows.append(_Row(f"Q-SENN ({layer.mode}, ternary)", layer.weights_, layer.logits_of, True, layer.mode == "full"))
    return rows


def concept_table(layer: QSENN, splits: dict[str, DatasetSpec], progress: Progress | None = None) -> list[dict]:
    """Seed 003's Table 1 for this model: per layer (the model's dense layer where the features are its GAP
    input, glm-saga5, W_sp post hoc, the ternary Q-SENN layer), accuracy on each split, features per class,
    total features used and diversity@5 (eq. 6) on each split, over the maps of the features it reads."""
    layer.check_fitted()
    model = layer.model_
    rows = _layers(layer, model)
    correct = {row.name: {split: 0 for split in splits} for row in rows}
    diversity: dict[str, dict[str, list[np.ndarray]]] = {row.name: {split: [] for split in splits} for row in rows}
    selected = tensor_of(layer.features_)
    total = sum(len(d) for d in splits.values())
    done = 0
    for split, dataset in splits.items():
        labels = torch.as_tensor(model_labels(model, dataset))
        for start, inputs in image_batches(model, dataset, layer.batch_size):
            truth = labels[start:start + len(inputs)]
            with torch.inference_mode():
                original = trace(model, inputs, blocks=[layer.block_])
                tuned = (trace(layer.network_, inputs, blocks=[layer.block_])
                         if getattr(layer, "network_", None) is not None else original)
            for row in rows:
                result = tuned if row.tuned else original
                maps = result.activations[layer.block_].cpu()  # the layers' arrays are numpy, on the CPU
                logits = result.logits.cpu() if row.logits_of is None else row.logits_of(maps.mean(dim=(2, 3)))
                predicted = logits.argmax(dim=1)
                correct[row.name][split] += int((predicted == truth).sum())
                read = maps[:, selected] if row.selected else maps
                diversity[row.name][split].append(diversity_per_image(read, row.weights, predicted))
            done += len(inputs)
            report_fraction(done / total, f"evaluating every layer: {done:,} / {total:,} images", progress)
    table = []
    for row in rows:
        nonzero = np.asarray(row.weights) != 0
        line: dict[str, object] = {"layer": row.name}
        for split, dataset in splits.items():
            line[f"{split} accuracy (%)"] = round(100 * correct[row.name][split] / max(len(dataset), 1), 2)
        line["features per class"] = round(float(nonzero.sum(axis=1).mean()), 2)
        line["total features"] = int(nonzero.any(axis=0).sum())
        for split in splits:
            values = np.concatenate(diversity[row.name][split])
            kept = values[~np.isnan(values)]
            line[f"diversity@5 {split} (%)"] = round(100 * float(kept.mean()), 1) if len(kept) else None
        table.append(line)
    return table


def concept_table_filename(layer: QSENN, splits: dict[str, DatasetSpec]) -> str:
    """Table 1's file name in Q-SENN's disk tiers: keyed by the layer's digest and each split's fingerprint."""
    parts = [TABLE_VERSION, layer.digest_, [(name, dataset.fingerprint) for name, dataset in splits.items()]]
    return f"table1-{hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]}.json"


def stored_concept_table(layer: QSENN, splits: dict[str, DatasetSpec], progress: Progress | None = None,
                         cache: bool = True) -> list[dict]:
    """``concept_table``, read from ``.cache/qsenn/`` or the shipped ``assets/qsenn/`` when it is there (a shipped
    layer ships its table: no pass over the data on a fresh server), else computed and kept in ``.cache/qsenn/``,
    so it is computed once per machine, not per session."""
    filename = concept_table_filename(layer, splits)
    found = find(QSENN_KIND, filename) if cache else None
    if found is not None:
        try:
            return json.loads(found.read_text())["rows"]
        except (OSError, ValueError, KeyError):  # unreadable: computed again and rewritten
            pass
    rows = concept_table(layer, splits, progress)
    if cache:
        write_concept_table(cache_dir() / QSENN_KIND / filename, rows)
    return rows


def write_concept_table(path: Path, rows: list[dict]) -> None:
    """Table 1's rows as JSON, written atomically."""
    text = json.dumps({"rows": rows}, indent=1) + "\n"

    def write(temporary: Path) -> None:
        temporary.write_text(text)

    write_atomically(path, write)


def feature_order(weights: np.ndarray, by: str = "selection") -> np.ndarray:
    """An order of the columns of W_Q for the class x feature picture: "selection" (as selected),
    "classes" (grouped by the first class they count for, positive before negative), "shared" (used by the
    most classes first)."""
    weights = np.asarray(weights)
    columns = np.arange(weights.shape[1])
    if by == "selection":
        return columns
    if by == "classes":
        first = np.where((weights != 0).any(axis=0), (weights != 0).argmax(axis=0), weights.shape[0])
        sign = -np.sign(weights[np.minimum(first, weights.shape[0] - 1), columns])
        return np.lexsort((columns, sign, first))
    if by == "shared":
        return np.lexsort((columns, -(weights != 0).sum(axis=0)))
    raise UserInputError(f"order features by 'selection', 'classes' or 'shared', not {by!r}")
