"""KMEx, the multi-depth explainer and the gradient-free attribution (seed 000, sec. 3-4) on the
real digits model: identities from the paper, agreement with brute force, and the tables."""
from __future__ import annotations

import inspect
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import page_test
from PIL import Image

from explainers import explain, load_dataset, load_model
from explainers.cli import SHIPPED_FIGURE2_CLASSES, SHIPPED_FITS, SHIPPED_MANIFEST, SHIPPED_PER_CLASS
from explainers.data.datasets import image_folder
from explainers.engine.trace import trace
from explainers.fitted import store
from explainers.fitted.alignment import (
    accuracy_filename,
    accuracy_models,
    accuracy_table,
    alignment_filename,
    alignment_models,
    alignment_table,
    load_projection,
    projection,
    projection_filename,
)
from explainers.fitted.checks import NotFittedError, class_map
from explainers.fitted.prototypes import (
    SHIPPED,
    PrototypeExplainer,
    PrototypeRecipe,
    cache_key,
    embeddings,
    fit_prototypes,
    hcheck,
    receptive_box,
    suffix_depths,
)
from explainers.fitted.store import Store
from explainers.methods import kmeans_attribution as memo
from explainers.runtime.errors import DatasetError, MethodUnavailableError, UserInputError
from explainers.runtime.progress import reporting, time_span, with_eta


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
    from explainers.runtime.maps import upsample

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
    """Brute force over every training pixel at B4 agrees with the recorded patches. The fit reads the
    block outputs from its float16 feature cache, so the brute force rounds them the same way."""
    explainer = fitted["B4"]
    rows = []
    for start in range(0, len(train), 256):
        inputs = torch.stack([model.transform(train[i][0]) for i in range(start, min(start + 256, len(train)))])
        stored = {"B4": trace(model, inputs, blocks=["B4"]).activations["B4"].half().float()}
        rows.append(hcheck(stored, ("B4",)).reshape(-1, 128))
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
    with pytest.raises(UserInputError, match="no block B5"):
        PrototypeExplainer("B45").fit(model, train)


def test_each_setting_is_declared_once_with_the_constructors_default():
    """``PrototypeExplainer.parameters`` declares every setting but the depth (checked against the model's
    blocks), with the constructor's default: ``fit`` validates against that declaration."""
    signature = inspect.signature(PrototypeExplainer).parameters
    declared = {setting.name: setting.default for setting in PrototypeExplainer.parameters}
    assert declared == {name: signature[name].default for name in declared}
    assert set(signature) - set(declared) == {"depth"}


def test_init_only_stores_and_fit_validates_at_the_door(model, train):
    """scikit-learn's contract: any settings construct (and print, and key), ``fit`` refuses the bad ones
    with a UserInputError that says what is accepted, before any work."""
    b9 = PrototypeExplainer(depth="B9")
    assert b9.get_params()["depth"] == "B9" and repr(b9).startswith("PrototypeExplainer(depth='B9'")
    with pytest.raises(UserInputError, match=r"digits has no block B9 \(it has B1, B2, B3, B4\): choose a depth"):
        b9.fit(model, train)
    with pytest.raises(UserInputError, match="no block B9"):  # the shared store refuses it before any key or fit
        memo.fitted(model, "B9", data=train)
    refused = {
        PrototypeExplainer("B43"): "blocks in increasing order such as B4, B34, B234, B1234, not 'B43'",
        PrototypeExplainer(None): "depth must be 'pooled' or blocks",
        PrototypeExplainer("B4", per_class=0): "per_class must be an integer >= 1, not 0",
        PrototypeExplainer("B4", per_class="5"): "per_class must be an integer >= 1, not '5'",
        PrototypeExplainer("B4", per_class=True): "per_class must be an integer",
        PrototypeExplainer("B4", seed=-1): "seed must be an integer in [0, ",
        PrototypeExplainer("B4", batch_size=2.5): "batch_size must be an integer",
    }
    for explainer, message in refused.items():
        with pytest.raises(UserInputError) as error:
            explainer.fit(model, train)
        assert message in str(error.value), (explainer, str(error.value))
        assert not hasattr(explainer, "levels_")
    with pytest.raises(UserInputError, match="model must be a ModelSpec .*load_model.*not a DigitsResNet"):
        PrototypeExplainer("B4").fit(model.net, train)
    with pytest.raises(UserInputError, match="dataset must be a DatasetSpec .*load_dataset.*not a list"):
        PrototypeExplainer("B4").fit(model, [train[0]])
    numpy_int = PrototypeRecipe(model, train, PrototypeExplainer("B4", per_class=np.int64(5)))  # accepted, same key
    plain = PrototypeRecipe(model, train, PrototypeExplainer("B4", per_class=5))
    assert (numpy_int.key, numpy_int.filename) == (plain.key, plain.filename)


