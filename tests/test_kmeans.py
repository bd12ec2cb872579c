"""The prototype fit's faster defaults, checked against the earlier ones on the digits: the torch k-means
(``lloyd.lloyd_kmeans``) against scikit-learn's inertia on the same rows, and the own-class projection
against a brute force over the class's training pixels."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from explainers import load_dataset, load_model
from explainers.engine.trace import trace
from explainers.fitted.checks import check_classes
from explainers.fitted.features import FeatureCache, memory_budget
from explainers.fitted.prototypes import SHIPPED, PrototypeExplainer, PrototypeRecipe, cache_key, hcheck
from explainers.fitted.prototypes.depths import depth_blocks, recorded_blocks
from explainers.fitted.prototypes.explainer import EARLIER_VALUES
from explainers.fitted.prototypes.kmeans import class_rows
from explainers.fitted.prototypes.lloyd import lloyd_kmeans


@pytest.fixture(scope="module")
def model():
    return load_model("digits")


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def own_class(model, train, tmp_path_factory):
    """B4 at K/C = 3 with the new defaults (own-class projection, torch k-means), on a private cache."""
    with FeatureCache(model, train, folder=tmp_path_factory.mktemp("features")) as features:
        return PrototypeExplainer("B4", per_class=3).fit(model, train, features=features)


@pytest.mark.parametrize("depth", ["B4", "B234", "pooled"])
def test_torch_kmeans_inertia_is_scikit_learns_within_one_percent(model, train, depth, tmp_path):
    """Three digits classes' rows, as the fit reads them: the same seed's inertia within 1% of scikit-learn's
    (each is a local optimum from its own k-means++ draw: either may be the lower)."""
    labels = check_classes(model, train, 5, depth == "pooled")
    with FeatureCache(model, train, folder=tmp_path) as cache:
        cache.ensure(recorded_blocks(model, list(depth_blocks(depth))), None, 128, memory_budget())
        for label in (0, 3, 8):
            rows = class_rows(cache, np.flatnonzero(labels == label), depth, memory_budget(), 0, 20_000)
            centres, inertia = lloyd_kmeans(rows, 5, seed=0)
            with threadpool_limits(1):
                reference = KMeans(n_clusters=5, n_init=1, random_state=0).fit(rows)
            assert centres.shape == (5, rows.shape[1]) and centres.dtype == np.float32
            assert abs(inertia / reference.inertia_ - 1) < 0.01, (depth, label, inertia, reference.inertia_)
            # the inertia it reports is that of its centres (an independent computation, float64)
            recomputed = torch.cdist(torch.from_numpy(rows).double(), torch.from_numpy(centres).double())
            assert inertia == pytest.approx(float((recomputed.min(dim=1).values ** 2).sum()), rel=1e-4)


def test_torch_kmeans_is_seeded():
    rows = np.random.default_rng(1).normal(size=(500, 16)).astype(np.float32)
    first, second = lloyd_kmeans(rows, 4, seed=2), lloyd_kmeans(rows, 4, seed=2)
    np.testing.assert_array_equal(first[0], second[0])
    assert not np.array_equal(first[0], lloyd_kmeans(rows, 4, seed=3)[0])


def test_own_class_projection_gives_each_prototype_its_classs_nearest_pixel(model, train, own_class):
    """Every prototype's patch is from an image of its own class, and is the closest pixel among that class's
    (brute force over the float16-rounded block outputs, as the fit reads them)."""
    level = own_class.level_
    labels = check_classes(model, train, 3, False)
    rows = []
    for start in range(0, len(train), 256):
        inputs = torch.stack([model.transform(train[i][0]) for i in range(start, min(start + 256, len(train)))])
        stored = {"B4": trace(model, inputs, blocks=["B4"]).activations["B4"].half().float()}
        rows.append(hcheck(stored, ("B4",)).reshape(len(inputs), -1, 128))
    rows = torch.cat(rows)
    for patch, prototype, label in zip(level.patches, level.prototypes, level.labels):
        assert labels[patch.image] == label
        mine = np.flatnonzero(labels == label)
        distances = torch.cdist(torch.from_numpy(prototype)[None], rows[mine].reshape(-1, 128))[0]
        image, pixel = divmod(int(distances.argmin()), rows.shape[1])
        assert (patch.image, patch.row * 4 + patch.col) == (int(mine[image]), pixel)
        assert patch.distance == pytest.approx(float(distances.min()), rel=1e-4, abs=1e-7)


def test_the_new_settings_are_keyed_only_away_from_their_earlier_values(model, train, own_class, tmp_path):
    """The shipped files (whole-set scan, scikit-learn) keep their keys, digests and bytes; the new defaults
    get keys of their own, and a saved new-default fit loads with its settings."""
    earlier = PrototypeExplainer("B4", per_class=5, **EARLIER_VALUES)
    assert earlier.keyed_params() == {"depth": "B4", "per_class": 5, "seed": 0, "max_pixels_per_class": 20_000,
                                      "batch_size": 128}
    assert (SHIPPED / f"{cache_key(model, train, earlier)}.npz").is_file()
    assert cache_key(model, train, PrototypeExplainer("B4", per_class=5)) != cache_key(model, train, earlier)
    loaded = PrototypeExplainer.load(SHIPPED / f"{cache_key(model, train, earlier)}.npz")
    assert loaded.get_params() == earlier.get_params()
    # the defaults are served by that shipped file; settings no file is shipped for are fitted as asked
    assert PrototypeRecipe(model, train, PrototypeExplainer("B4", per_class=5)).settings == earlier.get_params()
    assert PrototypeRecipe(model, train, PrototypeExplainer("B4", per_class=3)).settings["projection"] == "class"
    own_class.save(tmp_path / "own.npz")
    again = PrototypeExplainer.load(tmp_path / "own.npz")
    assert again.get_params() == own_class.get_params() and again.digest_ == own_class.digest_


@pytest.mark.parametrize("depth, budget", [("B234", None), ("B234", 2 ** 20), ("pooled", None)])
def test_the_projection_found_with_kmeans_equals_a_separate_scan(model, train, depth, budget, tmp_path):
    """Stage 2 finds each prototype's own-class patch among the rows it clustered (``classwise``); a scan of
    the cache after the fit (``nearest_patches``, the earlier stage 3) finds the same pixel and segment at every
    level, and the same distance to ``torch.cdist``'s rounding (stage 2 computes the winner's ||x - c||
    directly: on KMEx's unnormalised z that is 1e-7 from float64 where cdist's product form is 4e-5). With a
    1 MB budget no class's rows are held: they are read again."""
    from explainers.fitted.prototypes.patches import nearest_patches

    labels = check_classes(model, train, 3, depth == "pooled")
    with FeatureCache(model, train, folder=tmp_path) as cache:
        fitted = PrototypeExplainer(depth, per_class=3).fit(model, train, features=cache, budget=budget)
        scanned = nearest_patches(model, fitted.levels_, cache, memory_budget(), None, labels, "class")
    for level_depth, level in fitted.levels_.items():
        assert [(p.image, p.row, p.col, p.segment) for p in level.patches] == \
               [(p.image, p.row, p.col, p.segment) for p in scanned[level_depth]], level_depth
        np.testing.assert_allclose([p.distance for p in level.patches], [p.distance for p in scanned[level_depth]],
                                   rtol=1e-4)
