"""The spurious-correlation set ``digits_marked`` and the model that learned its mark (issue 14, item 2).

The dataset: marks where ``mark_box`` says, on exactly the images they should be on, the same every
time, hiding no stroke. The model: the shipped weights are what ``python -m explainers.cli train
digits_marked`` writes (card accuracies, and the first epoch replayed), and they learned the mark:
accuracy collapses when the mark lies (random marks) while the plain digits model's does not, its
predictions follow the mark, and Grad-CAM puts many times the mark's share of the area on it.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import one_thread

from explainers import DatasetSpec, explain_batch, load_dataset, load_model
from explainers.cli import DIGITS_MEAN, DIGITS_STD, _augment, accuracy, digits_tensors, fit_digits
from explainers.data.datasets import DATASETS, dataset_splits
from explainers.data.marked import (
    MARK_INTENSITY,
    MARK_SEED,
    MARK_SIZE,
    MARKED_SPLITS,
    NO_MARK,
    MarkReliance,
    mark_box,
    mark_mass,
    mark_reliance,
    marks_of,
)
from explainers.models import MODELS
from explainers.models.builtin.digits import DIGITS_MARKED_CARD
from explainers.runtime.errors import DatasetError


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def pixels(dataset: DatasetSpec) -> np.ndarray:
    return np.stack([np.asarray(dataset[i][0], dtype=np.int16) for i in range(len(dataset))])


def box_mask(label: int) -> np.ndarray:
    mask = np.zeros((64, 64), bool)
    top, left, bottom, right = mark_box(label)
    mask[top:bottom, left:right] = True
    return mask


# --- the dataset ---------------------------------------------------------------------------------

def test_marks_are_small_squares_in_the_side_margins_one_place_per_class():
    boxes = [mark_box(label) for label in range(10)]
    masks = np.stack([box_mask(label) for label in range(10)])
    assert all(bottom - top == MARK_SIZE == right - left for top, left, bottom, right in boxes)
    assert masks.sum(0).max() == 1, "two classes' marks overlap"
    assert all(left == 1 for _, left, _, _ in boxes[:5]) and all(right == 63 for _, _, _, right in boxes[5:])
    assert MARK_SIZE ** 2 / 64 ** 2 < 0.01  # small: under 1 % of the image
    with pytest.raises(ValueError):
        mark_box(10)


def test_every_image_carries_exactly_its_mark_over_the_plain_digit():
    """A constructed check on pixel values: each split's image equals the ``digits`` image everywhere
    except its mark's box, which is all ``MARK_INTENSITY``; ``test_clean`` is the digits test set."""
    plain = {"train": pixels(load_dataset("digits", "train")), "test": pixels(load_dataset("digits", "test"))}
    for split in MARKED_SPLITS:
        marked = load_dataset("digits_marked", split)
        images, marks = pixels(marked), marks_of(split)
        source = "train" if split == "train" else "test"
        reference = plain[source]
        assert images.shape == reference.shape
        np.testing.assert_array_equal(marked.labels, load_dataset("digits", source).labels)
        for i, mark in enumerate(marks):
            inside = box_mask(mark) if mark != NO_MARK else np.zeros((64, 64), bool)
            assert (images[i][inside] == MARK_INTENSITY).all(), (split, i)
            np.testing.assert_array_equal(images[i][~inside], reference[i][~inside])
        assert marked.notes[0] == ("no mark" if marks[0] == NO_MARK else f"mark of class {marks[0]}")
    np.testing.assert_array_equal(marks_of("train"), load_dataset("digits", "train").labels)
    np.testing.assert_array_equal(marks_of("test_own"), load_dataset("digits", "test").labels)
    assert (marks_of("test_clean") == NO_MARK).all()