def test_an_empty_class_is_an_error_naming_it_in_fit_itself(model, train, tmp_path):
    folder = image_folder(digit_folder(tmp_path, train, ["3", "7"], count=5, empty=["8"]), "train")
    explainer = PrototypeExplainer("B4", per_class=1)
    with pytest.raises(DatasetError) as error:
        explainer.fit(model, folder)
    message = str(error.value)
    assert message.startswith(f"Class '8' of {folder.name} has no train images") and "add images to its sub-folder" in message
    assert not hasattr(explainer, "levels_")
    empty = image_folder(digit_folder(tmp_path / "two", train, ["3"], count=5, empty=["5", "6"]), "train")
    with pytest.raises(DatasetError, match="Classes '5', '6' of two have no train images"):
        PrototypeExplainer("pooled", per_class=1).fit(model, empty)


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


def test_one_map_of_every_class_filters_to_a_choice_without_refitting(model, train, test_set, fitted, embedded):
    """The Prototypes page's map of every class (fitted once): a choice of classes is that map's points of
    those classes, each where the whole map put it, and nothing else."""
    columns = model.classifier.weight.detach().numpy()
    everything = projection(embedded[0], train.labels, embedded[1], test_set.labels, columns, fitted["kmex5"],
                            list(range(10)))
    chosen = everything.only([7, 2])
    assert chosen.classes.tolist() == [2, 7] and set(chosen.train_labels) == {2, 7} and set(chosen.kmex_labels) == {2, 7}
    keep = np.isin(everything.train_labels, [2, 7])
    np.testing.assert_array_equal(chosen.train_xy, everything.train_xy[keep])
    np.testing.assert_array_equal(chosen.train_index, everything.train_index[keep])
    assert (train.labels[chosen.train_index] == chosen.train_labels).all()
    np.testing.assert_array_equal(chosen.rescaled_xy, everything.rescaled_xy[[2, 7]])
    assert len(chosen.kmex_xy) == 10 and len(chosen.off_manifold["kmex"]) == 10
    with pytest.raises(UserInputError, match="not in this projection"):
        everything.only([0, 1]).only([2])


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
    with pytest.raises(ValueError, match="(?i)no (training )?images"):
        image_folder(tmp_path / "empty")


# --- the files shipped in assets/prototypes/ (python -m explainers.cli prototypes digits) -------------

REPRODUCE = "run `.venv/bin/python -m explainers.cli prototypes digits` and commit assets/prototypes/"


def shipped(model, train, depth, per_class):
    path = SHIPPED / PrototypeRecipe(model, train, PrototypeExplainer(depth, per_class)).filename  # the defaults' file
    assert path.is_file(), f"no shipped {depth} K/C={per_class} for these weights: {REPRODUCE}"
    return PrototypeExplainer.load(path)


def test_the_shipped_files_are_those_of_the_current_weights_and_small(model, train, test_set):
    for depth, per_class in SHIPPED_FITS:
        shipped(model, train, depth, per_class)
    kmex1, kmex = shipped(model, train, "pooled", 1), shipped(model, train, "pooled", SHIPPED_PER_CLASS)
    b4, b234 = (shipped(model, train, d, SHIPPED_PER_CLASS) for d in ("B4", "B234"))
    for name in (alignment_filename(model, train, alignment_models(kmex1, kmex)),
                 accuracy_filename(model, train, test_set, accuracy_models(kmex, b4, b234)),
                 projection_filename(model, train, test_set, kmex, SHIPPED_FIGURE2_CLASSES)):
        assert (SHIPPED / name).is_file(), f"{name} is missing: {REPRODUCE}"
    # other models ship their own files beside these (tests/test_shipping.py): count those digits' shipping wrote
    files = [SHIPPED / name for name in json.loads((SHIPPED / SHIPPED_MANIFEST).read_text())["digits"]]
    assert len(files) == len(SHIPPED_FITS) + 3, f"stale files in {SHIPPED}: {REPRODUCE}"
    assert sum(f.stat().st_size for f in files) < 2_000_000


