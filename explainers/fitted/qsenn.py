"""Q-SENN: a sparse, ternary decision layer over a few shared features (seed 003).

"Q-SENN: Quantized Self-Explaining Neural Networks" (Norrenbrock, Rudolph & Rosenhahn, 2024),
built on the SLDD-Model (Norrenbrock et al., 2022):

- Features f: the chosen block's feature maps M, average-pooled (the dense layer's input for a
  GAP + linear head). They are standardised with the training mean and standard deviation
  before any fitting, as the paper's code does (glm-saga assumes standardised input), so the
  layer reads f* = (f[selected] - mean) / std.
- Feature selection (SLDD-Model): n_f* features chosen in a supervised way, in the order they
  enter a group-lasso regularisation path of the multinomial (softmax) GLM over all features.
- The sparse layer W_sp: the elastic-net regularisation path of the multinomial GLM over the n_f*
  selected features (glm-saga, the paper's solver), and its lowest-regularisation solution.
- Quantisation (eq. 3-5): epsilon = the n_w-th largest |W_sp| (n_w = 5 * n_classes), alpha =
  the mean of the kept magnitudes, W_Q in {-alpha, 0, +alpha}; logits = alpha * W_1 f* + b.
- Full Q-SENN (Figure 2, "Q-SENN" paragraph): N iterations of (layer as above; fine-tune the
  backbone with the layer fixed, with the Feature Diversity Loss, eq. 2) at a decaying learning
  rate, on a copy of the network.
- diversity@5 (eq. 6): the local diversity of the five highest-weighted feature maps of the
  predicted class.

Why glm-saga rather than scikit-learn's elastic-net path: the layer is a *multinomial* GLM (softmax
cross-entropy, the loss the network is trained with); scikit-learn's ``enet_path`` fits least
squares to the one-hot targets, another model with other sparsity patterns, and its logistic
elastic net has no path function. glm-saga is what the paper uses, pure PyTorch (0.1.2, pinned),
and its SAGA solver (``train_saga``) takes a warm start, so the path is walked here one lambda at a
time: each step is one job of the compute thread, the progress bar moves per lambda, and a path
stops as soon as it has what it is walked for (n_f* features; more than n_w weights).
"""
from __future__ import annotations

import hashlib
import json
import math
import numbers
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from threading import Lock
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from glm_saga.elasticnet import IndexedTensorDataset, maximum_reg, train_saga
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import DatasetSpec
from ..engine.trace import trace
from ..models.inference import hookless_copy
from ..models.inputs import as_batch
from ..models.loading import ModelSpec
from ..runtime import compute
from ..runtime.errors import DatasetError, UserInputError
from ..runtime.hooks import tapped
from ..runtime.maps import upsample
from ..runtime.progress import Progress, report_fraction, scaled
from .checks import NotFittedError, check_classes, mapping_note, model_labels
from .features import LOGITS, FeatureCache, memory_budget
from .prototypes.depths import image_batches
from .store import STORE, Key, made, plain_value, write_atomically

__all__ = ["CACHE_VERSION", "ConceptExplanation", "FeatureEvidence", "MODES", "NotFittedError", "QSENN",
           "QSENNRecipe", "concept_table", "diversity_at_5", "diversity_per_image", "feature_diversity_loss",
           "feature_order", "fit_qsenn", "full_mode_refusal", "quantise", "shared_qsenn"]

# glm-saga calls softmax without a dim (its only output besides what we silence with its logger).
warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax", category=UserWarning)

MODES = ("post-hoc", "full")
KIND = "qsenn"  # the store's kind and the disk tier's folder: .cache/qsenn/
CACHE_VERSION = 2  # 2: post-hoc features read from the float16 feature cache (layers differ in the last bits)
TOP_K = 5  # diversity@5
GALLERY = 8  # training images kept per feature for its gallery
SELECTION_ALPHA = 0.8  # elastic-net mixing of the SLDD-Model's group-lasso selection (its code's value)
LAYER_ALPHA = 0.99  # elastic-net mixing of the sparse layer's path (the Q-SENN code's glm-saga call)
SELECTION_RANGE = 1e-2  # the selection path runs from lambda_max down to this fraction of it (it stops early)
LAYER_RANGE = 1e-3  # the layer's path ends at this fraction of lambda_max (glm-saga's epsilon in the paper)
SAGA_TOLERANCE = 1e-4
SAGA_LOOKBEHIND = 5
SAGA_MAX_EPOCHS = 2000
SAGA_BATCH = 256
SAGA_LR = 0.1
# Full mode fine-tunes every weight of the backbone N times: on a CPU that is minutes for the digits
# network (0.7 M parameters) and hours for an ImageNet ResNet. Above this size it needs a GPU.
FULL_MODE_CPU_PARAMETERS = 3_000_000
STD_FLOOR = 1e-6  # a feature constant on the training set is left unscaled, not divided by 0


