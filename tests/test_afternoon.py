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


# --- Item 2: a folder of one class --------------------------------------------------------------------

def test_qsenn_refuses_one_class_in_words_before_any_work(tmp_path):
    from explainers import load_model
    from explainers.data import image_folder
    from explainers.fitted import QSENN
    from explainers.runtime import DatasetError

    folder = class_folders(tmp_path / "one", ["3"], per_class=6)
    with pytest.raises(DatasetError, match="at least two classes.*'?3'?"):
        QSENN(n_features=5).fit(load_model("digits"), image_folder(folder, "train"))


def test_the_concepts_page_says_a_one_class_folder_cannot_be_fitted(tmp_path):
    folder = class_folders(tmp_path / "one", ["b"], per_class=6)
    app = page("pages/concepts.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("three.pt", named_checkpoint(list("abc")),
                                                    "application/octet-stream").run()
    app.text_input(key="train_folder").set_value(str(folder)).run()
    assert not app.exception, app.exception
    errors = [e.value for e in app.error]
    assert any("at least two classes" in e and "(b)" in e for e in errors), errors


# --- Item 7: one source of class names ----------------------------------------------------------------

def plain_checkpoint(classes: int = 3) -> bytes:
    import io

    import torch

    from explainers.cli import DigitsResNet

    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(DigitsResNet(num_classes=classes).state_dict(), buffer)
    return buffer.getvalue()


def segments_of_a_plain_checkpoint(tmp_path):
    """The Segments page of an uploaded plain checkpoint of three classes, with a named folder (coffee, milk, tea)
    as its training images, at K/C = 1."""
    folder = class_folders(tmp_path / "drinks", ["coffee", "milk", "tea"], per_class=8)
    app = page("pages/segments.py", model="checkpoint")
    app.file_uploader(key="checkpoint_file").upload("plain.pt", plain_checkpoint(), "application/octet-stream").run()
    app.text_input(key="train_folder").set_value(str(folder)).run()
    app.select_slider(key="per_class").set_value(1).run()
    return app


def test_a_plain_checkpoint_takes_its_folders_class_names_on_every_page_without_renaming_the_shared_model(tmp_path):
    import ui.cache

    app = segments_of_a_plain_checkpoint(tmp_path)
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    selection = app.session_state["_selection"]
    assert selection.model.classes == ["coffee", "milk", "tea"]
    shared = ui.cache.get_checkpoint_model(plain_checkpoint(), "plain.pt", None, str(selection.model.device))
    assert shared.classes == ["0", "1", "2"] and shared is not selection.model  # another session's model unchanged
    assert shared.fingerprint == selection.model.fingerprint
    assert any("take their names on every page" in c.value for c in app.caption)
    texts = " ".join(m.value for m in [*app.markdown, *app.caption, *app.subheader])
    assert "class coffee" in texts or "class milk" in texts or "class tea" in texts, texts
    counts = app.get("plotly_chart")[0].proto.spec
    assert '"coffee"' in counts and '"tea"' in counts
    top = selection.top[0][0]
    assert selection.model.class_name(top) in ("coffee", "milk", "tea")


def test_segments_states_a_difference_between_the_network_and_the_prototypes_as_a_finding(tmp_path):
    app = segments_of_a_plain_checkpoint(tmp_path)
    seen = set()
    for index in range(12):
        app.number_input(key="index").set_value(index).run()
        assert not app.exception, app.exception
        selection = app.session_state["_selection"]
        network = selection.model.class_name(selection.top[0][0])
        title = next(t for t in app.get("plotly_chart")[0].proto.spec.split('"text":"')[1:]
                     if t.startswith("pixels per class")).split('"')[0]
        majority = title.split("predicts ")[1].split(" (eq. 10)")[0]
        findings = [i.value for i in app.info if "the prototypes' majority" in i.value]
        if network == majority:
            assert not findings, (index, findings)
        else:
            assert len(findings) == 1 and findings[0].startswith(
                f"**The network predicts {network}; the prototypes' majority at B4 is {majority}**"), findings
        seen.add(network == majority)
        if seen == {True, False}:
            break
    assert False in seen, "no image where the two differ: the finding was never exercised"