@pytest.mark.parametrize("depth", ["pooled", "B4"])
def test_a_fresh_fit_equals_the_shipped_file(model, train, depth):
    """Same seed, same prototypes to the bit (k-means runs on one OpenMP thread: the thread count does not matter)."""
    fresh = fit_prototypes(model, train, depth, SHIPPED_PER_CLASS, cache=False)
    stored = shipped(model, train, depth, SHIPPED_PER_CLASS)
    assert fresh.digest_ == stored.digest_, REPRODUCE
    for level in fresh.levels_:
        np.testing.assert_array_equal(fresh.levels_[level].prototypes, stored.levels_[level].prototypes)
        np.testing.assert_array_equal(fresh.levels_[level].labels, stored.levels_[level].labels)
        assert [(p.image, p.row, p.col, p.segment, p.box) for p in fresh.levels_[level].patches] == \
               [(p.image, p.row, p.col, p.segment, p.box) for p in stored.levels_[level].patches]


def test_the_shipped_tables_and_figure2_equal_fresh_ones(model, train, test_set, embedded):
    kmex1, kmex = shipped(model, train, "pooled", 1), shipped(model, train, "pooled", SHIPPED_PER_CLASS)
    b4, b234 = (shipped(model, train, d, SHIPPED_PER_CLASS) for d in ("B4", "B234"))
    rows = alignment_models(kmex1, kmex)
    stored = json.loads((SHIPPED / alignment_filename(model, train, rows)).read_text())["rows"]
    assert stored == alignment_table(model, embedded[0], train.labels, rows)
    rows = accuracy_models(kmex, b4, b234)
    stored = json.loads((SHIPPED / accuracy_filename(model, train, test_set, rows)).read_text())["rows"]
    assert stored == accuracy_table(model, train, test_set, rows)
    layout = load_projection(SHIPPED / projection_filename(model, train, test_set, kmex, SHIPPED_FIGURE2_CLASSES))
    fresh = projection(embedded[0], train.labels, embedded[1], test_set.labels,
                       model.classifier.weight.detach().numpy(), kmex, SHIPPED_FIGURE2_CLASSES)
    for name in ("train_xy", "test_xy", "columns_xy", "rescaled_xy", "kmex_xy"):  # UMAP, seeded, n_jobs=1
        np.testing.assert_allclose(getattr(layout, name), getattr(fresh, name), rtol=0, atol=1e-4, err_msg=name)
    for name in ("train_index", "test_index", "kmex_labels", "classes"):
        np.testing.assert_array_equal(getattr(layout, name), getattr(fresh, name))
    for kind, flags in fresh.off_manifold.items():
        np.testing.assert_array_equal(layout.off_manifold[kind], flags)


def test_the_shipped_tier_is_read_after_the_cache_and_never_written(model, train, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    before = {f: f.stat().st_mtime for f in SHIPPED.iterdir()}
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda *a, **k: pytest.fail("fitted instead of reading the shipped file"))
    reports = []
    loaded = fit_prototypes(model, train, "B4", SHIPPED_PER_CLASS, progress=lambda f, m: reports.append(m))
    assert reports == ["loaded (shipped with Protoscope)"]
    assert not (tmp_path / "prototypes").exists() or not any((tmp_path / "prototypes").iterdir())
    # a file in this machine's cache comes first
    own = tmp_path / "prototypes" / f"{cache_key(model, train, loaded)}.npz"
    loaded.save(own)
    reports.clear()
    fit_prototypes(model, train, "B4", SHIPPED_PER_CLASS, progress=lambda f, m: reports.append(m))
    assert reports == ["loaded from the cache"]
    # an unreadable one is deleted and the shipped file read instead
    own.write_bytes(b"not an npz")
    reports.clear()
    fit_prototypes(model, train, "B4", SHIPPED_PER_CLASS, progress=lambda f, m: reports.append(m))
    assert reports == ["loaded (shipped with Protoscope)"] and not own.exists()
    assert {f: f.stat().st_mtime for f in SHIPPED.iterdir()} == before