# --- eq. 3-5: quantisation ------------------------------------------------------------------------

def quantise(sparse_weights: np.ndarray, n_w: int) -> tuple[np.ndarray, float, float]:
    """Eq. 3-5: (W_Q, alpha, epsilon) of ``sparse_weights`` (W_sp, classes x features) keeping ``n_w``.

    epsilon = sort(|W_sp|)_{n_w} (descending, eq. 3); the entries kept are those with |W_sp| >= epsilon,
    alpha = the mean of their magnitudes (eq. 4), and W_Q = +alpha where W_sp >= epsilon, -alpha where
    W_sp <= -epsilon, 0 elsewhere (eq. 5).

    Ties: eq. 5 would keep every entry equal to epsilon in magnitude, possibly more than n_w. Exactly
    n_w are kept here: entries tied at epsilon are taken in row-major order (lower class first, then
    lower feature), a stable sort of the magnitudes. Zeros are never kept (a zero has no sign): when
    W_sp has fewer than n_w non-zeros, all of them are kept and epsilon is the smallest of them.
    """
    weights = np.asarray(sparse_weights, dtype=np.float64)
    magnitudes = np.abs(weights).ravel()
    keep = min(int(n_w), int(np.count_nonzero(magnitudes)))
    if keep < 1:
        raise UserInputError("the sparse layer has no non-zero weight to quantise: the regularisation path "
                             "ended at zero (too few or constant features)")
    order = np.argsort(-magnitudes, kind="stable")[:keep]
    alpha = float(magnitudes[order].mean())
    quantised = np.zeros(weights.size, dtype=np.float32)
    quantised[order] = np.sign(weights.ravel()[order]) * alpha
    return quantised.reshape(weights.shape), alpha, float(magnitudes[order[-1]])


# --- eq. 6: diversity@5 ---------------------------------------------------------------------------