# --- Item 8: messages that read as sentences ------------------------------------------------------------

def test_a_truncated_checkpoint_is_called_truncated_with_what_to_do(tmp_path):
    from explainers import load_model
    from explainers.runtime import CheckpointError

    data = plain_checkpoint()
    for name, cut in (("half.pt", data[: len(data) // 2]), ("empty.pt", b"")):
        (tmp_path / name).write_bytes(cut)
        with pytest.raises(CheckpointError) as caught:
            load_model(tmp_path / name, arch="digits")
        message = str(caught.value)
        assert "truncated or corrupt" in message and "again" in message and "(RuntimeError)" not in message, message
        assert message.startswith(name)


def test_the_misfit_message_is_sentences_with_counts_in_the_right_number(tmp_path):
    import torch

    from explainers import load_model
    from explainers.cli import DigitsResNet
    from explainers.runtime import CheckpointError

    state = DigitsResNet(num_classes=10).state_dict()
    del state["bn1.bias"]
    torch.save(state, tmp_path / "one_missing.pt")
    with pytest.raises(CheckpointError) as caught:
        load_model(tmp_path / "one_missing.pt", arch="digits")
    message = str(caught.value)
    assert "1 parameter missing (e.g. bn1.bias)." in message, message
    assert "1 parameters" not in message


def test_a_nameless_model_and_a_folder_of_another_count_say_1_class_not_1_classes(tmp_path):
    from explainers import load_model
    from explainers.data import image_folder
    from explainers.fitted import class_map

    (tmp_path / "plain.pt").write_bytes(plain_checkpoint(3))
    folder = class_folders(tmp_path / "one", ["coffee"], per_class=2)
    with pytest.raises(UserInputError) as caught:
        class_map(load_model(tmp_path / "plain.pt", arch="digits"), image_folder(folder, "train"))
    assert "1 class for 3" in str(caught.value) and "1 classes" not in str(caught.value)


def test_the_concepts_table_shows_a_dash_and_says_why_instead_of_none(monkeypatch):
    import ui.concepts

    real = ui.concepts.table

    def with_a_gap(*args, **kwargs):
        rows = [dict(row) for row in real(*args, **kwargs)]
        rows[1]["diversity@5 test (%)"] = None  # as concept_table gives a layer whose classes have < 5 features
        return rows

    monkeypatch.setattr(ui.concepts, "table", with_a_gap)
    app = page("pages/concepts.py", model="digits")
    assert not app.exception and not app.error
    (table,) = app.dataframe
    values = table.value.astype(str).to_numpy().ravel().tolist()
    assert "None" not in values and "nan" not in values and "—" in values
    assert any("— in diversity@5 test (%): no image's predicted class has five features" in c.value
               for c in app.caption)


# --- Every page open in seconds: what is heavy runs when asked ------------------------------------------

def test_cluster_cam_runs_score_cam_only_when_asked(monkeypatch):
    import ui.cache

    asked = []
    real = ui.cache.explanations

    def counted(model_key, model, data, methods, *args, **kwargs):
        asked.append(tuple(methods))
        return real(model_key, model, data, methods, *args, **kwargs)

    monkeypatch.setattr(ui.cache, "explanations", counted)
    app = page("pages/clustercam.py", model="digits")
    assert not app.error and asked and all("scorecam" not in methods for methods in asked)
    finals = [m.value for m in app.markdown if m.value.startswith(("**Cluster-CAM**", "**Grad-CAM**", "**Score-CAM**"))]
    assert [f.split(" ·")[0] for f in finals] == ["**Cluster-CAM**", "**Grad-CAM**"]
    app.toggle(key="cc_scorecam").set_value(True).run()
    assert not app.exception and not app.error
    assert "scorecam" in asked[-1]
    finals = [m.value for m in app.markdown if m.value.startswith(("**Cluster-CAM**", "**Grad-CAM**", "**Score-CAM**"))]
    assert finals[-1].startswith("**Score-CAM** · ")