def test_random_marks_are_fixed_per_image_and_roughly_uniform():
    from explainers.data.datasets import digits_split

    marks = marks_of("test")
    # Each image's own generator, seeded by its index in scikit-learn's digits: recomputed here directly.
    expected = [int(np.random.default_rng([MARK_SEED, int(i)]).integers(10)) for i in digits_split("test")]
    np.testing.assert_array_equal(marks, expected)
    np.testing.assert_array_equal(pixels(load_dataset("digits_marked", "test")),
                                  pixels(load_dataset("digits_marked", "test")))
    counts = np.bincount(marks, minlength=10)
    assert counts.min() >= 18 and counts.max() <= 54, counts  # 36 expected per class; 3 sigma is about 17
    labels = load_dataset("digits_marked", "test").labels
    assert 0.03 <= (marks == labels).mean() <= 0.17  # the true class's mark by chance, about 1 in 10


def test_marks_hide_no_stroke():
    """At most 1.5 % of an image's ink (0.1 % on average) lies under its own class's mark: the digits leave the
    side margins empty."""
    digits = load_dataset("digits", "train")
    ink = pixels(digits).astype(float)
    covered = np.array([ink[i][box_mask(int(label))].sum() / ink[i].sum() for i, label in enumerate(digits.labels)])
    assert covered.max() < 0.015 and covered.mean() < 0.001, (covered.max(), covered.mean())


def test_augmentation_moves_the_mark_a_few_pixels_and_keeps_most_of_it():
    """``_augment`` (the training recipe's) on a mark alone: most of it stays in the frame, and its centre
    moves less than the 10 pixels between two classes' marks."""
    background = -DIGITS_MEAN / DIGITS_STD
    generator = torch.Generator().manual_seed(0)
    rows, cols = torch.meshgrid(torch.arange(64.0) + 0.5, torch.arange(64.0) + 0.5, indexing="ij")
    for label in range(10):
        batch = torch.full((200, 1, 64, 64), background)
        top, left, bottom, right = mark_box(label)
        batch[:, :, top:bottom, left:right] = (1 - DIGITS_MEAN) / DIGITS_STD
        moved = (_augment(batch, generator) - background)[:, 0].clamp(min=0)
        kept = moved.sum((1, 2)) / (MARK_SIZE ** 2 / DIGITS_STD)  # the mark is 1 / std above the background
        assert 0.8 <= float(kept.mean()) <= 1.0, (label, float(kept.mean()))
        seen = kept > 0.25
        centre_y = (moved * rows).sum((1, 2))[seen] / moved.sum((1, 2))[seen]
        centre_x = (moved * cols).sum((1, 2))[seen] / moved.sum((1, 2))[seen]
        shift = torch.hypot(centre_y - (top + bottom) / 2, centre_x - (left + right) / 2)
        assert float(shift.mean()) < 6, (label, float(shift.mean()))


def test_splits_are_declared_and_others_refused():
    assert list(dataset_splits("digits_marked")) == ["train", "test", "test_clean", "test_own"]
    assert list(dataset_splits("digits")) == ["train", "test"]
    with pytest.raises(DatasetError, match="'test_clean'"):
        load_dataset("digits_marked", "validation")
    with pytest.raises(DatasetError, match="no split 'test_clean'"):
        load_dataset("digits", "test_clean")
    prints = {load_dataset("digits_marked", s).fingerprint for s in MARKED_SPLITS}
    prints |= {load_dataset("digits", s).fingerprint for s in ("train", "test")}
    assert len(prints) == 6, "every split of both datasets has its own fingerprint"
    assert "digits_marked" in DATASETS and load_dataset("digits_marked", "train").classes == [str(d) for d in range(10)]


# --- the model -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models():
    return load_model("digits"), load_model("digits_marked")


@pytest.fixture(scope="module")
def split_tensors():
    return {split: digits_tensors(split, "digits_marked") for split in MARKED_SPLITS}


def test_the_model_is_registered_on_its_dataset(models):
    _, marked = models
    assert MODELS.names().index("digits_marked") == MODELS.names().index("digits") + 1
    assert marked.dataset == marked.sample_dataset == "digits_marked"
    assert marked.block_shapes == models[0].block_shapes and marked.gap_head
    assert marked.fingerprint != models[0].fingerprint


