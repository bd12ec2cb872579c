"""Fitted files shipped for more than one built-in model (``python -m explainers.cli prototypes|qsenn <model>``):
shipping one model replaces its own earlier files and leaves every other model's alone; digits_marked ships
its prototypes and Q-SENN layer like digits, so its Segments, Prototypes and Concepts pages fit nothing on a
fresh machine."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import page_test

import explainers.fitted.alignment as alignment
from explainers import load_dataset, load_model
from explainers.cli import (
    SHIPPED_FIGURE2_CLASSES,
    SHIPPED_FITS,
    SHIPPED_MANIFEST,
    SHIPPED_PER_CLASS,
    record_shipped,
    ship_qsenn,
)
from explainers.fitted import store
from explainers.fitted.alignment import (
    accuracy_filename,
    accuracy_models,
    alignment_filename,
    alignment_models,
    projection_filename,
)
from explainers.fitted.prototypes import SHIPPED as SHIPPED_PROTOTYPES
from explainers.fitted.prototypes import PrototypeExplainer, PrototypeRecipe
from explainers.fitted.qsenn import CONCEPT_SPLITS, QSENN, QSENNRecipe, concept_table_filename
from explainers.fitted.store import ASSETS, Store

REPO = Path(__file__).resolve().parents[1]
SHIPPED_QSENN = ASSETS / "qsenn"
MODELS = ("digits", "digits_marked")


def write(folder: Path, name: str) -> Path:
    (folder / name).write_bytes(name.encode())
    return folder / name


def test_shipping_one_model_removes_its_own_stale_files_and_leaves_another_models(tmp_path, capsys):
    digits_b4, digits_table = write(tmp_path, "B4-k5-aaaa.npz"), write(tmp_path, "table1-aaaa.json")
    assert record_shipped(tmp_path, "digits", [digits_b4, digits_table]) == []
    marked_b4 = write(tmp_path, "B4-k5-bbbb.npz")
    assert record_shipped(tmp_path, "digits_marked", [marked_b4]) == []
    assert digits_b4.is_file() and digits_table.is_file()  # the other model's files: kept
    # digits again, from new weights: its B4 file has a new name, the old one goes; digits_marked's stays
    new_b4 = write(tmp_path, "B4-k5-cccc.npz")
    assert record_shipped(tmp_path, "digits", [new_b4, digits_table]) == [digits_b4]
    assert not digits_b4.exists() and all(p.is_file() for p in (new_b4, digits_table, marked_b4))
    assert json.loads((tmp_path / SHIPPED_MANIFEST).read_text()) == {
        "digits": sorted([new_b4.name, digits_table.name]), "digits_marked": [marked_b4.name]}
    # a file no model names (shipped before there was a manifest) is reported, never removed
    orphan = write(tmp_path, "post-hoc-0000.npz")
    capsys.readouterr()
    assert record_shipped(tmp_path, "digits_marked", [marked_b4]) == []
    assert orphan.is_file() and "post-hoc-0000.npz" in capsys.readouterr().out
    # a file both name (cannot happen with hashed keys, but never delete what another model ships)
    record_shipped(tmp_path, "digits_marked", [marked_b4, digits_table])
    record_shipped(tmp_path, "digits_marked", [marked_b4])
    assert digits_table.is_file()


def test_shipping_a_q_senn_layer_keeps_the_other_models_layer(tmp_path, monkeypatch):
    """``ship_qsenn`` end to end into a copy of assets/qsenn/ (the fit replaced by reading the shipped layer:
    the fit itself is tests/test_qsenn.py's): digits_marked's layer is written under the name its key gives,
    the manifest names it, and digits' shipped layer is still there, byte for byte."""
    for path in SHIPPED_QSENN.iterdir():
        shutil.copy(path, tmp_path / path.name)
    manifest = json.loads((tmp_path / SHIPPED_MANIFEST).read_text())
    digits_files = manifest["digits"]
    marked_files = manifest.pop("digits_marked")  # its layer and the Concepts page's Table 1 of it
    marked_layer = marked_files[0]
    for name in marked_files:
        (tmp_path / name).unlink()
    (tmp_path / SHIPPED_MANIFEST).write_text(json.dumps(manifest))
    model = load_model("digits_marked")
    monkeypatch.setattr(QSENN, "fit", lambda self, *a, **k: QSENN.load(SHIPPED_QSENN / marked_layer, model))
    written = ship_qsenn("digits_marked", out=tmp_path)
    assert written.name == marked_layer
    assert json.loads((tmp_path / SHIPPED_MANIFEST).read_text()) == manifest | {"digits_marked": marked_files}
    for name in marked_files[1:]:  # the table is the one shipped, to the byte
        assert (tmp_path / name).read_bytes() == (SHIPPED_QSENN / name).read_bytes()
    for name in digits_files:
        assert (tmp_path / name).read_bytes() == (SHIPPED_QSENN / name).read_bytes()


@pytest.mark.parametrize("folder, models", [(SHIPPED_PROTOTYPES, (*MODELS, "digits_vit")),
                                            (SHIPPED_QSENN, (*MODELS, "digits_vit"))])
def test_every_shipped_file_is_one_models_and_small(folder, models):
    manifest = json.loads((folder / SHIPPED_MANIFEST).read_text())
    assert sorted(manifest) == sorted(models)
    named = [name for names in manifest.values() for name in names]
    assert len(named) == len(set(named)), "a file named by two models"
    on_disk = {path.name for path in folder.iterdir()} - {SHIPPED_MANIFEST}
    assert on_disk == set(named), f"files no model ships, or shipped files missing, in {folder}"
    for model, names in manifest.items():
        assert sum((folder / name).stat().st_size for name in names) < 1_000_000, model


def test_digits_marked_ships_the_files_of_its_current_weights():
    """What its pages ask for by default is shipped, under the keys of the weights in assets/ (as for digits)."""
    model = load_model("digits_marked")
    train, test = load_dataset("digits_marked", "train"), load_dataset("digits_marked", "test")
    names = set(json.loads((SHIPPED_PROTOTYPES / SHIPPED_MANIFEST).read_text())["digits_marked"])
    fits = {}
    for depth, per_class in SHIPPED_FITS:
        name = PrototypeRecipe(model, train, PrototypeExplainer(depth, per_class)).filename  # the defaults' file
        assert name in names, f"no {depth} K/C={per_class}: run python -m explainers.cli prototypes digits_marked"
        fits[depth, per_class] = PrototypeExplainer.load(SHIPPED_PROTOTYPES / name)
    kmex1, kmex = fits["pooled", 1], fits["pooled", SHIPPED_PER_CLASS]
    b4, b234 = fits["B4", SHIPPED_PER_CLASS], fits["B234", SHIPPED_PER_CLASS]
    assert alignment_filename(model, train, alignment_models(kmex1, kmex)) in names
    assert accuracy_filename(model, train, test, accuracy_models(kmex, b4, b234)) in names
    assert projection_filename(model, train, test, kmex, SHIPPED_FIGURE2_CLASSES) in names
    layers = json.loads((SHIPPED_QSENN / SHIPPED_MANIFEST).read_text())["digits_marked"]
    assert layers[0] == QSENNRecipe(model, train, QSENN()).filename, "run python -m explainers.cli qsenn digits_marked"
    layer = QSENN.load(SHIPPED_QSENN / layers[0], model)
    splits = {name: load_dataset("digits_marked", name) for name in ("train", *CONCEPT_SPLITS)}
    assert layers[1:] == [concept_table_filename(layer, splits)], "its Table 1 ships with it (the Concepts page)"


@pytest.mark.parametrize("model, path", [("digits_marked", "pages/segments.py"), ("digits_marked", "pages/prototypes.py"),
                                         ("digits_marked", "pages/concepts.py"), ("digits_vit", "pages/concepts.py")])
def test_pages_open_from_the_shipped_files(model, path, tmp_path, monkeypatch):
    """A fresh machine (an empty cache, a new store): no prototype or Q-SENN fit, no embedding, no UMAP."""
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path))
    fresh = Store()
    monkeypatch.setattr(store, "STORE", fresh)
    monkeypatch.setattr(PrototypeExplainer, "fit", lambda *a, **k: pytest.fail("fitted prototypes"))
    monkeypatch.setattr(QSENN, "fit", lambda *a, **k: pytest.fail("fitted a Q-SENN layer"))
    import ui.prototype_cache
    from explainers.fitted.qsenn import table as qsenn_table

    for module, name in ((alignment, "embeddings"), (alignment, "projection"), (alignment, "accuracy_table"),
                         (alignment, "alignment_table"), (ui.prototype_cache, "embeddings"),
                         (qsenn_table, "concept_table")):  # Concepts' Table 1 ships with its layer
        monkeypatch.setattr(module, name, lambda *a, _name=name, **k: pytest.fail(f"computed {_name}"))
    app = page_test(path, 120)
    app.query_params.update(model=model, split="train", cls="3", index="0")
    app.run()
    assert not app.exception and not app.error, (app.exception, [e.value for e in app.error])
    assert app.subheader, "the page drew nothing"
    kinds = {key.kind for key in store.STORE.keys()}
    assert kinds == ({"qsenn"} if path.endswith("concepts.py") else {"prototypes"}), kinds  # read, not fitted