def test_the_prototypes_page_opens_from_the_shipped_files(tmp_path, monkeypatch):
    """No fit, no embedding, no UMAP: everything the default view shows is read."""

    import explainers.fitted.alignment as alignment

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda *a, **k: pytest.fail("fitted"))
    import ui.prototype_cache

    for module, name in ((alignment, "embeddings"), (alignment, "projection"), (alignment, "accuracy_table"),
                         (alignment, "alignment_table"), (ui.prototype_cache, "embeddings")):
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: pytest.fail(f"computed {_name}"))
    monkeypatch.setattr(store, "STORE", Store())
    app = page_test("pages/prototypes.py", 60, model="digits")
    started = time.perf_counter()
    app.run()
    assert not app.exception and not app.error, (app.exception, app.error)
    assert [s.value for s in app.subheader] == ["Alignment: how close each prototype is to its class", "Accuracy of the network and of each prototype explainer (%)"]
    assert app.select_slider(key="per_class").value == SHIPPED_PER_CLASS
    print(f"\nPrototypes page from the shipped files: {time.perf_counter() - started:.1f} s")


# --- classes of a folder against the model's ----------------------------------------------------------

def digit_folder(root, train, classes, count=6, empty=()):
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in train.indices_of(int(name))[:count] if name.isdigit() else range(count):
            train[int(i)][0].save(root / name / f"{i}.png")
    for name in empty:
        (root / name).mkdir(parents=True)
    return root


