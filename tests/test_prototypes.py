"""KMEx, the multi-depth explainer and the gradient-free attribution (seed 000, sec. 3-4) on the
real digits model: identities from the paper, agreement with brute force, and the tables."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from explainers import load_dataset, load_model
from explainers.alignment import accuracy_table, alignment_table, projection
from explainers.data import image_folder
from explainers.prototypes import (NotFittedError, PrototypeExplainer, embeddings, fit_prototypes, hcheck,
                                   receptive_box, suffix_depths)
from explainers.trace import trace


@pytest.fixture(scope="module")
def model():
    torch.set_num_threads(1)
    return load_model("digits")


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", "train")


@pytest.fixture(scope="module")
def test_set():
    return load_dataset("digits", "test")


@pytest.fixture(scope="module")
def fitted(model, train, tmp_path_factory):
    """Every explainer the tests need, fitted once into a private cache."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PROTOSCOPE_CACHE", str(cache))
        return {name: fit_prototypes(model, train, depth, per_class)
                for name, depth, per_class in (("kmex1", "pooled", 1), ("kmex5", "pooled", 5),
                                               ("B4", "B4", 5), ("B234", "B234", 5))}


@pytest.fixture(scope="module")
def embedded(model, train, test_set):
    return embeddings(model, train), embeddings(model, test_set)


def images(dataset, count=12):
    return [dataset[i][0] for i in range(count)]


def test_attribution_of_a_class_column_to_itself_is_one(model, fitted):
    """att(c_j, c_j) = 1 (eq. 11): a B4 whose every pixel is c_j."""
    for target in (0, 3, 9):
        column = model.classifier.weight.detach()[target]
        activations = {"B4": column[None, :, None, None].expand(1, -1, 4, 4).clone()}
        maps = fitted["B4"].attribution(activations, target)
        np.testing.assert_allclose(maps["B4"], 1.0, rtol=1e-5)


def test_mean_attribution_at_b4_is_the_logit_without_bias_over_the_squared_norm(model, fitted, test_set):
    """By Theorem 1, mean_r h_r . c_j = logit_j - b_j, so the mean of eq. 11 is (logit_j - b_j) / ||c_j||^2."""
    weight, bias = model.classifier.weight.detach(), model.classifier.bias.detach()
    for image in images(test_set, 6):
        for target in (0, 5):
            result = fitted["B4"].explain(image, target)
            expected = (result.logits[target] - bias[target].item()) / weight[target].dot(weight[target]).item()
            assert result.attribution.mean() == pytest.approx(expected, rel=1e-4)


def test_after_propagation_each_segment_has_one_value(model, fitted, test_set):
    for image in images(test_set, 6):
        result = fitted["B234"].explain(image)
        assert result.attribution.shape == result.segments.shape == (16, 16)
        for segment in np.unique(result.segments):
            values = result.attribution[result.segments == segment]
            assert np.ptp(values) < 1e-6 * max(1.0, np.abs(values).max())
        # the chain walked B4 -> B34 -> B234, each a coarser-to-finer resolution
        assert [m.shape for m in result.attribution_levels.values()] == [(4, 4), (8, 8), (16, 16)]
        assert len(np.unique(result.attribution)) <= len(np.unique(result.segments))


def test_propagation_preserves_the_mean_of_the_upsampled_map(model, fitted, test_set):
    """Segment-wise averaging redistributes values within segments, so it keeps their total."""
    from explainers.maps import upsample

    result = fitted["B234"].explain(test_set[0][0])
    levels = result.attribution_levels
    lifted = upsample(torch.from_numpy(levels["B34"])[None], (16, 16))[0].numpy()
    assert levels["B234"].mean() == pytest.approx(lifted.mean(), rel=1e-5)


