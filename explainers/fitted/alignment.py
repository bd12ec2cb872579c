"""How well prototypes represent the data: seed 000's Tables 1-2 and Figure 2.

- ``alignment_table`` (Table 1): mean cosine between each prototype and the embeddings of
  its class ("class") and of all other classes ("out"), for the classifier columns c_j and
  KMEx with K/C = 1 and K/C = 5.
- ``accuracy_table`` (Table 2): train and test accuracy of the CNN, KMEx, B4 and B234.
- ``projection`` (Figure 2): a 2-D map of train and test embeddings with the classifier
  columns (raw and rescaled to the class-mean norm) and the KMEx prototypes.

``stored_alignment_table``, ``stored_accuracy_table`` and ``stored_projection`` are the same
with the disk tiers of the prototypes (``explainers.fitted.store``: this machine's ``.cache/prototypes/``,
then the files shipped in ``assets/prototypes/``), keyed by the model's and the datasets' fingerprints
and the fitted prototypes' ``digest_``: the Prototypes page's default view of the built-in
model is read, not computed (no UMAP to import and compile, no pass over the data).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from scipy.optimize import least_squares
from scipy.spatial.distance import pdist
from sklearn.neighbors import NearestNeighbors

from ..data.datasets import DatasetSpec, plural
from ..models import BLOCK_NAMES, ModelSpec
from ..runtime.errors import UserInputError
from ..runtime.progress import Progress, report_fraction, scaled
from .checks import model_labels
from .features import LOGITS, FeatureCache, memory_budget
from .prototypes import PROTOTYPES_KIND, PrototypeExplainer, depth_blocks, embeddings
from .store import cache_dir, find, write_atomically

RESULTS_VERSION = 1  # bump when a table or the projection is computed differently: stored ones are then ignored


def mean_cosines(prototypes: np.ndarray, labels: np.ndarray, embeddings: np.ndarray,
                 embedding_labels: np.ndarray) -> tuple[float, float]:
    """(class, out): cosine of every prototype with every embedding, averaged within its class and
    outside it per prototype, then over prototypes (Table 1 of seed 000)."""
    p = prototypes / np.linalg.norm(prototypes, axis=1, keepdims=True).clip(1e-12)
    z = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    cosines = p @ z.T
    same = labels[:, None] == embedding_labels[None, :]
    inside = (cosines * same).sum(1) / same.sum(1).clip(1)
    outside = (cosines * ~same).sum(1) / (~same).sum(1).clip(1)
    return float(inside.mean()), float(outside.mean())


def classifier_prototypes(model: ModelSpec) -> tuple[np.ndarray, np.ndarray]:
    """The columns c_j of the classifier as prototypes (Theorem 1), one per class."""
    weights = model.classifier.weight.detach().cpu().numpy()
    return weights, np.arange(len(weights))


def alignment_table(model: ModelSpec, embeddings: np.ndarray, labels: np.ndarray,
                    kmex: dict[str, PrototypeExplainer]) -> list[dict[str, object]]:
    """Table 1 rows: the classifier columns, then each KMEx model given (e.g. {"KMEx (K/C=1)": ...})."""
    rows = [("CNN classifier columns c_j", *classifier_prototypes(model))]
    rows += [(name, explainer.prototypes_, explainer.prototype_labels_) for name, explainer in kmex.items()]
    table = []
    for name, prototypes, owners in rows:
        inside, outside = mean_cosines(prototypes, owners, embeddings, labels)
        table.append({"prototypes": name, "class": round(inside, 3), "out": round(outside, 3)})
    return table


def accuracies(model: ModelSpec, dataset: DatasetSpec, explainers: dict[str, PrototypeExplainer],
               progress: Progress | None = None, batch_size: int = 128) -> dict[str, float]:
    """Accuracy of the CNN and of each explainer on a dataset, from its feature cache (one pass through
    all the blocks needed, once per model and data, shared with the fits), a chunk of images at a time."""
    needed = sorted({b for e in explainers.values() for b in depth_blocks(e.depth)} | {BLOCK_NAMES[-1]})
    correct = {name: 0 for name in ["CNN", *explainers]}
    labels = model_labels(model, dataset)  # a folder's classes as the model's
    with FeatureCache(model, dataset) as cache:
        cache.ensure([*needed, LOGITS], scaled(progress, 0.0, 0.9), batch_size)
        for chosen, arrays in cache.chunks([*needed, LOGITS], np.arange(len(dataset)), memory_budget() // 8):
            truth = labels[chosen]
            correct["CNN"] += int((arrays[LOGITS].argmax(1) == truth).sum())
            activations = {b: torch.from_numpy(arrays[b]) for b in needed}
            for name, explainer in explainers.items():
                correct[name] += int((explainer.predict_activations(activations) == truth).sum())
            report_fraction(0.9 + 0.1 * (chosen[-1] + 1) / len(dataset),
                            f"scoring {dataset.split} images: {chosen[-1] + 1:,} / {len(dataset):,}", progress)
    return {name: count / len(dataset) for name, count in correct.items()}


def accuracy_table(model: ModelSpec, train: DatasetSpec, test: DatasetSpec,
                   explainers: dict[str, PrototypeExplainer],
                   progress: Progress | None = None) -> list[dict[str, object]]:
    """Table 2 rows: train and test accuracy (percent) of the CNN and of every explainer given."""
    share = len(train) / max(1, len(train) + len(test))  # progress in proportion to the images scored
    on_train = accuracies(model, train, explainers, scaled(progress, 0.0, share))
    on_test = accuracies(model, test, explainers, scaled(progress, share, 1.0))
    return [{"model": name, "train": round(100 * on_train[name], 1), "test": round(100 * on_test[name], 1)}
            for name in on_train]


@dataclass
class Projection:
    """2-D positions for Figure 2. ``*_xy`` arrays are (n, 2); ``*_labels`` the classes."""

    train_xy: np.ndarray
    train_labels: np.ndarray
    train_index: np.ndarray     # position of each point in the training dataset
    test_xy: np.ndarray
    test_labels: np.ndarray
    test_index: np.ndarray
    columns_xy: np.ndarray      # raw c_j of the chosen classes
    rescaled_xy: np.ndarray     # c_j rescaled to the mean norm of the class's embeddings
    kmex_xy: np.ndarray
    kmex_labels: np.ndarray
    classes: np.ndarray
    off_manifold: dict[str, np.ndarray]  # which prototypes were placed by distances, not by UMAP

    def only(self, classes: Sequence[int]) -> "Projection":
        """The points of some of the projected classes, where they are in this layout: a layout of every
        class, fitted once, serves any choice of classes without refitting UMAP (at CUB's 200 classes a
        fit of 6,000 images takes a minute; filtering, milliseconds)."""
        wanted = np.asarray(sorted(int(c) for c in classes))
        missing = np.setdiff1d(wanted, self.classes)
        if len(missing):
            raise UserInputError(f"classes {missing.tolist()} are not in this projection")
        columns = np.isin(self.classes, wanted)
        train, test, kmex = (np.isin(self.train_labels, wanted), np.isin(self.test_labels, wanted),
                             np.isin(self.kmex_labels, wanted))
        return Projection(
            train_xy=self.train_xy[train], train_labels=self.train_labels[train], train_index=self.train_index[train],
            test_xy=self.test_xy[test], test_labels=self.test_labels[test], test_index=self.test_index[test],
            columns_xy=self.columns_xy[columns], rescaled_xy=self.rescaled_xy[columns], kmex_xy=self.kmex_xy[kmex],
            kmex_labels=self.kmex_labels[kmex], classes=self.classes[columns],
            off_manifold={"columns": self.off_manifold["columns"][columns],
                          "rescaled": self.off_manifold["rescaled"][columns], "kmex": self.off_manifold["kmex"][kmex]})


def rescaled_columns(columns: np.ndarray, embeddings: np.ndarray, labels: np.ndarray,
                     classes: Sequence[int] | np.ndarray) -> np.ndarray:
    """c_j scaled to the mean norm of class j's embeddings: the triangles of Figure 2."""
    norms = np.array([np.linalg.norm(embeddings[labels == c], axis=1).mean() for c in classes])
    return columns / np.linalg.norm(columns, axis=1, keepdims=True).clip(1e-12) * norms[:, None]