def test_a_folder_of_some_of_the_models_classes_is_mapped_by_name(model, train, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    folder = image_folder(digit_folder(tmp_path / "digits", train, ["3", "7"], count=10), "train")
    assert folder.classes == ["3", "7"]
    np.testing.assert_array_equal(class_map(model, folder), [3, 7])
    fitted = fit_prototypes(model, folder, "B4", per_class=2)
    assert sorted(set(fitted.prototype_labels_.tolist())) == [3, 7]
    images = [train[int(i)][0] for i in (*train.indices_of(3)[20:25], *train.indices_of(7)[20:25])]
    assert set(fitted.predict(images).tolist()) <= {3, 7}
    assert (fitted.predict(images) == [3] * 5 + [7] * 5).mean() >= 0.8
    kmex = fit_prototypes(model, folder, "pooled", per_class=2)
    assert kmex.prototype_labels_.tolist() == [3, 3, 7, 7]
    # another key than a fit on the model's own classes would have
    assert "classes=" not in cache_key(model, train, fitted) and cache_key(model, folder, fitted) != cache_key(model, train, fitted)


def test_a_folder_of_other_classes_is_refused_with_both_lists(model, train, tmp_path):
    folder = image_folder(digit_folder(tmp_path, train, ["3", "cat"], count=5), "train")
    with pytest.raises(ValueError) as refused:
        fit_prototypes(model, folder, "B4", per_class=1, cache=False)
    message = str(refused.value)
    assert "'3', 'cat'" in message and "'0', '1', '2'" in message and "no class 'cat'" in message
    assert "np." not in message


def test_a_class_without_images_is_named(model, train, tmp_path):
    folder = image_folder(digit_folder(tmp_path, train, ["3", "7"], count=5, empty=["8"]), "train")
    with pytest.raises(ValueError, match="'8' of .* has no train images"):
        fit_prototypes(model, folder, "B4", per_class=1, cache=False)


def test_too_few_images_says_which_classes_by_name_and_what_to_do(model, train, tmp_path):
    root = digit_folder(tmp_path, train, ["2", "5"], count=10)
    for extra in sorted((root / "2").iterdir())[3:]:
        extra.unlink()
    folder = image_folder(root, "train")
    with pytest.raises(ValueError) as refused:
        fit_prototypes(model, folder, "pooled", per_class=5, cache=False)
    message = str(refused.value)
    assert message.startswith("Class '2' (")
    assert "choose at most" in message and "prototypes per class (K/C)" in message and "np." not in message


# --- one fit for many sessions ----------------------------------------------------------------------

def test_fitted_is_single_flight_and_each_waiter_gets_its_own_progress(model, train, tmp_path, monkeypatch):
    """Eight threads ask for the same fit at once: one fit; each listener is called only in its own
    thread; the joiners are told another session started it; the result is shared and frozen."""
    calls = []
    loaded = shipped(model, train, "B4", SHIPPED_PER_CLASS)
    loaded.model_ = model  # as fit_prototypes attaches it

    def slow_fit(recipe, progress=None):
        calls.append(threading.get_ident())
        for step in range(1, 6):
            time.sleep(0.15)
            progress(step / 6, f"stage {step} of 5")
        return loaded

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(PrototypeRecipe, "fit", slow_fit)
    monkeypatch.setattr(store, "STORE", Store())
    results, seen, errors = {}, {}, []

    def session(i):
        me = threading.get_ident()
        seen[i] = []
        try:
            results[i] = memo.fitted(model, "B4", 9, "digits", progress=lambda f, m: seen[i].append((threading.get_ident() == me, m)))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
        time.sleep(0.01)
    for thread in threads:
        thread.join(10)
    assert not errors and len(calls) == 1
    assert len({id(r) for r in results.values()}) == 1
    for i, reports in seen.items():
        assert reports and all(own_thread for own_thread, _ in reports)
        assert any(m.startswith("Fitting the B4 prototypes, K/C = 9 (once; kept for every session): stage")
                   for _, m in reports)
    assert sum(any("another session" in m for _, m in reports) for reports in seen.values()) == 7
    shared = results[0]
    with pytest.raises(ValueError):
        shared.level_.prototypes[0, 0] = 1.0
    with pytest.raises(AttributeError, match="shared"):
        shared.per_class = 3
    with pytest.raises(AttributeError, match="shared"):
        shared.fit(model, train)
    assert shared.explain(train[0][0]).segments.shape == (4, 4)  # using it is unaffected
    assert memo.fitted(model, "B4", 9, "digits") is shared  # memoised: no second fit
    assert len(calls) == 1


def test_a_failed_fit_reaches_every_waiter_and_is_not_remembered(model, tmp_path, monkeypatch):
    calls = []

    def failing_fit(*_a, **_k):
        calls.append(1)
        time.sleep(0.3)
        raise ValueError("Class '2' has 3 training images")

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    monkeypatch.setattr(PrototypeRecipe, "fit", failing_fit)
    monkeypatch.setattr(store, "STORE", Store())
    raised = []

    def session():
        try:
            memo.fitted(model, "B4", 9, "digits")
        except ValueError as error:
            raised.append(str(error))

    threads = [threading.Thread(target=session) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert raised == ["Class '2' has 3 training images"] * 3 and len(calls) == 1
    with pytest.raises(ValueError):
        memo.fitted(model, "B4", 9, "digits")
    assert len(calls) == 2 and not store.STORE.under_way()


def two_digit_checkpoint(path: Path) -> Path:
    """A user's checkpoint: the digits network with a 3-vs-7 head cut from its classifier (so it has no
    training set of its own: it is not the built-in model)."""
    from explainers.cli import DIGITS_WEIGHTS

    state = torch.load(DIGITS_WEIGHTS, weights_only=True)
    state["fc.weight"], state["fc.bias"] = state["fc.weight"][[3, 7]], state["fc.bias"][[3, 7]]
    torch.save({"state_dict": state, "arch": "digits", "classes": ["3", "7"]}, path)
    return path


def test_the_kmeans_attribution_fits_on_the_requests_training_data_and_reports_progress(train, tmp_path, monkeypatch):
    """A checkpoint without a training set: the method is unavailable (saying what to do) until the caller
    passes training images (``training=``); then it fits on them once, telling the request's listener, into the store the
    pages share (the Segments page's explainer for the same folder is the same object)."""
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(store, "STORE", Store())
    monkeypatch.setattr(store, "WAIT_POLL", 0.01)
    mine = load_model(two_digit_checkpoint(tmp_path / "three_or_seven.pt"))
    assert mine.dataset is None
    folder = digit_folder(tmp_path / "digits", train, ["3", "7"], count=12)
    image = train[int(train.indices_of(7)[40])][0]
    with pytest.raises(MethodUnavailableError, match="comes without them: name a folder"):
        explain(mine, image, "kmex_attribution", block="B3")
    fits = []
    original = PrototypeExplainer.fit
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda self, *a, **k: fits.append(self) or original(self, *a, **k))
    told = []
    with reporting(lambda f, m: told.append((f, m))):
        result = explain(mine, image, "kmex_attribution", block="B3", training=str(folder))
    assert result.raw.shape == (8, 8) and len(fits) == 1
    assert told and all(m.startswith("Fitting the B34 prototypes, K/C = 5 (once; kept for every session): ") for _, m in told)
    assert any("stage" in m for _, m in told) and told[-1][0] == 1.0
    shared = memo.fitted(mine, "B34", data=image_folder(folder, "train"))  # what the Segments page asks for
    assert len(fits) == 1 and shared.levels_["B34"].labels.tolist() == [0] * 5 + [1] * 5
    # the map is the one eq. 11 gives with the shared explainer: the same object served both
    with torch.inference_mode():
        activations = trace(mine, mine.transform(image)[None], blocks=list(mine.blocks)).activations
    np.testing.assert_allclose(result.raw, shared.attribution(activations, result.target)["B34"], rtol=1e-5, atol=1e-6)


def test_progress_says_the_time_left_from_the_time_spent():
    now = [0.0]
    messages = []
    listener = with_eta(lambda f, m: messages.append(m), clock=lambda: now[0])
    listener(0.01, "stage 1 of 3, extracting features: 14 / 1,437 images")
    now[0] = 10.0
    listener(0.25, "stage 2 of 3, k-means at B234: class 3 of 10")
    now[0] = 40.0
    listener(1.0, "done")
    assert messages == ["stage 1 of 3, extracting features: 14 / 1,437 images · estimating the time left",
                        "stage 2 of 3, k-means at B234: class 3 of 10 · about 30 s left", "done"]
    assert [time_span(s) for s in (0.4, 59, 80, 3600, 7380)] == ["0 s", "59 s", "1 min 20 s", "1 h", "2 h 3 min"]


def test_a_fit_reports_its_stages_with_images_done(model, train, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))  # no features cached yet
    for fit in ("first", "second"):
        reports = []
        PrototypeExplainer("B4", per_class=1).fit(model, train, progress=lambda f, m: reports.append((f, m)))
        fractions = [f for f, _ in reports]
        assert fractions == sorted(fractions) and fractions[-1] == 1.0
        texts = [m for _, m in reports]
        if fit == "first":
            assert "stage 1 of 3, extracting features: 1,437 / 1,437 images" in texts
        else:  # the features are on disk: no pass over the images, and the stage says so
            assert "stage 1 of 3, extracting features: features of 1,437 images read from the cache" in texts
        assert "stage 2 of 3, k-means and the nearest patches in each class at B4: 10 of 10 classes" in texts
        assert texts[-2].startswith("stage 3 of 3, finding the nearest training patches: found in stage 2")
    reports = []  # the whole-set scan is a stage of its own
    PrototypeExplainer("B4", per_class=1, projection="all").fit(model, train, progress=lambda f, m: reports.append((f, m)))
    texts = [m for _, m in reports]
    assert "stage 2 of 3, k-means at B4: 10 of 10 classes" in texts
    assert "stage 3 of 3, finding the nearest training patches: 1,437 / 1,437 images" in texts


def test_the_kc_control_keeps_its_value_across_pages_and_mends_a_url(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    app = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "app.py"), default_timeout=120)
    app.query_params["model"] = "digits"
    app.query_params["per_class"] = "99"
    app.run()
    app.switch_page("pages/prototypes.py").run()
    app.multiselect(key="proto_classes").set_value([0]).run()  # one class: the page stops before any fit
    assert app.select_slider(key="per_class").value == SHIPPED_PER_CLASS
    app.select_slider(key="per_class").set_value(3).run()
    app.switch_page("pages/segments.py").run()
    assert not app.exception and not app.error
    assert app.select_slider(key="per_class").value == 3 and app.query_params["per_class"] == "3"