def _spatial_softmax(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(2).float()
    return flat.softmax(dim=2)


def _top_features(weights: torch.Tensor, maps: torch.Tensor, classes: torch.Tensor, k: int) -> torch.Tensor:
    """(N, k) indices of the k highest-weighted features of each image's class; ties in weight (every
    feature of a ternary row weighs alpha) go to the feature more active on that image (its mean map)."""
    activation = maps.flatten(2).mean(dim=2)  # (N, F)
    by_activation = activation.argsort(dim=1, descending=True, stable=True)
    rows = weights[classes]  # (N, F)
    weight_in_that_order = rows.gather(1, by_activation)
    by_weight = weight_in_that_order.argsort(dim=1, descending=True, stable=True)
    return by_activation.gather(1, by_weight)[:, :k]


def diversity_per_image(feature_maps: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray,
                        classes: torch.Tensor | np.ndarray | Sequence[int], k: int = TOP_K) -> np.ndarray:
    """Eq. 6 for each image: the k feature maps M^k with the highest weight for the image's class
    (``classes``: the predicted ones), each turned into S^k by a softmax over its pixels, then
    sum over pixels of max(S^1, ..., S^k) / k. In [1/k, 1]: 1/k when the k maps are one map,
    1 when they peak in k different places.

    Images whose class has fewer than k non-zero weights get NaN (the paper's code leaves them out).
    ``feature_maps``: (N, F, H, W); ``weights``: (C, F), the layer reading those F features.
    """
    maps = torch.as_tensor(np.asarray(feature_maps) if not isinstance(feature_maps, torch.Tensor) else feature_maps)
    layer = (weights if isinstance(weights, torch.Tensor) else torch.tensor(np.asarray(weights))).float()
    chosen = torch.as_tensor(np.asarray(classes), dtype=torch.long)
    if maps.dim() != 4 or layer.shape[1] != maps.shape[1]:
        raise ValueError(f"feature maps (N, F, H, W) and weights (C, F) must share F: {tuple(maps.shape)}, "
                         f"{tuple(layer.shape)}")
    top = _top_features(layer, maps, chosen, k)  # (N, k)
    softmaxed = _spatial_softmax(maps)  # (N, F, HW)
    picked = softmaxed.gather(1, top[:, :, None].expand(-1, -1, softmaxed.shape[2]))
    values = picked.amax(dim=1).sum(dim=1) / k
    enough = (layer != 0).sum(dim=1)[chosen] >= k
    return torch.where(enough, values, torch.full_like(values, float("nan"))).numpy()


def diversity_at_5(feature_maps: torch.Tensor | np.ndarray, weights: torch.Tensor | np.ndarray,
                   classes: torch.Tensor | np.ndarray | Sequence[int], k: int = TOP_K) -> float:
    """diversity@5 (eq. 6) of a layer on a batch: the mean of ``diversity_per_image`` over the images whose
    class has at least k non-zero weights (NaN if none has)."""
    values = diversity_per_image(feature_maps, weights, classes, k)
    kept = values[~np.isnan(values)]
    return float(kept.mean()) if len(kept) else float("nan")


# --- eq. 2: the Feature Diversity Loss -------------------------------------------------------------

def feature_diversity_loss(maps: torch.Tensor, weights: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """L_div of the SLDD-Model (used in eq. 2 with weight beta): minus the batch mean of
    sum over pixels of max over features of S_k * (avg_k / max avg) * |w_c,k| / ||w_c||,
    with S_k the spatial softmax of map k, avg_k its mean and c the predicted class. It rewards the
    features a class uses for being active in different places (high where eq. 6 is high), while the
    average-preserving scale keeps a feature that is off from counting as a peak."""
    relevant = weights.abs()[logits.argmax(dim=1)]
    relevant = relevant / (relevant.norm(dim=1, keepdim=True) + 1e-5)
    averages = maps.mean(dim=(2, 3))
    scale = averages / averages.amax(dim=1, keepdim=True).clamp_min(1e-6)
    softmaxed = maps.flatten(2).softmax(dim=2) * scale[..., None]
    weighted = softmaxed * relevant[..., None]
    return -weighted.amax(dim=1).sum() / maps.shape[0]


# --- the regularisation paths (glm-saga) -----------------------------------------------------------

def _tensor(array: np.ndarray) -> torch.Tensor:
    """A fitted array as a tensor of its own (fitted arrays are read-only once shared; torch warns on those)."""
    return torch.tensor(np.asarray(array))


def _silent(*_args: object) -> None:
    """glm-saga's logger: it prints "did not converge" to stdout otherwise."""


@dataclass
class _PathStep:
    lam: float
    weight: torch.Tensor  # (C, F)
    bias: torch.Tensor  # (C,)


def _saga_step(linear: nn.Linear, loader: DataLoader, lam: float, alpha: float, group: bool, state: dict | None,
               n_classes: int) -> dict:
    return train_saga(linear, loader, SAGA_LR, SAGA_MAX_EPOCHS, lam, alpha, group=group, state=state,
                      n_ex=len(loader.dataset), n_classes=n_classes, tol=SAGA_TOLERANCE,
                      lookbehind=SAGA_LOOKBEHIND, logger=_silent)


def regularisation_path(features: torch.Tensor, labels: torch.Tensor, n_classes: int, alpha: float, group: bool,
                        steps: int, end: float, seed: int, progress: Progress | None = None,
                        what: str = "path") -> Iterator[_PathStep]:
    """glm-saga's regularisation path of the multinomial GLM on standardised ``features``: lambda from
    lambda_max (where every weight is zero; glm-saga's ``maximum_reg`` / alpha) down to ``end`` * lambda_max
    in ``steps`` log-spaced values, each solved by SAGA from the previous solution (warm start).
    ``group``: the group lasso over features (columns), as the selection uses. The caller may stop
    iterating at any step; each step is one batch job of the compute thread."""
    linear = nn.Linear(features.shape[1], n_classes)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    loader = DataLoader(IndexedTensorDataset(features, labels), batch_size=SAGA_BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    top = maximum_reg(features, labels, group=group) / max(alpha, 1e-3)
    lambdas = torch.logspace(math.log10(top), math.log10(top * end), steps).tolist()
    state = None
    for i, lam in enumerate(lambdas):
        state = compute.run_batch(_saga_step, linear, loader, lam, alpha, group, state, n_classes)
        report_fraction((i + 1) / steps, f"{what}: lambda {i + 1} of {steps}", progress)
        yield _PathStep(lam, linear.weight.detach().clone(), linear.bias.detach().clone())


def select_features(features: torch.Tensor, labels: torch.Tensor, n_classes: int, n_keep: int, seed: int,
                    steps: int = 100, progress: Progress | None = None) -> np.ndarray:
    """The SLDD-Model's supervised feature selection: the ``n_keep`` features (indices into the columns
    of ``features``) in the order they enter the group-lasso path (whole columns at a time); features
    entering at the same lambda are ranked by their column norm there. The path stops when enough
    have entered; if it ends first, the rest are the largest columns of its last solution."""
    chosen: list[int] = []
    last = None
    for step in regularisation_path(features, labels, n_classes, SELECTION_ALPHA, True, steps, SELECTION_RANGE,
                                    seed, progress, "selecting features"):
        norms = step.weight.norm(dim=0)
        last = norms
        entering = [int(j) for j in norms.argsort(descending=True, stable=True) if norms[j] > 0 and int(j) not in chosen]
        chosen += entering[:n_keep - len(chosen)]
        if len(chosen) >= n_keep:
            break
    if len(chosen) < n_keep and last is not None:
        chosen += [int(j) for j in last.argsort(descending=True, stable=True) if int(j) not in chosen][:n_keep - len(chosen)]
    return np.array(chosen, dtype=np.int64)


def sparse_layer(features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int, steps: int,
                 progress: Progress | None = None) -> _PathStep:
    """W_sp and its bias: the lowest-regularisation solution of the elastic-net path (the paper quantises
    that one: its small weights overfit, its large ones generalise; Figure 3)."""
    steps_taken = list(regularisation_path(features, labels, n_classes, LAYER_ALPHA, False, steps, LAYER_RANGE, seed,
                                           progress, "the sparse layer's path"))
    return steps_taken[-1]


def sparse_baseline(features: torch.Tensor, labels: torch.Tensor, n_classes: int, n_w: int, seed: int, steps: int,
                    progress: Progress | None = None) -> _PathStep:
    """"glm-saga5" of the paper's tables: glm-saga on every feature of the dense model (no selection), the
    densest solution of the path with at most n_w non-zero weights (5 per class on average)."""
    best = None
    for step in regularisation_path(features, labels, n_classes, LAYER_ALPHA, False, steps, LAYER_RANGE, seed,
                                    progress, "glm-saga5's path"):
        if int((step.weight != 0).sum()) > n_w:
            break
        best = step
    if best is None:  # even the first step past lambda_max has more than n_w: take it (cannot happen in practice)
        best = step
    return best


def refit_bias(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """The bias b of logits = W_Q f* + b that minimises the training cross-entropy with W_Q fixed (b is free
    in the paper's C(f) = W_Q f + b; the path's bias belongs to the unquantised W_sp). Convex in b: L-BFGS."""
    bias = start.clone().requires_grad_(True)
    scores = (features @ weights.T).detach()
    optimiser = torch.optim.LBFGS([bias], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = F.cross_entropy(scores + bias, labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return bias.detach()


# --- features -------------------------------------------------------------------------------------

def _tuned_spec(model: ModelSpec, net: nn.Module) -> ModelSpec:
    """A ModelSpec for a fine-tuned copy of ``model``'s network: same blocks (by module path), transform
    and classes, so ``trace`` runs it like any model. Its own final layer is stale (Q-SENN replaces it)."""
    blocks = {name: net.get_submodule(path) for name, path in model.block_paths.items()}
    classifier = net.get_submodule(next(name for name, module in model.net.named_modules()
                                        if module is model.classifier))
    return replace(model, name=f"{model.name} (Q-SENN fine-tuned)", net=net, blocks=blocks, classifier=classifier,
                   _fingerprint=None, _inference_net=None, _lazy=Lock())


def block_features(model: ModelSpec, dataset: DatasetSpec, block: str, batch_size: int = 128,
                   progress: Progress | None = None, what: str = "features") -> torch.Tensor:
    """f for every image of ``dataset``: the block's feature maps average-pooled, (N, D), in batches
    through the compute thread, without gradients; on the CPU, where glm-saga fits the layer. Full mode's
    fine-tuned copies need this pass (a copy's features change every round); the frozen model's are read
    from the feature cache (``cached_block_features``)."""
    out = []
    for start, inputs in image_batches(model, dataset, batch_size):
        with torch.inference_mode():
            out.append(trace(model, inputs, blocks=[block]).activations[block].mean(dim=(2, 3)).cpu())
        done = start + len(inputs)
        report_fraction(done / len(dataset), f"{what}: {done:,} / {len(dataset):,} images", progress)
    return torch.cat(out).float()


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


def full_mode_refusal(model: ModelSpec) -> str | None:
    """Why full Q-SENN cannot run for ``model`` on this machine, or None when it can."""
    parameters = sum(p.numel() for p in model.net.parameters())
    if model.device.type != "cpu" or parameters <= FULL_MODE_CPU_PARAMETERS:
        return None
    return (f"Full Q-SENN fine-tunes every weight of the backbone, several times: {model.name} has "
            f"{parameters / 1e6:.1f} M parameters, which would take hours on the CPU it runs on (no GPU here). "
            f"Use the post-hoc mode (frozen backbone, minutes), or run on a machine with a GPU.")


# --- the estimator --------------------------------------------------------------------------------

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


class QSENN:
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
    """

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
        for name, low in (("n_features", 1), ("weights_per_class", 1), ("seed", 0), ("iterations", 1),
                          ("epochs", 1), ("path_steps", 2), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or not low <= value < 2 ** 31:
                raise UserInputError(f"{name} must be a whole number of at least {low}, not {value!r}")
        for name in ("lr", "lr_decay", "beta"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or isinstance(value, bool) or not 0 <= value < 1e3:
                raise UserInputError(f"{name} must be a non-negative number, not {value!r}")
        if self.mode not in MODES:
            raise UserInputError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if not isinstance(model, ModelSpec):
            raise UserInputError(f"model must be a ModelSpec (explainers.load_model gives one), not "
                                 f"{type(model).__name__}")
        block = self.block_for(model)
        if block not in model.blocks:
            raise UserInputError(f"{model.name} has no block {block!r} (it has {', '.join(model.blocks)})")
        if not isinstance(dataset, DatasetSpec):
            raise UserInputError(f"dataset must be a DatasetSpec (explainers.load_dataset gives one), not "
                                 f"{type(dataset).__name__}")
        if len(dataset) == 0:
            raise DatasetError(f"{dataset.name} has no {dataset.split} images to fit a Q-SENN layer on")
        if self.mode == "full":
            refusal = full_mode_refusal(model)
            if refusal:
                raise UserInputError(refusal)
        return check_classes(model, dataset, 1, False)

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
        features = cached_block_features(model, dataset, block, self.batch_size, scaled(prep, 0.0, 0.3), features,
                                         "features of the training images")
        self._time("features", started)
        self._baseline(features, labels, scaled(prep, 0.3, 0.55))
        self._layer(features, labels, scaled(prep, 0.55, 1.0), 0)
        if full:
            network = model
            for round_ in range(self.iterations):
                low = 0.15 + 0.85 * round_ / self.iterations
                stage = scaled(progress, low, low + 0.85 / self.iterations)
                network = self._fine_tune(model, network, dataset, labels, round_, scaled(stage, 0.0, 0.7))
                started = time.perf_counter()
                features = block_features(network, dataset, block, self.batch_size, scaled(stage, 0.7, 0.85),
                                          f"round {round_ + 1} of {self.iterations}, recomputing the features")
                self._time("features", started)
                if round_ + 1 < self.iterations:
                    self._layer(features, labels, scaled(stage, 0.85, 1.0), round_ + 1)
            self.network_ = network
        self._keep_gallery(features)
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
        """Train every weight of a copy of the backbone for ``epochs`` with the current layer fixed, on
        L = CE + beta * L_div (eq. 2), at lr * lr_decay ** round. The shared model is never touched: the
        first round copies it, later rounds go on training that private copy."""
        started = time.perf_counter()
        if network is model:
            net = hookless_copy(model.net)
            network = _tuned_spec(model, net)
        net = network.net
        device = model.device  # the copy is where the model is: a GPU when there is one
        net.requires_grad_(True)
        optimiser = torch.optim.Adam(net.parameters(), lr=self.lr * self.lr_decay ** round_)
        layer = {"selected": torch.as_tensor(self.features_, device=device),
                 "mean": torch.as_tensor(self.mean_, device=device), "std": torch.as_tensor(self.std_, device=device),
                 "weights": torch.as_tensor(self.weights_, device=device),
                 "bias": torch.as_tensor(self.bias_, device=device)}
        generator = torch.Generator().manual_seed(self.seed + round_)
        steps = self.epochs * math.ceil(len(dataset) / self.batch_size)
        done = 0
        for epoch in range(self.epochs):
            order = torch.randperm(len(dataset), generator=generator)
            for start in range(0, len(order), self.batch_size):
                index = order[start:start + self.batch_size]
                inputs = torch.stack([model.transform(dataset[int(i)][0]) for i in index])
                loss = compute.run_batch(_training_step, net, network.blocks[self.block_], inputs.to(device),
                                         labels[index].to(device), layer, optimiser, self.beta)
                done += 1
                report_fraction(done / steps, f"round {round_ + 1}, fine-tuning: epoch {epoch + 1} of {self.epochs}, "
                                              f"loss {loss:.3f}", progress)
        net.eval().requires_grad_(False)
        self.history_[-1]["lr"] = self.lr * self.lr_decay ** round_
        self._time("fine-tuning", started)
        return network

    def _keep_gallery(self, features: torch.Tensor) -> None:
        """Per selected feature, the training images with the highest pooled activation (its concept gallery)."""
        chosen = features[:, _tensor(self.features_)]
        count = min(GALLERY, len(chosen))
        values, indices = chosen.topk(count, dim=0)
        self.gallery_ = indices.T.numpy().astype(np.int64)
        self.gallery_values_ = values.T.numpy()

    # ---- using ----
    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise NotFittedError("this QSENN is not fitted yet: call fit(model, dataset) first")

    @property
    def network(self) -> ModelSpec:
        """The network the layer reads: the fine-tuned copy in full mode, the model itself post hoc."""
        self._check_fitted()
        network = getattr(self, "network_", None) or getattr(self, "model_", None)
        if network is None:
            raise NotFittedError("no model attached: use the QSENN that fit_qsenn returned")
        return network

    def standardised(self, pooled: torch.Tensor) -> torch.Tensor:
        """f* of pooled block features (N, D): the selected ones, standardised."""
        self._check_fitted()
        return (pooled[:, _tensor(self.features_)] - _tensor(self.mean_)) / _tensor(self.std_)

    def logits_of(self, pooled: torch.Tensor) -> torch.Tensor:
        """alpha * W_1 f* + b for pooled block features (N, D)."""
        return self.standardised(pooled) @ _tensor(self.weights_).T + _tensor(self.bias_)

    def _maps(self, images: object) -> tuple[torch.Tensor, torch.Tensor]:
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
        logits = (standard @ _tensor(self.weights_).T + _tensor(self.bias_)).numpy()
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
        self._check_fitted()
        arrays = {name: np.asarray(getattr(self, name)) for name in self.ARRAYS}
        arrays.update({f"baseline_{k}": np.asarray(v) for k, v in self.baseline_.items()})
        if getattr(self, "network_", None) is not None:
            arrays.update({f"net/{k}": v.detach().cpu().numpy() for k, v in self.network_.net.state_dict().items()})
        meta = {"settings": self.get_params(), "block": self.block_, "num_classes": self.num_classes_,
                "n_features": self.n_features_, "n_w": self.n_w_, "alpha": self.alpha_, "epsilon": self.epsilon_,
                "history": self.history_, "timings": self.timings_}
        write_atomically(path, lambda temporary: np.savez(temporary, meta=np.array(json.dumps(meta)), **arrays))

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
            layer.network_ = _tuned_spec(model, net)
        return layer

    @property
    def digest_(self) -> str:
        """A hash of what was fitted: keys anything computed from it (the page's tables)."""
        self._check_fitted()
        digest = hashlib.sha256(json.dumps(self.get_params(), sort_keys=True).encode())
        for name in ("features_", "weights_", "bias_", "mean_", "std_"):
            digest.update(np.ascontiguousarray(getattr(self, name)).tobytes())
        if getattr(self, "network_", None) is not None:
            digest.update(self.network_.fingerprint.encode())
        return digest.hexdigest()[:16]

    @property
    def nbytes_(self) -> int:
        self._check_fitted()
        arrays = [np.asarray(getattr(self, name)) for name in self.ARRAYS] + list(self.baseline_.values())
        size = int(sum(a.nbytes for a in arrays))
        if getattr(self, "network_", None) is not None:
            size += sum(p.numel() * p.element_size() for p in self.network_.net.state_dict().values())
        return size

    def freeze(self) -> "QSENN":
        """Read-only, for sharing between sessions: arrays not writable, attributes not settable, no refit."""
        self._check_fitted()
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


def _training_step(net: nn.Module, block: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                   layer: dict[str, torch.Tensor], optimiser: torch.optim.Optimizer, beta: float) -> float:
    """One step of full Q-SENN's fine-tuning (a job of the compute thread): the block's maps of the copy,
    the fixed ternary layer on their standardised selected features, CE + beta * L_div, one optimiser step."""
    captured: dict[str, torch.Tensor] = {}

    def record(output: torch.Tensor) -> torch.Tensor:
        captured["maps"] = output
        return output.clone()  # downstream in-place operations must not change what was recorded

    net.train()
    with torch.enable_grad(), tapped({block: record}, private=True):
        net(inputs)
        maps = captured["maps"][:, layer["selected"]]
        standard = (maps.mean(dim=(2, 3)) - layer["mean"]) / layer["std"]
        logits = standard @ layer["weights"].T + layer["bias"]
        loss = F.cross_entropy(logits, labels) + beta * feature_diversity_loss(maps, layer["weights"], logits)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    net.eval()
    return float(loss.detach())


# --- the table (seed 003's Table 1 for this model) --------------------------------------------------

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
                     lambda f: ((f - _tensor(base["mean"])) / _tensor(base["std"]))
                     @ _tensor(base["weights"]).T + _tensor(base["bias"]), False, False))
    if layer.mode == "post-hoc":
        rows.append(_Row(f"W_sp ({layer.n_features_} selected features, before quantisation)", layer.sparse_weights_,
                         lambda f: layer.standardised(f) @ _tensor(layer.sparse_weights_).T
                         + _tensor(layer.sparse_bias_), True, False))
    rows.append(_Row(f"Q-SENN ({layer.mode}, ternary)", layer.weights_, layer.logits_of, True, layer.mode == "full"))
    return rows


def concept_table(layer: QSENN, splits: dict[str, DatasetSpec], progress: Progress | None = None) -> list[dict]:
    """Seed 003's Table 1 for this model: per layer (the model's dense layer where the features are its GAP
    input, glm-saga5, W_sp post hoc, the ternary Q-SENN layer), accuracy on each split, features per class,
    total features used and diversity@5 (eq. 6) on each split, over the maps of the features it reads."""
    layer._check_fitted()
    model = layer.model_
    rows = _layers(layer, model)
    correct = {row.name: {split: 0 for split in splits} for row in rows}
    diversity: dict[str, dict[str, list[np.ndarray]]] = {row.name: {split: [] for split in splits} for row in rows}
    selected = _tensor(layer.features_)
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


# --- the store ------------------------------------------------------------------------------------

class QSENNRecipe:
    """A ``QSENN`` with the settings of ``layer`` fitted for ``model`` on ``dataset``: what ``explainers.fitted.store``
    needs to find it (memory, then ``.cache/qsenn/``), fit it, keep and share it."""

    def __init__(self, model: ModelSpec, dataset: DatasetSpec, layer: QSENN) -> None:
        layer.validate(model, dataset)
        self.model, self.dataset = model, dataset
        self.settings = layer.get_params() | {"block": layer.block_for(model)}
        data = dataset.fingerprint + mapping_note(model, dataset)
        self.key = Key.of(KIND, model.fingerprint, data, version=CACHE_VERSION,
                          **{name: plain_value(value) for name, value in self.settings.items()})
        text = json.dumps([CACHE_VERSION, model.fingerprint, data, self.settings], sort_keys=True, default=plain_value)
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
    return STORE.get(QSENNRecipe(model, dataset, QSENN(**settings)), progress)  # type: ignore[arg-type]