def place_by_distances(points: np.ndarray, anchors: np.ndarray, anchors_xy: np.ndarray) -> np.ndarray:
    """2-D positions whose distances to the anchors' 2-D positions match their true distances,
    with one global scale taken from the anchors' own high-D vs 2-D distances (least squares)."""
    usable = np.isfinite(anchors).all(1) & np.isfinite(anchors_xy).all(1)  # a class without images has no centre
    if not usable.any():
        raise UserInputError("no class centre to place the prototypes against: the chosen classes have no "
                             "training images; choose classes whose folders hold images")
    anchors, anchors_xy = anchors[usable], anchors_xy[usable]
    high, low = pdist(anchors), pdist(anchors_xy)
    scale = float(np.median(low / high.clip(1e-12))) if len(high) else 1.0
    placed = []
    for point in points:
        target = np.linalg.norm(anchors - point, axis=1) * scale
        if not np.isfinite(target).all():
            raise UserInputError("a prototype to place has no finite coordinates (its class has no training images)")
        nearest = int(target.argmin())
        start = anchors_xy[nearest] + 0.01 * (anchors_xy.mean(0) - anchors_xy[nearest] + 1e-3)
        fit = least_squares(lambda xy: np.linalg.norm(anchors_xy - xy, axis=1) - target, start)
        placed.append(fit.x)
    return np.array(placed).reshape(-1, 2)