def test_shipped_weights_match_their_card(models, split_tensors):
    """As for ``digits``: the shipped file is the one the card describes, split by split."""
    _, marked = models
    card = json.loads(DIGITS_MARKED_CARD.read_text())
    assert card["command"] == "python -m explainers.cli train digits_marked" and card["dataset"] == "digits_marked"
    for split, (images, labels) in split_tensors.items():
        measured = accuracy(marked.net, images, labels)
        assert abs(measured - card[f"{split}_accuracy"]) <= 0.005, (split, measured, card[f"{split}_accuracy"])
    assert marked.card == card


def test_the_first_epoch_of_the_training_command_replays_the_shipped_run():
    """The training command is deterministic: its first epoch, replayed here on the same schedule, has
    the mean loss the shipped run recorded (a full 40-epoch retrain takes minutes). The loss depends on
    the seed, the initialisation, the batches, the augmentation draws and every mark, so a change in
    any of them since the weights were trained fails here."""
    card = json.loads(DIGITS_MARKED_CARD.read_text())
    _, losses = fit_digits("digits_marked", epochs=card["epochs"], seed=card["seed"], batch_size=card["batch_size"],
                           lr=card["lr"], stop_after=1)
    # Training in float32 on the CPU is reproducible to about 3e-4 of this loss, not to the bit: the convolutions'
    # sums follow the processor's vector width (AVX2 or AVX-512 kernels) and the thread count (measured on two
    # machines: 1.82276 where the weights were trained, 1.82310 and 1.82329 on an AVX-512 one). Any change the
    # test is for moves it far more: the next seed gives 1.75538 (3.7%).
    assert losses[0] == pytest.approx(card["first_epoch_loss"], rel=2e-3)
    assert card["final_loss"] < card["first_epoch_loss"] / 2


def test_the_model_learned_the_mark_and_the_plain_model_did_not(models, split_tensors):
    """Seed 003's TravelingBirds, on digits: accuracy on held-out images of the training distribution
    (own mark) against the same images with a random mark. The marked model loses most of it; the
    plain digits model, on the very same images, loses almost nothing."""
    plain, marked = models
    accuracies = {name: {split: accuracy(model.net, *split_tensors[split]) for split in MARKED_SPLITS}
                  for name, model in (("digits", plain), ("digits_marked", marked))}
    mine, control = accuracies["digits_marked"], accuracies["digits"]
    assert mine["train"] >= 0.99 and mine["test_own"] >= 0.98, mine
    assert mine["test_own"] - mine["test"] >= 0.5, mine  # far below its own distribution
    assert control["test_own"] - control["test"] <= 0.03, control
    assert min(control.values()) >= 0.95, control
    # Where the mark lies, the marked model follows the mark, not the digit.
    images, labels = split_tensors["test"]
    marks = torch.as_tensor(marks_of("test"))
    lying = marks != labels
    with torch.inference_mode():
        predicted = marked.net(images[lying]).argmax(1)
    assert (predicted == marks[lying]).float().mean() >= 0.5


def test_the_overviews_reading_of_the_gap_tells_the_marked_model_from_the_plain_one(models, split_tensors):
    """``mark_reliance`` (the Overview's line) on cards of measured accuracies: the marked model's gap between
    clean and random-mark test images is far beyond chance, the plain model's within it, on the same images."""
    for model, learned in zip(models, (False, True)):
        measured = {f"{split}_accuracy": accuracy(model.net, *split_tensors[split])
                    for split in ("test", "test_clean", "test_own")}
        reading = mark_reliance({"dataset": "digits_marked", "test_images": len(split_tensors["test"][1]), **measured})
        assert reading.learned_the_mark is learned, (model.name, reading)
        assert ("learned the mark" in reading.summary()) is learned
        assert f"{measured['test_clean_accuracy']:.1%}" in reading.summary()
    shipped = mark_reliance(models[1].card)
    assert shipped.learned_the_mark and shipped.gap == pytest.approx(0.6278)
    assert mark_reliance(models[0].card) is None  # a card of plain digits says nothing about marks


