"""Q-SENN (seed 003): quantisation (eq. 3-5), the ternary logits, diversity@5 (eq. 6) against direct
implementations written here, and the layer on the built-in digits model (Table 1's claims: accuracy kept,
diversity raised), post hoc and in full mode on a copy of the network."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from explainers import UserInputError, load_dataset, load_model
from explainers.data.datasets import DatasetSpec
from explainers.fitted.checks import NotFittedError
from explainers.fitted.features import FeatureCache
from explainers.fitted.prototypes import PrototypeExplainer
from explainers.fitted.qsenn import (
    QSENN,
    QSENNRecipe,
    block_features,
    cached_block_features,
    concept_table,
    diversity_at_5,
    diversity_per_image,
    feature_order,
    full_mode_refusal,
    quantise,
)
from explainers.fitted.store import ASSETS

# float16 (the feature cache's type) rounds to nearest with a 10-bit fraction: a normal value x is kept to
# within 2^-11 |x|; a subnormal one (|x| < 2^-14) to within half its spacing, 2^-25.
FLOAT16_UNIT_ROUNDOFF = 2.0 ** -11
FLOAT16_SUBNORMAL_HALF_SPACING = 2.0 ** -25
# A float32 mean of a few dozen numbers errs by a few float32 roundoffs (2^-24): both pooled means do.
FLOAT32_MEAN_SLACK = 64 * 2.0 ** -24


# --- eq. 3-5 ----------------------------------------------------------------------------------------

def quantise_by_loop(sparse: np.ndarray, n_w: int) -> tuple[np.ndarray, float]:
    """Eq. 3-5 written out: walk the entries from the largest magnitude down (row-major among equals),
    keep n_w, alpha their mean magnitude, each kept entry +-alpha by its sign."""
    entries = []
    for i in range(sparse.shape[0]):
        for j in range(sparse.shape[1]):
            if sparse[i, j] != 0:
                entries.append((-abs(float(sparse[i, j])), i * sparse.shape[1] + j, i, j))
    entries.sort()
    kept = entries[:n_w]
    alpha = sum(-e[0] for e in kept) / len(kept)
    out = np.zeros(sparse.shape)
    for _, _, i, j in kept:
        out[i, j] = alpha if sparse[i, j] > 0 else -alpha
    return out, alpha


def test_quantisation_keeps_exactly_n_w_weights_of_plus_minus_alpha_the_mean_of_the_kept_magnitudes():
    rng = np.random.default_rng(0)
    sparse = rng.normal(size=(10, 50)) * (rng.random((10, 50)) < 0.4)
    quantised, alpha, epsilon = quantise(sparse, 50)
    expected, expected_alpha = quantise_by_loop(sparse, 50)
    assert np.count_nonzero(quantised) == 50
    assert set(np.unique(quantised[quantised != 0]).tolist()) <= {np.float32(alpha), np.float32(-alpha)}
    assert alpha == pytest.approx(expected_alpha, rel=1e-12)
    np.testing.assert_allclose(quantised, expected, rtol=1e-6)
    assert epsilon == pytest.approx(np.sort(np.abs(sparse).ravel())[::-1][49])  # eq. 3: sort(|W_sp|)_{n_w}
    assert (np.sign(quantised) == np.sign(sparse))[quantised != 0].all()


def test_ties_at_epsilon_keep_exactly_n_w_in_row_major_order():
    """Eq. 5 would keep all four entries of magnitude 2 (= epsilon): exactly n_w = 3 are kept, the earliest."""
    sparse = np.array([[3.0, 0.0, -2.0], [2.0, 0.5, 0.0], [0.0, -2.0, 2.0]])
    quantised, alpha, epsilon = quantise(sparse, 3)
    assert epsilon == 2.0 and alpha == pytest.approx((3 + 2 + 2) / 3)
    assert np.count_nonzero(quantised) == 3
    np.testing.assert_allclose(quantised, quantise_by_loop(sparse, 3)[0], rtol=1e-6)
    assert quantised[0, 2] < 0 and quantised[1, 0] > 0 and quantised[2, 1] == 0 and quantised[2, 2] == 0


def test_zeros_are_never_kept():
    sparse = np.zeros((2, 4))
    sparse[0, 1], sparse[1, 3] = 0.5, -1.0
    quantised, alpha, _ = quantise(sparse, 5)
    assert np.count_nonzero(quantised) == 2 and alpha == pytest.approx(0.75)
    with pytest.raises(UserInputError):
        quantise(np.zeros((2, 3)), 4)


# --- eq. 6 ------------------------------------------------------------------------------------------

def diversity_by_loop(maps: np.ndarray, weights: np.ndarray, classes: np.ndarray, k: int = 5) -> float:
    """Eq. 6 written out per image: the k features with the highest weight for the image's class (ties: the
    more active feature first), a softmax over each one's pixels, the sum over pixels of their maximum, / k."""
    values = []
    for image, c in zip(maps, classes):
        if np.count_nonzero(weights[c]) < k:
            continue
        ranked = sorted(range(weights.shape[1]), key=lambda j: (-weights[c, j], -image[j].mean(), j))
        top = ranked[:k]
        softmaxed = []
        for j in top:
            e = np.exp(image[j].ravel() - image[j].max())
            softmaxed.append(e / e.sum())
        values.append(np.max(np.stack(softmaxed), axis=0).sum() / k)
    return float(np.mean(values))


