"""Q-SENN's solvers: glm-saga's paths, the feature selection, W_sp and glm-saga5, quantisation (eq. 3-5), the bias."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from glm_saga.elasticnet import IndexedTensorDataset, maximum_reg, train_saga
from torch import nn
from torch.utils.data import DataLoader

from ...runtime import compute
from ...runtime.errors import UserInputError
from ...runtime.progress import Progress, report_fraction

# glm-saga calls softmax without a dim (its only output besides what we silence with its logger).
warnings.filterwarnings("ignore", message="Implicit dimension choice for softmax", category=UserWarning)

SELECTION_ALPHA = 0.8  # elastic-net mixing of the SLDD-Model's group-lasso selection (its code's value)
LAYER_ALPHA = 0.99  # elastic-net mixing of the sparse layer's path (the Q-SENN code's glm-saga call)
SELECTION_RANGE = 1e-2  # the selection path runs from lambda_max down to this fraction of it (it stops early)
LAYER_RANGE = 1e-3  # the layer's path ends at this fraction of lambda_max (glm-saga's epsilon in the paper)
SAGA_TOLERANCE = 1e-4
SAGA_LOOKBEHIND = 5
SAGA_MAX_EPOCHS = 2000
SAGA_BATCH = 256
SAGA_LR = 0.1


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


# --- the regularisation paths (glm-saga) -----------------------------------------------------------

def _silent(*_args: object) -> None:
    """glm-saga's logger: it prints "did not converge" to stdout otherwise."""


@dataclass
class PathStep:
    """One solution of a regularisation path: its lambda, the weights and the bias."""

    lam: float
    weight: torch.Tensor  # (C, F)
    bias: torch.Tensor  # (C,)


def _saga_step(linear: nn.Linear, loader: DataLoader, lam: float, alpha: float, group: bool, state: dict | None,
               n_classes: int) -> dict:
    return train_saga(linear, loader, SAGA_LR, SAGA_MAX_EPOCHS, lam, alpha, group=group, state=state,
                      n_ex=len(loader.dataset),  # type: ignore[arg-type]  # a TensorDataset: sized
                      n_classes=n_classes, tol=SAGA_TOLERANCE, lookbehind=SAGA_LOOKBEHIND, logger=_silent)


def regularisation_path(features: torch.Tensor, labels: torch.Tensor, n_classes: int, alpha: float, group: bool,
                        steps: int, end: float, seed: int, progress: Progress | None = None,
                        what: str = "path") -> Iterator[PathStep]:
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
    if not math.isfinite(top) or top <= 0:  # no gradient at zero weights: nothing tells the classes apart
        raise UserInputError("The features do not separate the training classes (their regularisation path is "
                             "empty): give training images of at least two classes that the model tells apart.")
    lambdas = torch.logspace(math.log10(top), math.log10(top * end), steps).tolist()
    state = None
    for i, lam in enumerate(lambdas):
        state = compute.run_batch(_saga_step, linear, loader, lam, alpha, group, state, n_classes)
        report_fraction((i + 1) / steps, f"{what}: lambda {i + 1} of {steps}", progress)
        yield PathStep(lam, linear.weight.detach().clone(), linear.bias.detach().clone())


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
        entering = [int(j) for j in norms.argsort(descending=True, stable=True)
                    if norms[j] > 0 and int(j) not in chosen]
        chosen += entering[:n_keep - len(chosen)]
        if len(chosen) >= n_keep:
            break
    if len(chosen) < n_keep and last is not None:
        rest = [int(j) for j in last.argsort(descending=True, stable=True) if int(j) not in chosen]
        chosen += rest[:n_keep - len(chosen)]
    return np.array(chosen, dtype=np.int64)


def sparse_layer(features: torch.Tensor, labels: torch.Tensor, n_classes: int, seed: int, steps: int,
                 progress: Progress | None = None) -> PathStep:
    """W_sp and its bias: the lowest-regularisation solution of the elastic-net path (the paper quantises
    that one: its small weights overfit, its large ones generalise; Figure 3)."""
    steps_taken = list(regularisation_path(features, labels, n_classes, LAYER_ALPHA, False, steps, LAYER_RANGE, seed,
                                           progress, "the sparse layer's path"))
    return steps_taken[-1]


def sparse_baseline(features: torch.Tensor, labels: torch.Tensor, n_classes: int, n_w: int, seed: int, steps: int,
                    progress: Progress | None = None) -> PathStep:
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


def refit_bias(features: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
               start: torch.Tensor) -> torch.Tensor:
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