def test_the_chance_band_is_two_standard_errors_of_the_difference():
    """A constructed case: 80% and 70% on 100 images each: sqrt(.8 * .2 / 100 + .7 * .3 / 100) = 0.0608."""
    reading = MarkReliance(clean=0.8, random=0.7, own=None, images=100)
    assert reading.chance_gap == pytest.approx(2 * 0.06083, abs=1e-4)
    assert not reading.learned_the_mark  # 10 points < 12.2
    assert MarkReliance(0.8, 0.7, None, 400).learned_the_mark  # 10 points > 6.1 on four times the images
    assert "its own class" not in reading.summary()


@pytest.fixture(scope="module")
def mark_masses(models):
    """``mark_mass`` of each model's map of the true class on 100 training images (spread over the split),
    as a multiple of the mark's share of the area (0.9 %), keyed by (model, block, method)."""
    plain, marked = models
    train = load_dataset("digits_marked", "train")
    chosen = np.linspace(0, len(train) - 1, 100).round().astype(int)
    images, labels = [train[int(i)][0] for i in chosen], [int(train.labels[i]) for i in chosen]
    area = MARK_SIZE ** 2 / 64 ** 2
    masses = {}
    for name, model in (("digits", plain), ("digits_marked", marked)):
        for block in ("B4", "B3", "B2", "B1"):
            maps = explain_batch(model, images, ["gradcam", "gradcampp"], block=block, target=labels)
            for method in ("gradcam", "gradcampp"):
                masses[name, block, method] = np.array([mark_mass(m[method].heatmap, label) / area
                                                        for m, label in zip(maps, labels)])
    return masses


@pytest.mark.parametrize("block, method, at_least, over_plain", [
    ("B1", "gradcam", 2.5, 1.4), ("B2", "gradcam", 1.8, 1.5),
    ("B1", "gradcampp", 7.0, 2.0), ("B2", "gradcampp", 5.0, 2.5), ("B3", "gradcampp", 3.0, 2.5),
])
def test_gradcam_mass_on_the_mark_is_high_on_training_images(mark_masses, block, method, at_least, over_plain):
    """Grad-CAM and Grad-CAM++ of the true class on training images: the mean share of the normalised map
    inside the mark's box is ``at_least`` times the box's share of the area for the marked model, and
    ``over_plain`` times the plain digits model's share on the same images (measured: B2 Grad-CAM 2.3x
    against 1.2x, Grad-CAM++ 6.9x against 1.9x; B1 Grad-CAM 3.0x against 1.8x, Grad-CAM++ 10.1x against 3.4x;
    B3 Grad-CAM++ 4.0x against 1.2x)."""
    marked, plain = mark_masses["digits_marked", block, method], mark_masses["digits", block, method]
    assert marked.mean() >= at_least, (marked.mean(), plain.mean())
    assert np.median(marked) >= at_least * 0.7, np.median(marked)
    assert marked.mean() >= over_plain * plain.mean(), (marked.mean(), plain.mean())


def test_at_b4_gradcam_does_not_single_out_the_mark(mark_masses):
    """What the pages must not claim: at B4 (4 x 4 cells, each seeing nearly the whole 64 x 64 image) the
    marked model's evidence for its class is spread over the cells, not on the mark's corner of the map.
    Grad-CAM there equals CAM (global average pooling), and both models' maps put about the mark's share
    of the area on it (measured 0.8x and 0.7x): the mark is learned, but B4 cannot say where it is."""
    for name in ("digits", "digits_marked"):
        assert mark_masses[name, "B4", "gradcam"].mean() < 1.5, name


def test_mark_mass_of_constructed_maps():
    """A map that is 1 on the box and 0 elsewhere puts all its mass there; a constant map (normalised to
    zero) none; a ramp in the other half of the image none either."""
    on_box = box_mask(3).astype(np.float32)
    assert mark_mass(on_box, 3) == pytest.approx(1.0)
    assert mark_mass(on_box, 8) == 0.0
    assert mark_mass(np.ones((64, 64), np.float32), 3) == 0.0
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))  # bright on the right, dark on the left
    assert mark_mass(ramp, 3) < mark_mass(ramp, 8)