def test_eq10_prediction_is_the_argmax_of_the_class_counts(model, fitted, test_set):
    batch = images(test_set, 20)
    for name in ("B4", "B234"):
        explainer = fitted[name]
        predicted = explainer.predict(batch)
        for image, label in zip(batch, predicted):
            result = explainer.explain(image)
            assert result.predicted == int(np.argmax(result.class_counts)) == label
            assert result.class_counts.sum() == result.segments.size
            owners = explainer.prototype_labels_[result.segments.ravel()]
            np.testing.assert_array_equal(np.bincount(owners, minlength=10), result.class_counts)


def test_kmex_predicts_the_class_of_the_nearest_prototype(model, fitted, test_set, embedded):
    z = embedded[1][:50]
    distances = np.linalg.norm(z[:, None, :] - fitted["kmex5"].prototypes_[None], axis=2)
    expected = fitted["kmex5"].prototype_labels_[distances.argmin(axis=1)]
    np.testing.assert_array_equal(fitted["kmex5"].predict(images(test_set, 50)), expected)
    # the same as the argmax of exp(-||z - p_k||^2) (sec. 3.2, step 2)
    np.testing.assert_array_equal(fitted["kmex5"].prototype_labels_[np.exp(-distances ** 2).argmax(1)], expected)


def test_hcheck_rows_follow_eq8(model, test_set):
    inputs = torch.stack([model.transform(image) for image in images(test_set, 3)])
    activations = trace(model, inputs).activations
    rows = hcheck(activations, ("B2", "B3", "B4"))
    assert rows.shape == (3, 16, 16, 32 + 64 + 128)
    parts = torch.split(rows, [32, 64, 128], dim=-1)
    for part, channels in zip(parts, (32, 64, 128)):
        norms = part.norm(dim=-1)
        alive = norms > 0
        torch.testing.assert_close(norms[alive], torch.full_like(norms[alive], 1 / channels))


def test_fitting_is_reproducible_by_seed(model, train):
    first = PrototypeExplainer("B4", per_class=2, seed=3).fit(model, train)
    second = PrototypeExplainer("B4", per_class=2, seed=3).fit(model, train)
    np.testing.assert_array_equal(first.prototypes_, second.prototypes_)
    assert [p.image for p in first.level_.patches] == [p.image for p in second.level_.patches]


def test_nearest_patches_are_the_closest_training_pixels(model, train, fitted):
    """Brute force over every training pixel at B4 agrees with the recorded patches."""
    explainer = fitted["B4"]
    rows = []
    for start in range(0, len(train), 256):
        inputs = torch.stack([model.transform(train[i][0]) for i in range(start, min(start + 256, len(train)))])
        rows.append(hcheck(trace(model, inputs, blocks=["B4"]).activations, ("B4",)).reshape(-1, 128))
    rows = torch.cat(rows)
    distances = torch.cdist(torch.from_numpy(explainer.prototypes_), rows)
    best = distances.argmin(dim=1)
    for patch, row in zip(explainer.level_.patches, best.tolist()):
        assert (patch.image, patch.row * 4 + patch.col) == divmod(row, 16)
        assert patch.distance == pytest.approx(distances[patch.prototype, row].item(), rel=1e-4, abs=1e-7)
        left, top, right, bottom = patch.box
        assert right - left >= 8 and bottom - top >= 8  # at least 1/8 of the 64-pixel side


def test_receptive_box_covers_its_cell_and_stays_inside():
    for row in range(16):
        box = receptive_box(row, 15 - row, (16, 16), (64, 64))
        left, top, right, bottom = box
        assert 0 <= left < right <= 64 and 0 <= top < bottom <= 64
        assert right - left == 8 and bottom - top == 8
        assert left <= (15 - row) * 4 and right >= (16 - row) * 4 and top <= row * 4 and bottom >= (row + 1) * 4


def test_suffix_chain():
    assert suffix_depths("B234") == ["B34", "B234"]
    assert suffix_depths("B1234") == ["B34", "B234", "B1234"]
    assert suffix_depths("B4") == ["B4"]