def test_diversity_at_5_is_eq_6():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(12, 20, 4, 4)).astype(np.float32) * 2
    weights = rng.normal(size=(3, 20)).astype(np.float32)
    weights[2, 4:] = 0  # a class with fewer than five weights is left out, as in the paper's code
    classes = rng.integers(0, 3, size=12)
    assert diversity_at_5(maps, weights, classes) == pytest.approx(diversity_by_loop(maps, weights, classes), rel=1e-5)
    assert np.isnan(diversity_per_image(maps, weights, classes)[classes == 2]).all()
    ternary = np.sign(weights) * (np.abs(weights) > 0.8)  # ties everywhere: broken by activation
    ternary[:, :5] = 1.0
    assert diversity_at_5(maps, ternary, classes) == pytest.approx(diversity_by_loop(maps, ternary, classes), rel=1e-5)


def test_five_top_features_on_one_map_score_a_fifth_of_five_disjoint_maps():
    weights = np.zeros((1, 8), dtype=np.float32)
    weights[0, :5] = 1.0
    weights[0, 5:] = 0.1
    disjoint = np.zeros((1, 8, 4, 4), dtype=np.float32)
    shared = np.zeros((1, 8, 4, 4), dtype=np.float32)
    for j in range(5):
        disjoint[0, j, j // 4, j % 4] = 40.0  # each peak in a cell of its own
        shared[0, j, 1, 1] = 40.0  # all on the same cell
    high, low = diversity_at_5(disjoint, weights, [0]), diversity_at_5(shared, weights, [0])
    assert high == pytest.approx(1.0, abs=1e-6)
    assert low == pytest.approx(high / 5, rel=1e-5)


def test_feature_orders_are_permutations():
    weights = np.array([[0, 1, 0, -1], [1, 0, 0, 1], [0, 0, 0, 1.0]])
    for by in ("selection", "classes", "shared"):
        assert sorted(feature_order(weights, by).tolist()) == [0, 1, 2, 3]
    assert feature_order(weights, "shared")[0] == 3  # used by all three classes
    assert feature_order(weights, "classes").tolist() == [1, 3, 0, 2]  # class 0: +, then -; class 1; unused last
    with pytest.raises(UserInputError):
        feature_order(weights, "size")


# --- the layer on digits ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    return load_model("digits"), load_dataset("digits", "train"), load_dataset("digits", "test")


@pytest.fixture(scope="module")
def feature_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("features")


@pytest.fixture(scope="module")
def fitted(digits, feature_folder):
    model, train, _ = digits
    with FeatureCache(model, train, folder=feature_folder) as features:
        return QSENN().fit(model, train, features=features)


def test_post_hoc_features_are_the_float32_pass_within_float16_rounding(digits, feature_folder, fitted):
    """The pooled B4 read from the feature cache (float16 maps) against the float32 pass Q-SENN ran before:
    equal to within float16's rounding of each map value, the bound for non-negative maps (mean of the
    rounded values vs mean of the values: 2^-11 relative, 2^-25 absolute for subnormals), and not equal
    (they do come from the float16 cache)."""
    model, train, _ = digits
    exact = block_features(model, train, "B4")
    with FeatureCache(model, train, folder=feature_folder) as features:  # written by the ``fitted`` fixture
        cached = cached_block_features(model, train, "B4", features=features)
        assert features.network_batches == 0
    assert cached.dtype == exact.dtype == torch.float32 and cached.shape == exact.shape == (len(train), 128)
    assert (exact >= 0).all()  # post-ReLU: the mean of |x| is f itself
    bound = (FLOAT16_UNIT_ROUNDOFF + FLOAT32_MEAN_SLACK) * exact + FLOAT16_SUBNORMAL_HALF_SPACING
    error = (cached - exact).abs()
    assert (error <= bound).all(), f"worst error / bound: {float((error / bound).max()):.3f}"
    assert (error > 0).any()
    # and the bound is the one that binds: the worst error uses a good part of it
    assert float((error / bound).max()) > 0.25


def test_a_model_whose_prototypes_were_fitted_runs_no_network_pass_for_post_hoc_q_senn(digits, tmp_path, monkeypatch):
    """The prototype fit writes B4 to the feature cache; Q-SENN's post-hoc fit then reads it (no batch through
    the network, no trace at all) and gives the layer a fit from its own pass gives."""
    model, train, _ = digits
    settings = dict(n_features=12, path_steps=4)
    with FeatureCache(model, train, folder=tmp_path / "features") as first:
        PrototypeExplainer("B4", per_class=2).fit(model, train, features=first)
        assert first.network_batches > 0
    import explainers.fitted.qsenn.layer as layer_module
    import explainers.fitted.qsenn.tuning as tuning_module
    traced = []
    for module in (layer_module, tuning_module):  # the Q-SENN modules that run the network themselves
        monkeypatch.setattr(module, "trace", lambda *a, **k: traced.append(1) or pytest.fail("Q-SENN ran the network"))
    with FeatureCache(model, train, folder=tmp_path / "features") as again:
        reused = QSENN(**settings).fit(model, train, features=again)
        assert again.network_batches == 0 and not traced
    monkeypatch.undo()
    with FeatureCache(model, train, folder=tmp_path / "own") as own:
        alone = QSENN(**settings).fit(model, train, features=own)
        assert own.network_batches > 0
    np.testing.assert_array_equal(reused.features_, alone.features_)
    np.testing.assert_array_equal(reused.weights_, alone.weights_)


def pooled_by_hand(model, images) -> torch.Tensor:
    """B4 average-pooled, by calling the digits network's stages directly (no trace, no tap)."""
    net = model.net
    with torch.inference_mode():
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x)))).mean(dim=(2, 3))


