"""ROAD's noisy linear imputation (Rong et al. 2022, *A Consistent and Efficient Evaluation Strategy
for Attribution Methods*, sec. 4): removed pixels are filled in from their neighbours, so that the
removal itself leaves no mask shape for the network to read (the "class information leakage"
that makes plain deletion curves rank maps by the shape of what they delete).

Each removed pixel takes the weighted mean of its eight neighbours inside the image, weights 1/6
for the four direct ones and 1/12 for the diagonals, as in the authors' code; removed neighbours
are unknowns too, so all removed pixels of an image are solved for at once, one sparse linear
system shared by the channels. Then Gaussian noise (standard deviation ``noise``, absolute, in
the values given) is added to the imputed pixels only.

The system is symmetric (a neighbour's weight is the same both ways) and positive definite as
long as one pixel is kept, so a sparse LU with a symmetric ordering (SuperLU's minimum degree on
A + A^T) solves it; it runs in the caller's thread, not on the compute thread (it is scipy, not
torch, and other sessions' passes go on meanwhile).
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scipy.sparse.linalg import splu

__all__ = ["NEIGHBOURS", "ROAD_NOISE", "ROAD_UNITS", "noisy_linear_imputation"]

# (row offset, column offset) -> weight: Rong et al.'s neighbourhood.
NEIGHBOURS = (((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12), ((0, -1), 1 / 6),
              ((0, 1), 1 / 6), ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12))
ROAD_NOISE = 0.01  # the authors' default standard deviation of the added noise, in [0, 1] pixel units
# Where the imputation runs and its noise is added: "pixels" ([0, 1], before the model's normalisation: the
# authors' code imputes the unnormalised image) or "model" (the normalised input, where the noise is 1/std larger).
ROAD_UNITS = ("pixels", "model")


def noisy_linear_imputation(image: torch.Tensor | np.ndarray, removed: torch.Tensor | np.ndarray,
                            noise: float = ROAD_NOISE, seed: int = 0) -> torch.Tensor:
    """``image`` (C, H, W) with the pixels where ``removed`` (H, W) is True replaced by the solution
    of x_i = sum_j w_ij x_j / sum_j w_ij over the in-image neighbours j of each removed pixel i
    (known neighbours give their values, removed ones are unknowns), plus N(0, noise^2) noise drawn
    from ``seed``. Kept pixels are returned unchanged. Nothing removed: the image itself; everything
    removed: a ``ValueError`` (the system has no known value to start from).
    """
    values = image.detach().double().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, float)
    mask = removed.cpu().numpy() if isinstance(removed, torch.Tensor) else np.asarray(removed)
    channels, height, width = values.shape
    if mask.shape != (height, width):
        raise ValueError(f"the removal mask is {mask.shape}, the image {(height, width)}")
    flat_mask = mask.reshape(-1).astype(bool)
    unknown = np.flatnonzero(flat_mask)
    filled = values.reshape(channels, -1).copy()
    if unknown.size == 0:
        return torch.from_numpy(filled.reshape(values.shape)).float()
    if unknown.size == flat_mask.size:
        raise ValueError("every pixel is removed: linear imputation needs at least one known pixel")
    system, right = _linear_system(filled, flat_mask, unknown, height, width)
    solution = splu(system, permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}).solve(right)
    if noise:
        solution = solution + np.random.default_rng(seed).normal(0.0, noise, size=solution.shape)
    filled[:, unknown] = solution.T
    return torch.from_numpy(filled.reshape(values.shape)).float()


def _linear_system(values: np.ndarray, removed: np.ndarray, unknown: np.ndarray, height: int,
                   width: int) -> tuple[sparse.csc_matrix, np.ndarray]:
    """A (n, n) and b (n, C) with A x = b the imputation equations of the n removed pixels: row i is
    (sum of in-image neighbour weights) x_i - sum over removed neighbours w x_j = sum over kept
    neighbours w v_j."""
    count = unknown.size
    position = np.full(removed.size, -1)
    position[unknown] = np.arange(count)
    rows, columns = np.divmod(unknown, width)
    diagonal = np.zeros(count)
    right = np.zeros((count, values.shape[0]))
    entries_i, entries_j, entries_w = [np.arange(count)], [np.arange(count)], []
    for (dy, dx), weight in NEIGHBOURS:
        y, x = rows + dy, columns + dx
        inside = (y >= 0) & (y < height) & (x >= 0) & (x < width)
        source = np.flatnonzero(inside)
        neighbour = y[inside] * width + x[inside]
        diagonal[source] += weight
        also_removed = removed[neighbour]
        entries_i.append(source[also_removed])
        entries_j.append(position[neighbour[also_removed]])
        entries_w.append(np.full(int(also_removed.sum()), -weight))
        kept = ~also_removed
        right[source[kept]] += weight * values[:, neighbour[kept]].T  # one neighbour per offset: no repeats
    data = np.concatenate([diagonal, *entries_w])
    system = sparse.csc_matrix((data, (np.concatenate(entries_i), np.concatenate(entries_j))), shape=(count, count))
    return system, right
