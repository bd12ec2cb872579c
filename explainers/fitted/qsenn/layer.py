"""The Q-SENN layer as an estimator: fitted post hoc or in full mode, then used to predict and explain."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.datasets import DatasetSpec
from ...engine.trace import trace
from ...models import ModelSpec
from ...models.inference import hookless_copy
from ...models.inputs import as_batch
from ...runtime.errors import DatasetError, UserInputError
from ...runtime.maps import upsample
from ...runtime.progress import Progress, report_fraction, scaled
from ...runtime.settings import DeclaredParameters, Setting
from ..checks import LARGEST_SEED, NotFittedError, check_classes, check_dataset, check_model
from ..features import LOGITS, FeatureCache, memory_budget
from ..store import write_atomically
from .solver import quantise, refit_bias, select_features, sparse_baseline, sparse_layer
from .tuning import block_features, fine_tune, full_mode_refusal, tuned_spec

QSENN_MODES = ("post-hoc", "full")
GALLERY = 8  # training images kept per feature for its gallery
STD_FLOOR = 1e-6  # a feature constant on the training set is left unscaled, not divided by 0


def tensor_of(array: np.ndarray) -> torch.Tensor:
    """A fitted array as a tensor of its own (fitted arrays are read-only once shared; torch warns on those)."""
    return torch.tensor(np.asarray(array))


def cached_block_features(model: ModelSpec, dataset: DatasetSpec, block: str, batch_size: int = 128,
                          progress: Progress | None = None, features: FeatureCache | None = None,
                          what: str = "features") -> torch.Tensor:
    """f for every image of ``dataset`` from the feature cache (``explainers.fitted.features``): the block's maps as
    the prototype fits, embeddings and Table 2 keep them (float16), average-pooled in float32, (N, D). The
    cache is computed first where it lacks the block (with the logits, as the embeddings ask, so one pass
    serves both); a model whose prototypes were fitted on ``dataset`` runs no network pass here.
    ``features``: another cache to use (default: this machine's, keyed by the model and the data).

    The features differ from a float32 pass (``block_features``) by float16's rounding of the maps: for
    non-negative (post-ReLU) maps at most 2^-11 of f, plus 2^-25 where a value is subnormal in float16
    (``tests/test_qsenn.py`` checks that bound), far below the spread the standardisation divides by."""
    cache = features if features is not None else FeatureCache(model, dataset)
    try:
        told = None if progress is None else (lambda fraction, text: progress(fraction, f"{what}: {text}"))
        cache.ensure([block, LOGITS], told, batch_size)
        pooled = [arrays[block].mean(axis=(2, 3))
                  for _, arrays in cache.chunks([block], np.arange(len(dataset)), memory_budget() // 8)]
    finally:
        if features is None:
            cache.close()
    return torch.from_numpy(np.concatenate(pooled).astype(np.float32, copy=False))



@dataclass
class FeatureEvidence:
    """One feature of the explained class's row of W_Q, on one image."""

    feature: int  # position among the selected features (a column of W_Q)
    channel: int  # the block's channel it is
    sign: int  # +1 or -1: W_1[c, feature]
    activation: float  # f (average-pooled map)
    standardised: float  # f* = (f - mean) / std
    contribution: float  # alpha * sign * f*
    share: float  # contribution / sum of |contributions| of the row
    map: np.ndarray  # (h, w) the feature map at the block's resolution


@dataclass
class ConceptExplanation:
    """What the Q-SENN layer says about one image."""

    predicted: int
    target: int
    logits: np.ndarray  # (C,) alpha * W_1 f* + b
    bias: float  # b of the target class
    features: list[FeatureEvidence]  # the target class's non-zero features, strongest contribution first
    input_size: tuple[int, int]

    @property
    def positive(self) -> list[FeatureEvidence]:
        return [f for f in self.features if f.sign > 0]

    @property
    def negative(self) -> list[FeatureEvidence]:
        return [f for f in self.features if f.sign < 0]


class QSENN(DeclaredParameters):
    """A Q-SENN layer for a model (scikit-learn style: ``__init__`` stores settings, ``fit`` learns the
    attributes ending in ``_``; ``predict`` before ``fit`` raises ``NotFittedError``).

    Settings: ``n_features`` (n_f*, fewer when the block has fewer channels), ``weights_per_class``
    (n_w = that times the number of classes), ``block`` (whose pooled maps are the features; default the
    model's last), ``mode`` ("post-hoc": frozen backbone; "full": seed 003's iterated fine-tuning on a copy
    of the network), ``seed``, and for full mode ``iterations`` (N), ``epochs`` per iteration, ``lr``
    (first iteration's; times ``lr_decay`` each further one) and ``beta`` (weight of L_div, eq. 2).
    ``path_steps``: lambdas of the sparse layer's path (the paper's 100; fewer here, as the solution kept
    is the last one and the path only warm-starts it).

    Learned: ``features_`` (selected channels of the block, in order of selection), ``sparse_weights_``
    (W_sp), ``weights_`` (W_Q), ``alpha_``, ``epsilon_``, ``bias_``, ``mean_`` and ``std_`` (the
    standardisation of the selected features), ``sparse_bias_``, ``baseline_`` (glm-saga5 over all
    features: weights, bias, mean, std), ``gallery_`` (per feature, the training images that activate it
    most), ``history_`` (per iteration, in full mode), ``timings_`` (seconds per stage) and, in full mode,
    ``network_`` (the fine-tuned copy's ModelSpec).

    The settings but ``block`` (checked against the model's blocks) are declared in ``parameters`` and checked there.
    """

    parameters = (
        Setting("n_features", int, 50, "Features the layer reads (n_f*; fewer when the block has fewer channels)",
                low=1),
        Setting("weights_per_class", int, 5, "Non-zero weights per class on average (n_w / C)", low=1),
        Setting("mode", str, "post-hoc", "Post hoc (frozen backbone) or full Q-SENN (the backbone fine-tuned)",
                choices=QSENN_MODES),
        Setting("seed", int, 0, "Seed of the paths' shuffling and of the fine-tuning", low=0, high=LARGEST_SEED),
        Setting("iterations", int, 3, "Rounds of fine-tuning in full mode (N)", low=1),
        Setting("epochs", int, 2, "Epochs of each round of fine-tuning", low=1),
        Setting("lr", float, 1e-4, "Learning rate of the first round of fine-tuning", low=0.0, high=1e3),
        Setting("lr_decay", float, 0.9, "Factor of the learning rate from one round to the next", low=0.0, high=1e3),
        Setting("beta", float, 0.196, "Weight of the Feature Diversity Loss (eq. 2)", low=0.0, high=1e3),
        Setting("path_steps", int, 30, "Lambdas of the sparse layer's regularisation path", low=2),
        Setting("batch_size", int, 128, "Images per network pass", low=1),
    )

    def __init__(self, n_features: int = 50, weights_per_class: int = 5, block: str | None = None,
                 mode: str = "post-hoc", seed: int = 0, iterations: int = 3, epochs: int = 2, lr: float = 1e-4,
                 lr_decay: float = 0.9, beta: float = 0.196, path_steps: int = 30, batch_size: int = 128) -> None:
        self.n_features = n_features
        self.weights_per_class = weights_per_class
        self.block = block
        self.mode = mode
        self.seed = seed
        self.iterations = iterations
        self.epochs = epochs
        self.lr = lr
        self.lr_decay = lr_decay
        self.beta = beta
        self.path_steps = path_steps
        self.batch_size = batch_size

    # ---- settings ----
    def get_params(self) -> dict[str, object]:
        return {"n_features": self.n_features, "weights_per_class": self.weights_per_class, "block": self.block,
                "mode": self.mode, "seed": self.seed, "iterations": self.iterations, "epochs": self.epochs,
                "lr": self.lr, "lr_decay": self.lr_decay, "beta": self.beta, "path_steps": self.path_steps,
                "batch_size": self.batch_size}

    def __repr__(self) -> str:
        return f"QSENN({', '.join(f'{k}={v!r}' for k, v in self.get_params().items())})"

    def block_for(self, model: ModelSpec) -> str:
        """The block whose features are used: the setting, or the model's last."""
        return self.block or list(model.blocks)[-1]

    def validate(self, model: ModelSpec, dataset: DatasetSpec) -> np.ndarray:
        """Check settings, model and data at the door (``UserInputError`` saying what to do); the labels
        of ``dataset`` as the model's classes."""
        self.validate_parameters()
        check_model(model)
        block = self.block_for(model)
        if block not in model.blocks:
            raise UserInputError(f"{model.name} has no block {block!r} (it has {', '.join(model.blocks)})")
        check_dataset(dataset, "a Q-SENN layer")
        if self.mode == "full":
            refusal = full_mode_refusal(model)
            if refusal:
                raise UserInputError(refusal)
        labels = check_classes(model, dataset, 1, False)
        present = np.unique(labels)
        if len(present) < 2:
            only = model.class_name(int(present[0])) if len(present) else "none"
            raise DatasetError(
                f"A Q-SENN layer needs training images of at least two classes, and {dataset.name} has one "
                f"({only}): its layer is fitted by a softmax over the classes (seed 003, eq. 3-5), which one class "
                "leaves nothing to separate. Add a sub-folder of images for another of the model's classes.")
        return labels

    # ---- fitting ----
    def fit(self, model: ModelSpec, dataset: DatasetSpec, progress: Progress | None = None,
            features: FeatureCache | None = None) -> "QSENN":
        """Fit on ``dataset`` (its classes matched to the model's by name). Progress in stages: features,
        selection, paths, quantisation and, in full mode, N rounds of fine-tuning and recomputing.

        The frozen model's features are read from the feature cache (``cached_block_features``; ``features``:
        another cache than this machine's), so no network pass runs when the prototype fits wrote it."""
        if self.__dict__.get("_frozen"):
            raise AttributeError("this Q-SENN layer is shared (frozen) and cannot be refitted: fit a new QSENN")
        labels = torch.as_tensor(self.validate(model, dataset))
        block = self.block_for(model)
        self.model_ = model
        self.block_ = block
        self.num_classes_ = model.num_classes
        self.n_features_ = min(self.n_features, model.block_shapes[block][0])
        self.n_w_ = min(self.weights_per_class * model.num_classes, self.n_features_ * model.num_classes)
        self.timings_: dict[str, float] = {}
        self.history_: list[dict[str, float]] = []
        full = self.mode == "full"
        # Shares of the progress bar: post hoc, features, the baseline's path and the layer; in full mode the
        # first layer takes 15%, then each round fine-tunes (70% of its share), recomputes the features (15%)
        # and computes the next layer (15%). Measured on digits, so that the time left is roughly fair.
        prep = scaled(progress, 0.0, 0.15 if full else 1.0)
        started = time.perf_counter()
        pooled = cached_block_features(model, dataset, block, self.batch_size, scaled(prep, 0.0, 0.3), features,
                                       "features of the training images")
        self._time("features", started)
        self._baseline(pooled, labels, scaled(prep, 0.3, 0.55))
        self._layer(pooled, labels, scaled(prep, 0.55, 1.0), 0)
        if full:
            network = model
            for round_ in range(self.iterations):
                low = 0.15 + 0.85 * round_ / self.iterations
                stage = scaled(progress, low, low + 0.85 / self.iterations)
                network = self._fine_tune(model, network, dataset, labels, round_, scaled(stage, 0.0, 0.7))
                started = time.perf_counter()
                pooled = block_features(network, dataset, block, self.batch_size, scaled(stage, 0.7, 0.85),
                                        f"round {round_ + 1} of {self.iterations}, recomputing the features")
                self._time("features", started)
                if round_ + 1 < self.iterations:
                    self._layer(pooled, labels, scaled(stage, 0.85, 1.0), round_ + 1)
            self.network_ = network
        self._keep_gallery(pooled)
        report_fraction(1.0, "done", progress)
        return self

    def _time(self, stage: str, started: float) -> None:
        self.timings_[stage] = self.timings_.get(stage, 0.0) + time.perf_counter() - started

    def _baseline(self, features: torch.Tensor, labels: torch.Tensor, progress: Progress | None) -> None:
        """glm-saga5 on every feature of the dense model (the tables' "sparse" row)."""
        started = time.perf_counter()
        mean, std = features.mean(0), features.std(0).clamp_min(STD_FLOOR)
        step = sparse_baseline((features - mean) / std, labels, self.num_classes_, self.n_w_, self.seed,
                               self.path_steps, progress)
        self.baseline_ = {"weights": step.weight.numpy(), "bias": step.bias.numpy(), "mean": mean.numpy(),
                          "std": std.numpy()}
        self._time("baseline path", started)

    def _layer(self, features: torch.Tensor, labels: torch.Tensor, progress: Progress | None, round_: int) -> None:
        """Selection, path and quantisation on the current features (one round of seed 003's loop)."""
        started = time.perf_counter()
        mean, std = features.mean(0), features.std(0).clamp_min(STD_FLOOR)
        standard = (features - mean) / std
        selected = select_features(standard, labels, self.num_classes_, self.n_features_, self.seed,
                                   progress=scaled(progress, 0.0, 0.3))
        self._time("selection", started)
        started = time.perf_counter()
        chosen = standard[:, torch.as_tensor(selected)]
        step = sparse_layer(chosen, labels, self.num_classes_, self.seed, self.path_steps, scaled(progress, 0.3, 0.95))
        self._time("path", started)
        started = time.perf_counter()
        quantised, alpha, epsilon = quantise(step.weight.numpy(), self.n_w_)
        bias = refit_bias(chosen, labels, torch.as_tensor(quantised), step.bias)
        self._time("quantisation", started)
        self.features_ = selected
        index = torch.as_tensor(selected)
        self.mean_, self.std_ = mean[index].numpy(), std[index].numpy()
        self.sparse_weights_, self.sparse_bias_ = step.weight.numpy(), step.bias.numpy()
        self.weights_, self.alpha_, self.epsilon_ = quantised, alpha, epsilon
        self.bias_ = bias.numpy()
        logits = chosen @ torch.as_tensor(quantised).T + bias
        self.history_.append({"round": round_ + 1, "train accuracy": float((logits.argmax(1) == labels).float().mean()),
                              "alpha": alpha})

    def _fine_tune(self, model: ModelSpec, network: ModelSpec, dataset: DatasetSpec, labels: torch.Tensor,
                   round_: int, progress: Progress | None) -> ModelSpec:
        """One round of full mode's fine-tuning (``tuning.fine_tune``) with the current layer fixed, at
        lr * lr_decay ** round; the shared model is never touched (the first round copies it)."""
        started = time.perf_counter()
        lr = self.lr * self.lr_decay ** round_
        layer = {"selected": self.features_, "mean": self.mean_, "std": self.std_, "weights": self.weights_,
                 "bias": self.bias_}
        network = fine_tune(model, network, dataset, labels, self.block_, layer, lr, self.epochs, self.batch_size,
                            self.beta, self.seed + round_, round_, progress)
        self.history_[-1]["lr"] = lr
        self._time("fine-tuning", started)
        return network

    def _keep_gallery(self, features: torch.Tensor) -> None:
        """Per selected feature, the training images with the highest pooled activation (its concept gallery)."""
        chosen = features[:, tensor_of(self.features_)]
        count = min(GALLERY, len(chosen))
        values, indices = chosen.topk(count, dim=0)
        self.gallery_ = indices.T.numpy().astype(np.int64)
        self.gallery_values_ = values.T.numpy()

    # ---- using ----
    def check_fitted(self) -> None:
        """``NotFittedError`` unless ``fit`` (or ``load``) has run."""
        if not hasattr(self, "weights_"):
            raise NotFittedError("this QSENN is not fitted yet: call fit(model, dataset) first")

    @property
    def network(self) -> ModelSpec:
        """The network the layer reads: the fine-tuned copy in full mode, the model itself post hoc."""
        self.check_fitted()
        network = getattr(self, "network_", None) or getattr(self, "model_", None)
        if network is None:
            raise NotFittedError("no model attached: use the QSENN that fit_qsenn returned")
        return network

    def standardised(self, pooled: torch.Tensor) -> torch.Tensor:
        """f* of pooled block features (N, D): the selected ones, standardised."""
        self.check_fitted()
        return (pooled[:, tensor_of(self.features_)] - tensor_of(self.mean_)) / tensor_of(self.std_)

    def logits_of(self, pooled: torch.Tensor) -> torch.Tensor:
        """alpha * W_1 f* + b for pooled block features (N, D)."""
        return self.standardised(pooled) @ tensor_of(self.weights_).T + tensor_of(self.bias_)

    def _maps(self, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(block maps (N, D, h, w), the network's own logits) of images, batched, without gradients."""
        network = self.network
        inputs = as_batch(network, images)
        maps, logits = [], []
        for start in range(0, len(inputs), self.batch_size):
            with torch.inference_mode():
                result = trace(network, inputs[start:start + self.batch_size], blocks=[self.block_])
            maps.append(result.activations[self.block_].cpu())  # the layer's arrays are numpy, on the CPU
            logits.append(result.logits.cpu())
        return torch.cat(maps), torch.cat(logits)

    def decision_function(self, images: object) -> np.ndarray:
        """The ternary layer's logits (N, C) of a PIL image, a list of them or a transformed batch."""
        maps, _ = self._maps(images)
        return self.logits_of(maps.mean(dim=(2, 3))).numpy()

    def predict(self, images: object) -> np.ndarray:
        """Class ids by the ternary layer."""
        return self.decision_function(images).argmax(axis=1)

    def explain(self, image: object, target: int | None = None) -> ConceptExplanation:
        """The target class's (default: the predicted one's) features on one image: sign, activation map,
        contribution alpha * W_1[c, j] * f*_j and its share of the row's total |contribution|."""
        maps, _ = self._maps(image)
        maps = maps[:1]
        pooled = maps.mean(dim=(2, 3))
        standard = self.standardised(pooled)[0]
        logits = (standard @ tensor_of(self.weights_).T + tensor_of(self.bias_)).numpy()
        predicted = int(logits.argmax())
        chosen = predicted if target is None else self.network.check_target(target)
        row = self.weights_[chosen]
        used = np.flatnonzero(row)
        contributions = row[used] * standard.numpy()[used]
        total = float(np.abs(contributions).sum()) or 1.0
        evidence = [FeatureEvidence(int(j), int(self.features_[j]), int(np.sign(row[j])),
                                    float(pooled[0, self.features_[j]]), float(standard[j]), float(c), float(c) / total,
                                    maps[0, self.features_[j]].numpy())
                    for j, c in zip(used, contributions)]
        evidence.sort(key=lambda e: -abs(e.contribution))
        return ConceptExplanation(predicted, chosen, logits, float(self.bias_[chosen]), evidence,
                                  self.network.input_size)

    def feature_map(self, evidence: FeatureEvidence) -> np.ndarray:
        """A feature's map upsampled (bilinear, as every map here) to the input's size."""
        return upsample(torch.as_tensor(evidence.map)[None], self.network.input_size)[0].numpy()

    # ---- persistence (npz: arrays and JSON, no pickle) ----
    ARRAYS = ("features_", "sparse_weights_", "sparse_bias_", "weights_", "bias_", "mean_", "std_", "gallery_",
              "gallery_values_")

    def save(self, path: Path) -> None:
        self.check_fitted()
        arrays: dict[str, Any] = {name: np.asarray(getattr(self, name)) for name in self.ARRAYS}
        arrays.update({f"baseline_{k}": np.asarray(v) for k, v in self.baseline_.items()})
        if getattr(self, "network_", None) is not None:
            arrays.update({f"net/{k}": v.detach().cpu().numpy() for k, v in self.network_.net.state_dict().items()})
        meta = {"settings": self.get_params(), "block": self.block_, "num_classes": self.num_classes_,
                "n_features": self.n_features_, "n_w": self.n_w_, "alpha": self.alpha_, "epsilon": self.epsilon_,
                "history": self.history_, "timings": self.timings_}
        arrays["meta"] = np.array(json.dumps(meta))
        write_atomically(path, lambda temporary: np.savez(temporary, **arrays))

    @classmethod
    def load(cls, path: Path, model: ModelSpec) -> "QSENN":
        """A layer saved by ``save``, for ``model`` (the one it was fitted on: its key says so)."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            layer = cls(**meta["settings"])
            for name in cls.ARRAYS:
                setattr(layer, name, data[name])
            layer.baseline_ = {k: data[f"baseline_{k}"] for k in ("weights", "bias", "mean", "std")}
            state = {k[4:]: torch.from_numpy(data[k].copy()) for k in data.files if k.startswith("net/")}
        layer.model_, layer.block_, layer.num_classes_ = model, meta["block"], meta["num_classes"]
        layer.n_features_, layer.n_w_ = meta["n_features"], meta["n_w"]
        layer.alpha_, layer.epsilon_ = meta["alpha"], meta["epsilon"]
        layer.history_, layer.timings_ = meta["history"], meta["timings"]
        if state:
            net = hookless_copy(model.net)
            net.load_state_dict(state)
            layer.network_ = tuned_spec(model, net)
        return layer

    @property
    def digest_(self) -> str:
        """A hash of what was fitted: keys anything computed from it (the page's tables)."""
        self.check_fitted()
        digest = hashlib.sha256(json.dumps(self.get_params(), sort_keys=True).encode())
        for name in ("features_", "weights_", "bias_", "mean_", "std_"):
            digest.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        if getattr(self, "network_", None) is not None:
            digest.update(self.network_.fingerprint.encode())
        return digest.hexdigest()[:16]

    @property
    def nbytes_(self) -> int:
        self.check_fitted()
        arrays = [np.asarray(getattr(self, name)) for name in self.ARRAYS] + list(self.baseline_.values())
        size = int(sum(a.nbytes for a in arrays))
        if getattr(self, "network_", None) is not None:
            size += sum(p.numel() * p.element_size() for p in self.network_.net.state_dict().values())
        return size

    def freeze(self) -> "QSENN":
        """Read-only, for sharing between sessions: arrays not writable, attributes not settable, no refit."""
        self.check_fitted()
        for name in self.ARRAYS:
            getattr(self, name).setflags(write=False)
        for array in self.baseline_.values():
            array.setflags(write=False)
        object.__setattr__(self, "_frozen", True)
        return self

    def __setattr__(self, name: str, value: object) -> None:
        if self.__dict__.get("_frozen"):
            raise AttributeError(f"this Q-SENN layer is shared (frozen): {name} cannot be set; fit a new QSENN")
        object.__setattr__(self, name, value)