def off_manifold(points: np.ndarray, data: np.ndarray, n_neighbors: int = 15, quantile: float = 0.99) -> np.ndarray:
    """True for points farther from every data point than data points are from their
    ``n_neighbors``-th neighbour (the ``quantile`` of that distance): UMAP cannot place them."""
    search = NearestNeighbors(n_neighbors=min(n_neighbors + 1, len(data))).fit(data)
    reach = np.quantile(search.kneighbors(data)[0][:, -1], quantile)
    return search.kneighbors(points, n_neighbors=1)[0][:, 0] > reach


def place_prototypes(points: np.ndarray, reducer: Any, data: np.ndarray, data_labels: np.ndarray,
                     data_xy: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Honest 2-D positions for prototypes, and which of them lie off the data manifold.

    UMAP normalises every neighbourhood to its own scale, so a point far from all data would
    be drawn right beside its nearest neighbours, inside their class. Prototypes among the
    data are mapped by UMAP itself (``transform``); the others are placed by
    ``place_by_distances`` against the class centroids, so a column five class radii away from
    its class is drawn about as far from it as the classes are from each other.
    """
    outside = off_manifold(points, data)
    xy = np.zeros((len(points), 2))
    if (~outside).any():
        xy[~outside] = reducer.transform(points[~outside])
    if outside.any():
        anchors = np.stack([data[data_labels == c].mean(0) for c in classes])
        anchors_xy = np.stack([data_xy[data_labels == c].mean(0) for c in classes])
        xy[outside] = place_by_distances(points[outside], anchors, anchors_xy)
    return xy, outside


def projection(train_z: np.ndarray, train_labels: np.ndarray, test_z: np.ndarray, test_labels: np.ndarray,
               columns: np.ndarray, kmex: PrototypeExplainer, classes: Sequence[int], seed: int = 0,
               n_neighbors: int = 15) -> Projection:
    """Figure 2 of seed 000: UMAP of the chosen classes' train embeddings (test ones mapped with
    ``transform``), prototypes placed honestly by ``place_prototypes``."""
    import umap

    chosen = np.asarray(sorted(classes))
    if len(chosen) < 2:
        raise UserInputError("choose at least two classes to project")
    empty = np.setdiff1d(chosen, train_labels)
    if len(empty):
        raise UserInputError(f"{plural(len(empty), 'chosen class')} "
                             f"({', '.join(str(c) for c in empty.tolist())}) "
                             f"{'has' if len(empty) == 1 else 'have'} no training images to project: "
                             "choose classes whose folders hold images")
    train_keep = np.flatnonzero(np.isin(train_labels, chosen))
    test_keep = np.flatnonzero(np.isin(test_labels, chosen))
    data, data_labels = train_z[train_keep], train_labels[train_keep]
    reducer = umap.UMAP(n_neighbors=min(n_neighbors, len(train_keep) - 1), random_state=seed, n_jobs=1)
    train_xy = reducer.fit_transform(data)
    test_xy = reducer.transform(test_z[test_keep]) if len(test_keep) else np.zeros((0, 2))
    raw = columns[chosen]
    rescaled = rescaled_columns(raw, train_z, train_labels, chosen)
    kmex_keep = np.isin(kmex.prototype_labels_, chosen)
    placed = [place_prototypes(points, reducer, data, data_labels, train_xy, chosen)
              for points in (raw, rescaled, kmex.prototypes_[kmex_keep])]
    return Projection(
        train_xy=train_xy, train_labels=data_labels, train_index=train_keep,
        test_xy=test_xy, test_labels=test_labels[test_keep], test_index=test_keep,
        columns_xy=placed[0][0], rescaled_xy=placed[1][0], kmex_xy=placed[2][0],
        kmex_labels=kmex.prototype_labels_[kmex_keep], classes=chosen,
        off_manifold={"columns": placed[0][1], "rescaled": placed[1][1], "kmex": placed[2][1]},
    )


# --- stored results (the disk cache of the prototype pages) -------------------------------------

def _key(kind: str, *parts: object) -> str:
    text = json.dumps([RESULTS_VERSION, *parts], sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    """A table as JSON, written atomically."""
    write_atomically(path, lambda temporary: temporary.write_text(json.dumps({"rows": rows}, indent=1) + "\n"))


def alignment_models(kmex1: PrototypeExplainer, kmex: PrototypeExplainer) -> dict[str, PrototypeExplainer]:
    """The KMEx rows of Table 1 as the Prototypes page names them: K/C = 1 and the chosen K/C."""
    return {"KMEx (K/C=1)": kmex1} | {f"KMEx (K/C={kmex.per_class})": kmex}


def accuracy_models(kmex: PrototypeExplainer, b4: PrototypeExplainer,
                    b234: PrototypeExplainer) -> dict[str, PrototypeExplainer]:
    """The explainer rows of Table 2 as the Prototypes page names them."""
    return {f"KMEx (K/C={kmex.per_class})": kmex, "B4": b4, "B234": b234}


def alignment_filename(model: ModelSpec, train: DatasetSpec, kmex: dict[str, PrototypeExplainer]) -> str:
    """Table 1's file name in the disk tiers: keyed by the model, the training data and the KMEx explainers."""
    fitted = [(name, e.digest_) for name, e in kmex.items()]
    return _key("table1", model.fingerprint, train.fingerprint, fitted) + ".json"


