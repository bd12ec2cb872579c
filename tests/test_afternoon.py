"""Issue 21 (continued): a domain expert's own checkpoint and folders, and a lecture's first minute.

A folder with some of the model's classes, a folder of one class, one source of class names, and
messages that read as sentences.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_app import class_folders, named_checkpoint, page

from explainers import UserInputError
from explainers.fitted.alignment import place_by_distances

# --- Item 1: a training folder with some of the model's classes ---------------------------------------


def test_the_prototypes_page_projects_the_classes_that_have_images(tmp_path):
    folder = class_folders(tmp_path / "some", ["a", "b", "f"], per_class=8)  # c, d, e: no images
    app = page("pages/prototypes.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("six.pt", named_checkpoint(list("abcdef")),
                                                    "application/octet-stream").run()
    app.text_input(key="train_folder").set_value(str(folder)).run()
    app.select_slider(key="per_class").set_value(1).run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    chosen = app.multiselect(key="proto_classes")
    assert chosen.value == [0, 1, 5] and chosen.options == ["a", "b", "f"]


def test_a_placement_against_a_class_without_images_is_refused_in_words_or_skips_it():
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(3, 8))
    anchors_xy = rng.normal(size=(3, 2))
    points = rng.normal(size=(2, 8)) * 5
    with_empty = np.vstack([anchors, np.full((1, 8), np.nan)])
    with_empty_xy = np.vstack([anchors_xy, np.full((1, 2), np.nan)])
    placed = place_by_distances(points, with_empty, with_empty_xy)  # the class without a centre is left out
    np.testing.assert_allclose(placed, place_by_distances(points, anchors, anchors_xy))
    with pytest.raises(UserInputError, match="no training images"):
        place_by_distances(points, np.full((2, 8), np.nan), np.full((2, 2), np.nan))