def test_the_shipped_layer_is_what_a_fresh_fit_gives(fitted, digits):
    """assets/qsenn/ holds the Concepts page's default layer of these weights, as a fresh machine fits it
    (``python -m explainers.cli qsenn digits`` rewrites it)."""
    model, train, _ = digits
    path = ASSETS / "qsenn" / QSENNRecipe(model, train, QSENN()).filename
    assert path.is_file(), "no shipped layer for these weights and settings: run python -m explainers.cli qsenn digits"
    shipped = QSENN.load(path, model)
    assert shipped.block == "B4" and fitted.block is None  # the store's recipe names the block it resolved
    stale = "stale, run python -m explainers.cli qsenn digits"
    for name in ("features_", "mean_", "std_", "gallery_"):  # which features, their scaling, their examples
        np.testing.assert_array_equal(getattr(shipped, name), getattr(fitted, name), err_msg=f"{name}: {stale}")
    np.testing.assert_array_equal(np.sign(shipped.weights_), np.sign(fitted.weights_), err_msg=f"ternary: {stale}")
    # glm-saga's elastic-net path is hundreds of float32 steps whose rounding follows the processor's vector width
    # (AVX2 or AVX-512 kernels): measured across two machines, 1.5e-3 on the bias (of 2.7), 1.6e-4 on W_sp (of
    # 1.7) and 1e-6 relative on alpha. A stale layer (other settings, features or weights) differs in the arrays above.
    for name in ("sparse_weights_", "weights_", "bias_"):
        found, expected = getattr(fitted, name), getattr(shipped, name)
        np.testing.assert_allclose(found, expected, rtol=0, atol=2e-3 * float(np.abs(expected).max()),
                                   err_msg=f"{name}: {stale}")


