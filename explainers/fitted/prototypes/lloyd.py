"""k-means as matrix products (torch): scikit-learn's algorithm (greedy k-means++, then Lloyd), on every core.

scikit-learn's k-means runs one class on one core at about 8 GFLOP/s (its Cython loops; one thread per class
keeps its sums in a fixed order, which the shipped files' bit-for-bit reproduction needs). Here the two costly
steps are matrix products that torch spreads over the cores of the machine:

- assignment: ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2, the middle term one (rows x D) @ (D x K) product;
- update: the K centres' sums, one (K x rows) @ (rows x D) product with the one-hot assignment.

Everything else follows ``sklearn.cluster.KMeans(n_init=1, algorithm="lloyd")``: the rows are centred
on their mean first (precision), k-means++ draws its first centre uniformly and then keeps the best of
2 + log(K) candidates drawn in proportion to the squared distance, Lloyd stops when no row changes
cluster or when the centres move less (squared, summed) than ``tol`` times the mean variance of the
columns, and an empty cluster takes the row farthest from its centre. Seeded (numpy's ``RandomState``
draws the candidates, as scikit-learn's): on one machine with the same number of threads, the same rows give the same centres.
Its inertia is checked against scikit-learn's on the same rows in ``tests/test_kmeans.py``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

MAX_ITERATIONS = 300  # scikit-learn's default
TOLERANCE = 1e-4      # scikit-learn's default: relative to the mean variance of the columns


def squared_distances(rows: torch.Tensor, row_norms: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(rows, K) squared Euclidean distances, as one matrix product, clipped at 0 (rounding)."""
    distances = torch.addmm(row_norms[:, None], rows, centres.T, alpha=-2.0)
    distances += (centres * centres).sum(dim=1)[None, :]
    return distances.clamp_(min=0.0)


def kmeans_plusplus(rows: torch.Tensor, row_norms: torch.Tensor, k: int, generator: np.random.RandomState
                    ) -> torch.Tensor:
    """Greedy k-means++ (scikit-learn's ``_kmeans_plusplus``): K of the rows as the first centres, drawn with
    scikit-learn's calls on a ``RandomState`` of the same seed (so that both usually start, and end, alike)."""
    n = len(rows)
    trials = 2 + int(math.log(k))
    centres = torch.empty((k, rows.shape[1]), dtype=rows.dtype)
    weights = np.ones(n, dtype=np.float32)
    first = int(generator.choice(n, p=weights / weights.sum()))
    centres[0] = rows[first]
    closest = squared_distances(rows, row_norms, rows[first:first + 1])[:, 0].double()
    potential = float(closest.sum())
    for c in range(1, k):
        cumulative = torch.cumsum(closest, dim=0).numpy()
        candidates = np.searchsorted(cumulative, generator.uniform(size=trials) * potential)
        candidates = np.minimum(candidates, n - 1)
        to_candidates = squared_distances(rows, row_norms, rows[torch.from_numpy(candidates)]).double()
        to_candidates = torch.minimum(closest[:, None], to_candidates)
        potentials = to_candidates.sum(dim=0)
        best = int(potentials.argmin())
        centres[c] = rows[int(candidates[best])]
        closest, potential = to_candidates[:, best].contiguous(), float(potentials[best])
    return centres


def lloyd_kmeans(rows: np.ndarray, k: int, seed: int, max_iterations: int = MAX_ITERATIONS,
                 tolerance: float = TOLERANCE) -> tuple[np.ndarray, float]:
    """K centres of ``rows`` (float32, (K, D)) and their inertia (the sum of squared distances of
    every row to its nearest centre), k-means++ seeded with ``seed``, then Lloyd iterations."""
    data = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
    if len(data) < k:
        raise ValueError(f"{len(data)} rows for {k} clusters")
    mean = data.mean(dim=0, dtype=torch.float64).float()
    data = data - mean
    norms = (data * data).sum(dim=1)
    threshold = tolerance * float(data.var(dim=0, unbiased=False).mean())
    centres = kmeans_plusplus(data, norms, k, np.random.RandomState(seed))
    previous = None
    for _ in range(max_iterations):
        distances = squared_distances(data, norms, centres)
        labels = distances.argmin(dim=1)
        updated = cluster_means(data, labels, centres, distances)
        shift = float(((updated - centres) ** 2).sum())
        centres = updated
        if previous is not None and torch.equal(labels, previous):
            break
        if shift <= threshold:
            break
        previous = labels
    distances = squared_distances(data, norms, centres)
    inertia = float(distances.min(dim=1).values.double().sum())
    return (centres + mean).numpy(), inertia


def cluster_means(data: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor,
                  distances: torch.Tensor) -> torch.Tensor:
    """The mean of each cluster's rows (one matrix product with the one-hot labels); an empty
    cluster takes the row farthest from its own centre, as in scikit-learn."""
    k = len(centres)
    one_hot = torch.zeros((len(data), k), dtype=data.dtype)
    one_hot[torch.arange(len(data)), labels] = 1.0
    counts = one_hot.sum(dim=0)
    sums = one_hot.T @ data
    empty = torch.nonzero(counts == 0).flatten()
    if len(empty):
        far = distances[torch.arange(len(data)), labels].argsort(descending=True)[:len(empty)]
        for cluster, row in zip(empty.tolist(), far.tolist()):
            sums[cluster], counts[cluster] = data[row], 1.0
    return sums / counts[:, None]
