"""The streamed prototype fit (issue 12): a feature cache on disk, k-means one class at a time, the
nearest-patch scan in chunks. It must give what an in-memory computation gives, resume an
interrupted fit without running the network over finished images, never read back a half-written
batch, and hold memory within a budget that does not grow with the number of classes."""
from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from torchvision.models import resnet18

from explainers import load_dataset
from explainers.data.datasets import image_folder
from explainers.engine.trace import trace
from explainers.fitted.checks import model_labels
from explainers.fitted.features import LOGITS, FeatureCache, FitCancelled
from explainers.fitted.prototypes import PrototypeExplainer, hcheck
from explainers.fitted.prototypes.kmeans import _row_sample
from explainers.models.loading import from_module
from tests.helpers import digits_model


@pytest.fixture(scope="module")
def model():
    return digits_model()


@pytest.fixture(scope="module")
def train():
    return load_dataset("digits", "train")


def _in_memory_prototypes(model, train, depth_blocks: tuple[str, ...], per_class: int, seed: int,
                          max_pixels: int) -> np.ndarray:
    """The multi-depth k-means of seed 000 (eq. 7-8, class-wise k-means) written as a plain loop over
    every image held in memory, with the same per-image row draw as the fit: the reference."""
    activations: dict[str, list[torch.Tensor]] = {b: [] for b in depth_blocks}
    for start in range(0, len(train), 256):
        inputs = torch.stack([model.transform(train[i][0]) for i in range(start, min(start + 256, len(train)))])
        recorded = trace(model, inputs, blocks=list(depth_blocks)).activations
        for b in depth_blocks:
            activations[b].append(recorded[b].half().float())  # the cache keeps float16
    rows = hcheck({b: torch.cat(v) for b, v in activations.items()}, depth_blocks).numpy()
    depth = "B" + "".join(b[1:] for b in depth_blocks)
    labels = model_labels(model, train)
    prototypes = []
    for label in range(model.num_classes):
        members = np.flatnonzero(labels == label)
        keep = max(1, min(rows[0, :, :, 0].size, max_pixels // len(members)))
        chosen = []
        for index in members:
            image_rows = rows[index].reshape(-1, rows.shape[-1])
            if keep < len(image_rows):
                image_rows = image_rows[_row_sample(seed, int(index), depth, len(image_rows), keep)]
            chosen.append(image_rows)
        with threadpool_limits(limits=1, user_api="openmp"):
            fitted = KMeans(n_clusters=per_class, n_init=1, random_state=seed).fit(np.concatenate(chosen))
        prototypes.append(fitted.cluster_centers_)
    return np.concatenate(prototypes).astype(np.float32)


def test_streamed_fit_equals_the_in_memory_computation(model, train, tmp_path):
    """B34 on digits (the sample is drawn: 144 images x 256 pixels per class > 4,000 rows): a fit streamed
    through a 1 MB budget (hundreds of chunks) gives the in-memory prototypes, and the same segments
    and predictions as a fit with the default budget."""
    reference = _in_memory_prototypes(model, train, ("B3", "B4"), per_class=3, seed=1, max_pixels=4_000)
    with FeatureCache(model, train, folder=tmp_path / "features") as features:
        small = PrototypeExplainer("B34", per_class=3, seed=1, max_pixels_per_class=4_000).fit(
            model, train, features=features, budget=2 ** 20)
        large = PrototypeExplainer("B34", per_class=3, seed=1, max_pixels_per_class=4_000).fit(
            model, train, features=features)
    np.testing.assert_allclose(small.prototypes_, reference, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(small.prototypes_, large.prototypes_)
    test = load_dataset("digits", "test")
    images = [test[i][0] for i in range(40)]
    np.testing.assert_array_equal(small.predict(images), large.predict(images))
    np.testing.assert_array_equal(small.explain(images[0]).segments, large.explain(images[0]).segments)
    assert [(p.image, p.row, p.col) for p in small.level_.patches] == [(p.image, p.row, p.col) for p in large.level_.patches]


class _StopAt:
    """A progress listener that cancels the fit at the first message containing ``text`` after ``after``
    reports of it (what a user's Cancel does, through the store's flight)."""

    def __init__(self, text: str, after: int = 0) -> None:
        self.text, self.after, self.seen = text, after, 0

    def __call__(self, _fraction: float, message: str) -> None:
        if self.text in message:
            self.seen += 1
            if self.seen > self.after:
                raise FitCancelled(message)


def test_a_fit_stopped_mid_pass_resumes_from_the_images_written(model, train, tmp_path):
    folder = tmp_path / "features"
    batch = 128
    with FeatureCache(model, train, folder=folder) as first:
        with pytest.raises(FitCancelled):
            PrototypeExplainer("B4", per_class=2, batch_size=batch).fit(
                model, train, progress=_StopAt("extracting features", after=3), features=first)
        assert first.network_batches == 4 and first.done("B4") == 4 * batch
    # What a crash mid-write leaves: bytes past the published count. They must never be read back.
    size = int(np.prod(model.block_shapes["B4"])) * 2
    with open(folder / "B4.bin", "r+b") as handle:
        handle.seek(4 * batch * size)
        handle.write(b"\xff" * size * 10)  # float16 NaNs in the next ten images
    with FeatureCache(model, train, folder=folder) as resumed:
        fitted = PrototypeExplainer("B4", per_class=2, batch_size=batch).fit(model, train, features=resumed)
        batches_total = -(-len(train) // batch)
        assert resumed.network_batches == batches_total - 4  # nothing before the stop ran again
        assert np.isfinite(resumed.read("B4", np.arange(len(train)))).all()
    with FeatureCache(model, train, folder=tmp_path / "clean") as clean:
        uninterrupted = PrototypeExplainer("B4", per_class=2, batch_size=batch).fit(model, train, features=clean)
    np.testing.assert_array_equal(fitted.prototypes_, uninterrupted.prototypes_)


def test_a_fit_stopped_after_the_features_runs_no_pass_again_and_other_settings_reuse_them(model, train, tmp_path):
    folder = tmp_path / "features"
    with FeatureCache(model, train, folder=folder) as first:
        with pytest.raises(FitCancelled):
            PrototypeExplainer("B234", per_class=2).fit(model, train, progress=_StopAt("k-means"), features=first)
        assert first.complete(["B2", "B3", "B4", LOGITS])
    with FeatureCache(model, train, folder=folder) as again:
        PrototypeExplainer("B234", per_class=2).fit(model, train, features=again)
        PrototypeExplainer("B4", per_class=3, seed=5).fit(model, train, features=again)  # another K/C, seed, depth
        PrototypeExplainer("pooled", per_class=4).fit(model, train, features=again)
        assert again.network_batches == 0


def test_a_cache_file_that_does_not_fit_is_computed_again(model, train, tmp_path):
    folder = tmp_path / "features"
    with FeatureCache(model, train, folder=folder) as cache:
        cache.ensure(["B4"])
        expected = cache.read("B4", [0, 5])
    meta = json.loads((folder / "B4.json").read_text())
    (folder / "B4.json").write_text(json.dumps(meta | {"shape": [1, 2, 3]}))  # another model's, say
    with FeatureCache(model, train, folder=folder) as cache:
        assert cache.done("B4") == 0
        cache.ensure(["B4"])
        assert cache.network_batches > 0
        np.testing.assert_array_equal(cache.read("B4", [0, 5]), expected)
    os.truncate(folder / "B4.bin", 100)  # a file cut short
    with FeatureCache(model, train, folder=folder) as cache:
        assert cache.done("B4") == 0


def test_reading_an_image_not_written_yet_is_refused(model, train, tmp_path):
    with FeatureCache(model, train, folder=tmp_path) as cache:
        with pytest.raises(RuntimeError, match="not in the feature cache"):
            cache.read("B4", [0])


# --- memory ---------------------------------------------------------------------------------------

def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_increase(work) -> int:
    """The highest resident size while ``work()`` runs, above the size before it (sampled every 5 ms)."""
    before = _resident_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _resident_bytes())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return peak - before


def _folder(root, classes: int, per_class: int, size: int = 64):
    generator = np.random.default_rng(0)
    for c in range(classes):
        (root / f"c{c:03d}").mkdir(parents=True)
        for i in range(per_class):
            pixels = generator.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"c{c:03d}" / f"{i}.png")
    return image_folder(root, "train", test_fraction=0.0001)


def test_memory_stays_within_the_budget_whatever_the_number_of_classes(tmp_path):
    """B234 with a 24 MB budget, on folders of 8 and 80 classes (4 images each, 64x64): the peak increase
    of resident memory stays under the budget plus the model, and the ten-fold number of classes adds
    less than the budget. The fit before streaming held every class's rows at once: here 80 classes x
    256 rows x 448 float32 dims = 37 MB at B234 alone, over the budget by itself."""
    torch.manual_seed(0)
    budget = 24 * 2 ** 20
    peaks = {}
    for classes in (8, 80):
        net = resnet18(num_classes=classes)
        model = from_module(net, f"resnet18-{classes}", classes=[f"c{c:03d}" for c in range(classes)], input_size=(64, 64))
        data = _folder(tmp_path / f"data{classes}", classes, 4)
        model_bytes = sum(p.numel() * 4 for p in net.parameters())
        explainer = PrototypeExplainer("B234", per_class=2)
        with FeatureCache(model, data, folder=tmp_path / f"features{classes}") as features:
            features.ensure(list(model.blocks) + [LOGITS], budget=budget)  # the pass: measured apart
            peaks[classes] = _peak_increase(lambda: explainer.fit(model, data, features=features, budget=budget))
        assert peaks[classes] < budget + model_bytes, (classes, peaks)
    assert peaks[80] - peaks[8] < budget, peaks


def test_cancel_stops_a_shared_fit_and_the_next_one_resumes(model, train, tmp_path, monkeypatch):
    """``Store.cancel`` (the page's Cancel button) stops the fit under way at its next step: every waiter is
    told ``FitCancelled``, nothing is kept in memory or on disk as fitted, and asking again resumes from
    the features already written (the network runs only over the images not written yet)."""
    from explainers.fitted import features as features_module
    from explainers.fitted.prototypes import PrototypeRecipe
    from explainers.fitted.store import Store
    from explainers.runtime.errors import FitCancelled as Cancelled

    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    passes = []
    record = features_module._record
    monkeypatch.setattr(features_module, "_record", lambda *args: passes.append(len(args[1])) or record(*args))
    store = Store()
    recipe = PrototypeRecipe(model, train, PrototypeExplainer("B4", per_class=2, batch_size=64))

    def cancel_midway(_fraction: float, message: str) -> None:
        # the waiter polls the fit's state, so it may see any count: cancel at the first past 256 images
        if "extracting features: " in message and "/" in message:
            done = int(message.split("extracting features: ")[1].split(" /")[0].replace(",", ""))
            if done >= 256:
                store.cancel(recipe.key)

    with pytest.raises(Cancelled, match="cancelled"):
        store.get(recipe, progress=cancel_midway)
    assert recipe.key not in store and not store.is_under_way(recipe.key)
    written = FeatureCache(model, train).done("B4")
    assert 256 <= written < len(train) and written % 64 == 0
    assert sum(passes) == written  # every pass that ran was written; the fit stopped at its next step
    passes.clear()
    fitted = store.get(recipe)
    assert sum(passes) == len(train) - written
    assert recipe.key in store and fitted.prototypes_.shape == (20, 128)
    assert store.cancel(recipe.key) is False  # nothing under way any more


def test_distinct_rows_counts_up_to_what_is_enough():
    from explainers.fitted.prototypes.kmeans import distinct_rows

    rows = np.repeat(np.arange(4, dtype=np.float32)[:, None], 3, axis=0).reshape(-1, 1).repeat(5, axis=1)
    assert distinct_rows(rows, 10) == 4 == len(np.unique(rows, axis=0))
    assert distinct_rows(rows, 2) == 2
    assert distinct_rows(np.zeros((100, 8), np.float32), 5) == 1