def test_the_fitted_layer_is_ternary_with_n_w_weights_quantised_from_w_sp(fitted):
    assert fitted.n_features_ == 50 and len(set(fitted.features_.tolist())) == 50
    assert fitted.n_w_ == 5 * 10
    weights = fitted.weights_
    assert np.count_nonzero(weights) == 50
    assert set(np.unique(np.abs(weights[weights != 0])).tolist()) == {np.float32(fitted.alpha_)}
    expected, alpha = quantise_by_loop(fitted.sparse_weights_, 50)
    assert fitted.alpha_ == pytest.approx(alpha, rel=1e-9)
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    assert (np.count_nonzero(weights, axis=1) > 0).all()  # every class has features


def test_ternary_logits_are_alpha_w1_fstar_plus_b(fitted, digits):
    model, _, test = digits
    images = torch.stack([model.transform(test[i][0]) for i in range(16)])
    pooled = pooled_by_hand(model, images).numpy()
    fstar = (pooled[:, fitted.features_] - fitted.mean_) / fitted.std_
    w1 = np.sign(fitted.weights_)
    assert set(np.unique(w1).tolist()) == {-1.0, 0.0, 1.0}
    expected = fitted.alpha_ * fstar @ w1.T + fitted.bias_
    np.testing.assert_allclose(fitted.decision_function(images), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(fitted.predict(images), expected.argmax(axis=1))


def test_on_digits_ternary_keeps_the_accuracy_and_raises_diversity(fitted, digits):
    model, train, test = digits
    rows = {row["layer"].split(" ")[0]: row for row in concept_table(fitted, {"train": train, "test": test})}
    dense, ternary = rows["Dense"], rows["Q-SENN"]
    assert ternary["test accuracy (%)"] >= dense["test accuracy (%)"] - 3  # seed 003: > 97% of dense accuracy
    assert ternary["diversity@5 test (%)"] > dense["diversity@5 test (%)"]
    assert ternary["features per class"] == 5 and ternary["total features"] <= 50
    assert rows["glm-saga5"]["features per class"] <= 5
    assert dense["test accuracy (%)"] == pytest.approx(100 * model.card["test_accuracy"], abs=0.01)


def test_an_explanation_adds_up_to_the_logit(fitted, digits):
    model, _, test = digits
    image = test[5][0]
    result = fitted.explain(image)
    assert result.predicted == int(fitted.predict(image)[0]) == result.target
    total = sum(f.contribution for f in result.features) + result.bias
    assert total == pytest.approx(result.logits[result.target], rel=1e-4, abs=1e-4)
    assert sum(abs(f.share) for f in result.features) == pytest.approx(1.0)
    row = fitted.weights_[result.target]
    assert sorted(f.feature for f in result.features) == np.flatnonzero(row).tolist()
    assert all(np.sign(row[f.feature]) == f.sign for f in result.features)
    assert all(f.map.shape == (4, 4) for f in result.features)
    assert fitted.feature_map(result.features[0]).shape == model.input_size
    other = fitted.explain(image, target=(result.predicted + 1) % 10)
    assert other.target != other.predicted


def test_the_gallery_holds_the_images_that_activate_each_feature_most(fitted, digits):
    model, train, _ = digits
    feature = 0
    top = fitted.gallery_[feature]
    images = torch.stack([model.transform(train[int(i)][0]) for i in top])
    values = pooled_by_hand(model, images)[:, fitted.features_[feature]].numpy()
    # the layer's features come from the float16 feature cache; these from a float32 pass
    np.testing.assert_allclose(fitted.gallery_values_[feature], values, rtol=FLOAT16_UNIT_ROUNDOFF + FLOAT32_MEAN_SLACK,
                               atol=FLOAT16_SUBNORMAL_HALF_SPACING)
    assert (np.diff(values) <= 1e-6).all()


def test_saved_and_loaded_layer_predicts_the_same(fitted, digits, tmp_path):
    model, _, test = digits
    images = torch.stack([model.transform(test[i][0]) for i in range(20)])
    fitted.save(tmp_path / "layer.npz")
    loaded = QSENN.load(tmp_path / "layer.npz", model).freeze()
    np.testing.assert_array_equal(loaded.decision_function(images), fitted.decision_function(images))
    assert loaded.digest_ == fitted.digest_
    with pytest.raises(AttributeError, match="frozen"):
        loaded.alpha_ = 1.0


def test_each_setting_is_declared_once_with_the_constructors_default():
    """``QSENN.parameters`` declares every setting but the block (checked against the model's blocks), with the
    constructor's default: ``fit`` validates against that declaration."""
    signature = inspect.signature(QSENN).parameters
    declared = {setting.name: setting.default for setting in QSENN.parameters}
    assert declared == {name: signature[name].default for name in declared}
    assert set(signature) - set(declared) == {"block"}


def test_use_before_fit_and_bad_settings_are_clear_errors(digits):
    model, train, _ = digits
    with pytest.raises(NotFittedError, match="fit"):
        QSENN().predict(train[0][0])
    with pytest.raises(UserInputError, match="mode"):
        QSENN(mode="fast").fit(model, train)
    with pytest.raises(UserInputError, match="n_features"):
        QSENN(n_features=0).fit(model, train)
    with pytest.raises(UserInputError, match="no block"):
        QSENN(block="B7").fit(model, train)


def test_full_mode_is_refused_on_a_large_model_without_a_gpu(digits):
    assert full_mode_refusal(digits[0]) is None
    big = load_model("resnet18", weights=None)
    if not torch.cuda.is_available():
        assert "post-hoc" in full_mode_refusal(big) and "GPU" in full_mode_refusal(big)


def small(dataset: DatasetSpec, count: int) -> DatasetSpec:
    """The first ``count`` images of a dataset (every class among them), as a dataset of its own."""
    return DatasetSpec(f"{dataset.name}[:{count}]", dataset.split, dataset.classes, dataset.labels[:count],
                       lambda i: dataset[i][0], fingerprint=f"{dataset.fingerprint}[:{count}]")


def test_full_mode_fine_tunes_a_copy_and_never_the_shared_model(digits, tmp_path):
    model, train, _ = digits
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    fingerprint, flags = model.fingerprint, [p.requires_grad for p in model.net.parameters()]
    subset = small(train, 240)
    layer = QSENN(mode="full", iterations=2, epochs=1, lr=1e-3, path_steps=6, n_features=20).fit(model, subset)
    after = model.net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.fingerprint == fingerprint
    assert [p.requires_grad for p in model.net.parameters()] == flags and not model.net.training
    assert all(p.grad is None for p in model.net.parameters())
    tuned = layer.network_.net
    assert tuned is not model.net
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items() if v.is_floating_point())
    assert [h["round"] for h in layer.history_] == [1, 2] and layer.history_[1]["lr"] == pytest.approx(0.9e-3)
    assert np.count_nonzero(layer.weights_) == 50 and layer.timings_["fine-tuning"] > 0
    # the layer reads the fine-tuned copy: its logits are alpha W_1 f* + b of that copy's features
    images = torch.stack([model.transform(subset[i][0]) for i in range(8)])
    pooled = pooled_by_hand(layer.network_, images).numpy()
    expected = layer.alpha_ * ((pooled[:, layer.features_] - layer.mean_) / layer.std_) @ np.sign(layer.weights_).T
    np.testing.assert_allclose(layer.decision_function(images), expected + layer.bias_, rtol=1e-4, atol=1e-4)
    # saved with the fine-tuned weights, read back onto a fresh copy of the shared model's network
    layer.save(tmp_path / "full.npz")
    loaded = QSENN.load(tmp_path / "full.npz", model)
    assert loaded.network_.net is not model.net and loaded.digest_ == layer.digest_
    np.testing.assert_allclose(loaded.decision_function(images), layer.decision_function(images), rtol=1e-5, atol=1e-5)