def accuracy_filename(model: ModelSpec, train: DatasetSpec, test: DatasetSpec,
                      explainers: dict[str, PrototypeExplainer]) -> str:
    """Table 2's file name in the disk tiers: keyed by the model, both splits and the explainers."""
    return _key("table2", model.fingerprint, train.fingerprint, test.fingerprint,
                [(name, e.digest_) for name, e in explainers.items()]) + ".json"


def _stored_rows(filename: str, compute: Callable[[], list[dict[str, object]]], cache: bool) -> list[dict[str, object]]:
    found = find(PROTOTYPES_KIND, filename) if cache else None
    if found is not None:
        try:
            return json.loads(found.read_text())["rows"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable: computed again below
    rows = compute()
    if cache:
        write_rows(cache_dir() / PROTOTYPES_KIND / filename, rows)
    return rows


def _embedder(model: ModelSpec,
              embed: Callable[[DatasetSpec], np.ndarray] | None) -> Callable[[DatasetSpec], np.ndarray]:
    return embed or (lambda dataset: embeddings(model, dataset))


def stored_alignment_table(model: ModelSpec, train: DatasetSpec, kmex: dict[str, PrototypeExplainer],
                           embed: Callable[[DatasetSpec], np.ndarray] | None = None,
                           cache: bool = True) -> list[dict[str, object]]:
    """``alignment_table`` on ``train``'s embeddings (``embed``, default ``embeddings``: only called when not
    stored)."""
    def compute() -> list[dict[str, object]]:
        return alignment_table(model, _embedder(model, embed)(train), model_labels(model, train), kmex)

    return _stored_rows(alignment_filename(model, train, kmex), compute, cache)


def stored_accuracy_table(model: ModelSpec, train: DatasetSpec, test: DatasetSpec,
                          explainers: dict[str, PrototypeExplainer], progress: Progress | None = None,
                          cache: bool = True) -> list[dict[str, object]]:
    """``accuracy_table``, stored."""
    return _stored_rows(accuracy_filename(model, train, test, explainers),
                        lambda: accuracy_table(model, train, test, explainers, progress), cache)


def projection_filename(model: ModelSpec, train: DatasetSpec, test: DatasetSpec, kmex: PrototypeExplainer,
                        classes: Sequence[int], seed: int = 0, n_neighbors: int = 15) -> str:
    """Figure 2's file name in the disk tiers: keyed by the model, both splits, KMEx, the classes and UMAP's
    settings."""
    return _key("figure2", model.fingerprint, train.fingerprint, test.fingerprint, kmex.digest_,
                sorted(int(c) for c in classes), seed, n_neighbors) + ".npz"


def save_projection(placed: Projection, path: Path) -> None:
    """Write a projection as npz (arrays only), atomically."""
    arrays = {f.name: getattr(placed, f.name) for f in fields(Projection) if f.name != "off_manifold"}
    arrays |= {f"off_manifold_{kind}": flags for kind, flags in placed.off_manifold.items()}
    write_atomically(path, lambda temporary: np.savez(temporary, **arrays))


def load_projection(path: Path) -> Projection:
    """A projection written by ``save_projection``."""
    with np.load(path, allow_pickle=False) as data:
        values = {name: data[name] for name in data.files if not name.startswith("off_manifold_")}
        off = {name.removeprefix("off_manifold_"): data[name]
               for name in data.files if name.startswith("off_manifold_")}
    return Projection(**values, off_manifold=off)


def stored_projection(model: ModelSpec, train: DatasetSpec, test: DatasetSpec, kmex: PrototypeExplainer,
                      classes: Sequence[int], seed: int = 0, n_neighbors: int = 15,
                      embed: Callable[[DatasetSpec], np.ndarray] | None = None, cache: bool = True) -> Projection:
    """``projection`` of ``train`` and ``test`` (Figure 2), stored. UMAP with a fixed ``seed`` (and
    ``n_jobs=1``) gives the same layout on every run, so a stored layout is the one a fit would draw."""
    filename = projection_filename(model, train, test, kmex, classes, seed, n_neighbors)
    found = find(PROTOTYPES_KIND, filename) if cache else None
    if found is not None:
        try:
            return load_projection(found)
        except (OSError, ValueError, KeyError, TypeError):
            pass
    embed = _embedder(model, embed)
    columns, _ = classifier_prototypes(model)
    placed = projection(embed(train), model_labels(model, train), embed(test), model_labels(model, test), columns,
                        kmex, classes, seed=seed, n_neighbors=n_neighbors)
    if cache:
        save_projection(placed, cache_dir() / PROTOTYPES_KIND / filename)
    return placed


__all__ = ["Projection", "accuracy_table", "accuracies", "alignment_table", "classifier_prototypes",
           "accuracy_filename", "accuracy_models", "alignment_filename", "alignment_models",
           "load_projection", "mean_cosines", "off_manifold", "place_by_distances", "place_prototypes", "projection",
           "projection_filename", "rescaled_columns", "save_projection", "stored_accuracy_table",
           "stored_alignment_table", "stored_projection", "write_rows"]
