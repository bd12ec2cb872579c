"""The ``protoscope`` command on the local engine: its outputs equal the library's, bad input is one clear
line and a non-zero exit (no traceback, nothing lost), a stopped job resumes. Small: the built-in digits
model and a dozen digits PNGs."""
from __future__ import annotations

import csv
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from explainers import explain_many, load_dataset, load_image, load_model
from explainers.cli import main
from explainers.evaluation import EvaluationSettings, evaluate
from explainers.models import MODELS
from explainers.runtime import HOME

METHODS = ["gradcam", "cam"]


def digits_folder(root: Path, count: int, bad: bool = False) -> Path:
    """``count`` test digits as PNGs in class sub-folders (spread over the split), and an unreadable file."""
    test = load_dataset("digits", "test")
    for i in np.linspace(0, len(test) - 1, count).round().astype(int):
        image, label = test[int(i)]
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        image.save(root / str(label) / f"{i:03d}.png")
    if bad:
        (root / "broken.png").write_bytes(b"not an image at all")
    return root


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        status = 0
    except SystemExit as stop:
        status = int(stop.code or 0)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"), 10, bad=True)


def test_explain_writes_what_explain_many_gives_and_lists_unreadable_files(folder, tmp_path, capsys):
    out = tmp_path / "out"
    status, printed, _ = run(["explain", "digits", str(folder), "--methods", ",".join(METHODS), "--out", str(out),
                              "--batch", "4"], capsys)
    assert status == 0
    assert "10 images done" in printed and "1 unreadable, left out: broken.png" in printed
    rows = list(csv.DictReader((out / "explanations.csv").open()))
    assert len(rows) == 10 * len(METHODS)
    assert (out / "skipped.tsv").read_text().splitlines()[1].startswith("broken.png\t")
    model = load_model("digits")
    for name in sorted({row["image"] for row in rows}):
        expected = explain_many(model, load_image(folder / name.replace("__", "/")), METHODS, block="B4")
        for row in (r for r in rows if r["image"] == name):
            one = expected[row["method"]]
            assert (int(row["class"]), row["block"], int(row["forwards"]), int(row["backwards"])) == (
                one.target, one.block, one.forwards, one.backwards)
            raw = np.load(out / "maps" / name / f"{row['method']}.npy")
            np.testing.assert_allclose(raw, one.raw, rtol=1e-4, atol=1e-6)
        assert (out / "overlays" / f"{name}.png").stat().st_size > 0


def test_a_stopped_job_keeps_whole_files_and_resumes(folder, tmp_path, capsys, monkeypatch):
    from explainers.jobs import work

    real = work.explain_images
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(work, "explain_images", interrupted)
    out = tmp_path / "out"
    argv = ["explain", "digits", str(folder), "--methods", "cam", "--out", str(out), "--batch", "3"]
    status, _, err = run(argv, capsys)
    assert status == 130 and "run the same command again to resume" in one_line(err)
    done = sorted(p.name for p in (out / "rows").iterdir())
    assert len(done) == 3 and not list(out.rglob(".*.tmp*"))
    for name in done:  # every image counted complete has all of its files
        stem = name.removesuffix(".csv")
        assert (out / "overlays" / f"{stem}.png").is_file() and (out / "maps" / stem / "cam.npy").is_file()
    monkeypatch.setattr(work, "explain_images", real)
    status, printed, _ = run(argv, capsys)
    assert status == 0 and "7 images done, 3 complete from an earlier run (skipped)" in printed


def test_an_output_folder_of_something_else_is_not_overwritten(folder, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    first = next(p for p in sorted(folder.iterdir()) if p.is_dir())
    argv = ["explain", "digits", str(first), "--methods", "cam", "--out", str(out)]
    status, _, err = run(argv, capsys)
    assert status == 1 and "--overwrite" in one_line(err)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    status, _, _ = run([*argv, "--overwrite"], capsys)
    assert status == 0 and (out / "notes.txt").read_text() == "mine" and (out / "explanations.csv").is_file()
    status, _, err = run([*argv[:4], "gradcam", *argv[5:]], capsys)  # other settings: refused again
    assert status == 1 and "another job" in one_line(err)


def test_an_unknown_method_is_refused_with_the_known_ones(folder, tmp_path, capsys):
    status, _, err = run(["explain", "digits", str(folder), "--methods", "gradcam,gradcan", "--out",
                          str(tmp_path / "out")], capsys)
    line = one_line(err)
    assert status == 1 and "'gradcan'" in line and "gradcampp" in line and "scorecam" in line
    assert not (tmp_path / "out").exists()


def test_a_ray_address_that_does_not_answer_is_a_clear_message(folder, tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    status, _, err = run(["explain", "digits", str(folder), "--methods", "cam", "--out", str(tmp_path / "out"),
                          "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--timeout", "1"], capsys)
    assert status == 1 and f"127.0.0.1:{port} does not answer" in one_line(err)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_evaluate_writes_the_evaluation_pages_tables(folder, tmp_path, capsys):
    out = tmp_path / "eval"
    status, _, _ = run(["evaluate", "digits", str(folder), "--methods", ",".join(METHODS), "--metrics",
                        "confidence,deletion", "--steps", "10", "--out", str(out)], capsys)
    assert status == 0
    images = [load_image(p) for p in sorted(folder.rglob("*.png")) if p.name != "broken.png"]
    expected = evaluate(load_model("digits"), images, METHODS, "B4", metrics=("confidence", "deletion"),
                        settings=EvaluationSettings(steps=10, blur_sigma=20.0))
    pd.testing.assert_frame_equal(pd.read_csv(out / "confidence.csv"), expected.confidence_table(), check_exact=False)
    pd.testing.assert_frame_equal(pd.read_csv(out / "auc.csv"), expected.auc_table(), check_exact=False)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    status, printed, _ = run(["evaluate", "digits", str(folder), "--methods", ",".join(METHODS), "--metrics",
                              "confidence,deletion", "--steps", "10", "--out", str(out)], capsys)
    assert status == 0 and "10 complete from an earlier run" in printed


def test_sanity_writes_its_table_curves_and_flags(folder, tmp_path, capsys):
    out = tmp_path / "sanity"
    first = next(p for p in sorted(folder.iterdir()) if p.is_dir())
    status, _, err = run(["sanity", "digits", str(first), "--methods", "gradcam,spectral_residual",
                        "--out", str(out)], capsys)
    assert status == 0, err
    table = pd.read_csv(out / "sanity.csv")
    assert set(table.method) == {"gradcam", "spectral_residual"}
    assert "Spectral residual" in (out / "flags.txt").read_text()


def test_app_starts_streamlit_on_the_shipped_app(monkeypatch, capsys):
    called = {}
    monkeypatch.setattr(subprocess, "call", lambda command, cwd: called.update(command=command, cwd=cwd) or 0)
    status, _, _ = run(["app", "--server.port", "8600"], capsys)
    assert status == 0
    assert called["command"][1:] == ["-m", "ui.serve", "--server.port", "8600"] and called["cwd"] == HOME
    import ui.serve  # streamlit run on the shipped app.py, warmed with the sidebar's default model

    assert ui.serve.DEFAULT_MODEL in MODELS.names()


def test_the_shipping_commands_are_still_there(capsys):
    for command in ("train", "prototypes", "qsenn"):
        status, printed, _ = run([command, "--help"], capsys)
        assert status == 0 and "digits" in printed


def test_the_console_script_is_the_same_main():
    text = (HOME / "pyproject.toml").read_text()
    assert 'protoscope = "explainers.cli:main"' in text and 'ray = ["ray[data]>=2.60"]' in text