def test_the_disk_cache_reloads_without_fitting(model, train, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    first = fit_prototypes(model, train, "B4", per_class=1)
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda *a, **k: pytest.fail("refitted instead of loading"))
    reports = []
    again = fit_prototypes(model, train, "B4", per_class=1, progress=lambda f, m: reports.append(m))
    np.testing.assert_array_equal(first.prototypes_, again.prototypes_)
    assert [p.__dict__ for p in first.level_.patches] == [p.__dict__ for p in again.level_.patches]
    assert reports == ["loaded from the cache"]


def test_unfitted_and_impossible_requests_say_so(model, train):
    with pytest.raises(NotFittedError, match="fit"):
        PrototypeExplainer("B4").predict(train[0][0])
    with pytest.raises(ValueError, match="no block B5"):
        PrototypeExplainer("B45").fit(model, train)


def test_tables_match_the_papers_findings(model, train, test_set, fitted, embedded, capsys):
    """KMEx within 1 point of the CNN, B4 within 2; c_j far less aligned with their class than KMEx."""
    table1 = alignment_table(model, embedded[0], train.labels, {"KMEx (K/C=1)": fitted["kmex1"],
                                                               "KMEx (K/C=5)": fitted["kmex5"]})
    table2 = accuracy_table(model, train, test_set, {"KMEx (K/C=5)": fitted["kmex5"], "B4": fitted["B4"],
                                                     "B234": fitted["B234"]})
    with capsys.disabled():
        print("\nTable 1 (digits):", *table1, "Table 2 (digits):", *table2, sep="\n  ")
    cosines = {row["prototypes"]: row["class"] for row in table1}
    columns = cosines["CNN classifier columns c_j"]
    assert columns < cosines["KMEx (K/C=1)"] - 0.2 and columns < cosines["KMEx (K/C=5)"] - 0.2
    accuracy = {row["model"]: row["test"] for row in table2}
    assert accuracy["CNN"] >= 98.0
    assert abs(accuracy["KMEx (K/C=5)"] - accuracy["CNN"]) <= 1.0
    assert abs(accuracy["B4"] - accuracy["CNN"]) <= 2.0


def test_projection_never_draws_a_far_prototype_inside_its_class(model, train, test_set, fitted, embedded):
    columns = model.classifier.weight.detach().numpy()
    placed = projection(embedded[0], train.labels, embedded[1], test_set.labels, columns, fitted["kmex5"], [0, 1, 2])
    for index, label in enumerate(placed.classes):
        mine = placed.train_xy[placed.train_labels == label]
        centre = mine.mean(axis=0)
        radius = np.percentile(np.linalg.norm(mine - centre, axis=1), 90)
        # the rescaled column is ~5 class radii from its class in z: it must be drawn outside the class
        assert placed.off_manifold["rescaled"][index]
        assert np.linalg.norm(placed.rescaled_xy[index] - centre) > 2 * radius
        # KMEx prototypes are among their class's data and are drawn there
        kmex = placed.kmex_xy[placed.kmex_labels == label]
        assert (np.linalg.norm(kmex - centre, axis=1) < 3 * radius).all()
    assert len(placed.test_xy) == np.isin(test_set.labels, [0, 1, 2]).sum()


def test_image_folder_dataset(tmp_path):
    for name, shade in (("cardinal", 200), ("sparrow", 60)):
        (tmp_path / name).mkdir()
        for i in range(5):
            Image.new("RGB", (20, 16), (shade, i * 10, 0)).save(tmp_path / name / f"{i}.png")
    train, test = image_folder(tmp_path, "train"), image_folder(tmp_path, "test")
    assert train.classes == ["cardinal", "sparrow"]
    assert len(train) == 8 and len(test) == 2 and sorted(test.labels) == [0, 1]
    assert image_folder(tmp_path, "test").labels.tolist() == test.labels.tolist()  # deterministic
    image, label = test[0]
    assert image.mode == "RGB" and image.size == (20, 16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        image_folder(tmp_path / "empty")
