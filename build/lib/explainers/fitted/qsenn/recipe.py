"""How the store finds, fits, keeps and shares a Q-SENN layer: its key, its file name, ``fit_qsenn``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ...data.datasets import DatasetSpec
from ...models import ModelSpec
from ...runtime.progress import Progress
from .. import store
from ..checks import mapping_note
from ..store import Key, made, plain_value
from .layer import QSENN

QSENN_KIND = "qsenn"  # the store's kind and the disk tier's folder: .cache/qsenn/
QSENN_VERSION = 2  # 2: post-hoc features read from the float16 feature cache (layers differ in the last bits)


class QSENNRecipe:
    """A ``QSENN`` with the settings of ``layer`` fitted for ``model`` on ``dataset``: what ``explainers.fitted.store``
    needs to find it (memory, then ``.cache/qsenn/``), fit it, keep and share it."""

    def __init__(self, model: ModelSpec, dataset: DatasetSpec, layer: QSENN) -> None:
        layer.validate(model, dataset)
        self.model, self.dataset = model, dataset
        self.settings = layer.get_params() | {"block": layer.block_for(model)}
        data = dataset.fingerprint + mapping_note(model, dataset)
        self.key = Key.of(QSENN_KIND, model.fingerprint, data, version=QSENN_VERSION,
                          **{name: plain_value(value) for name, value in self.settings.items()})
        text = json.dumps([QSENN_VERSION, model.fingerprint, data, self.settings], sort_keys=True, default=plain_value)
        self.filename = f"{layer.mode}-{hashlib.sha256(text.encode()).hexdigest()[:16]}.npz"
        what = "full Q-SENN (fine-tuning a copy of the network)" if layer.mode == "full" else "post-hoc Q-SENN layer"
        self.title = f"Fitting the {what} (once; kept for every session)"

    def fit(self, progress: Progress | None) -> QSENN:
        return QSENN(**self.settings).fit(self.model, self.dataset, progress)  # type: ignore[arg-type]

    def load(self, path: Path) -> QSENN:
        return QSENN.load(path, self.model)

    @staticmethod
    def save(value: QSENN, path: Path) -> None:
        value.save(path)

    @staticmethod
    def share(value: QSENN) -> QSENN:
        return value.freeze()

    @staticmethod
    def nbytes(value: QSENN) -> int:
        return value.nbytes_


def fit_qsenn(model: ModelSpec, dataset: DatasetSpec, progress: Progress | None = None, cache: bool = True,
              **settings: object) -> QSENN:
    """Fit (or read from ``.cache/qsenn/``) a Q-SENN layer of ``model`` on ``dataset`` with ``settings``
    (those of ``QSENN``). Not kept in memory: ``explainers.fitted.store.STORE.get(QSENNRecipe(...))`` is the
    shared, single-flight way the page uses."""
    return made(QSENNRecipe(model, dataset, QSENN(**settings)), progress, cache)  # type: ignore[arg-type]


def shared_qsenn(model: ModelSpec, dataset: DatasetSpec, progress: Progress | None = None,
                 **settings: object) -> QSENN:
    """The Q-SENN layer of ``model`` on ``dataset`` with ``settings`` from the process's one store: in memory,
    else from ``.cache/qsenn/`` or the shipped ``assets/qsenn/``, else fitted now (once however many sessions
    ask at once; each waiter sees the progress). Shared and frozen."""
    return store.STORE.get(QSENNRecipe(model, dataset, QSENN(**settings)), progress)  # type: ignore[arg-type]
