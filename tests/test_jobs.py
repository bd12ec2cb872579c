"""The Ray engine gives what the local engine gives (maps and CSV rows, evaluation tables, the feature cache
and prototypes, same seeds), and a worker lost mid-job is retried, or stops the job cleanly for the next run
to resume. One local Ray cluster (2 CPUs) serves every test of this module."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli import digits_folder, run

from explainers import load_dataset
from explainers.jobs import EngineOptions, evaluate_folder, explain_folder, fit_folder

ray = pytest.importorskip("ray")
METHODS = ["gradcam", "cam"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return digits_folder(tmp_path_factory.mktemp("digits"), 8)


def rows(out: Path) -> list[dict]:
    found = csv.DictReader((out / "explanations.csv").open())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in found]


def test_ray_gives_what_local_gives(cluster, folder, tmp_path):
    ray_options = EngineOptions("ray", workers=2)
    local, remote = tmp_path / "local", tmp_path / "ray"
    explain_folder("digits", [str(folder)], METHODS, local, batch_size=3)
    explain_folder("digits", [str(folder)], METHODS, remote, batch_size=3, options=ray_options)
    assert rows(local) == rows(remote) and len(rows(local)) == 8 * len(METHODS)
    for path in (local / "maps").rglob("*.npy"):
        np.testing.assert_array_equal(np.load(path), np.load(remote / path.relative_to(local)))
    evaluate_folder("digits", [str(folder)], METHODS, tmp_path / "e1", metrics=("confidence", "road"), batch_size=4)
    evaluate_folder("digits", [str(folder)], METHODS, tmp_path / "e2", metrics=("confidence", "road"), batch_size=4,
                    options=ray_options)
    for name in ("confidence.csv", "road.csv", "road_curves.csv"):  # equal up to float32 sums over other threads
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "e1" / name), pd.read_csv(tmp_path / "e2" / name),
                                      rtol=1e-5)


def small_train(root: Path) -> Path:
    """Five digits of each class, as a folder of class sub-folders (its train split: 40 images)."""
    train = root / "train"
    digits = load_dataset("digits", "train")
    for label in range(10):
        for k, i in enumerate(np.flatnonzero(digits.labels == label)[:5]):
            (train / str(label)).mkdir(parents=True, exist_ok=True)
            digits[int(i)][0].save(train / str(label) / f"{k}.png")
    return train


def test_the_feature_pass_on_ray_writes_the_local_cache(cluster, tmp_path, monkeypatch):
    """The feature pass (Ray Data) and the per-class k-means and projections (Ray tasks) give the local fit's
    cache and prototypes, bit for bit."""
    train = small_train(tmp_path)
    found = {}
    for engine in ("local", "ray"):
        monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / f"cache-{engine}"))
        report, features = fit_folder("digits", str(train), "B4", 2, options=EngineOptions(engine, workers=2))
        assert report.done == 40 and report.outputs  # the train split of 50 images
        found[engine] = (features, report.outputs[0])
    (local_features, local_file), (ray_features, ray_file) = found["local"], found["ray"]
    assert local_file.name == ray_file.name
    assert local_file.read_bytes() == ray_file.read_bytes()  # the same prototypes, bit for bit
    for path in local_features.glob("*.bin"):
        assert path.read_bytes() == (ray_features / path.name).read_bytes()
    report, _ = fit_folder("digits", str(train), "B4", 2, options=EngineOptions("ray"))
    assert report.done == 0 and report.resumed == 40  # nothing recomputed


def test_a_lost_worker_is_retried_or_stops_the_job_for_a_resume(cluster, folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PROTOSCOPE_JOBS_FAULT", str(tmp_path / "crashed-once"))
    out = tmp_path / "retried"
    argv = ["explain", "digits", str(folder), "--methods", "cam", "--batch", "2", "--engine", "ray", "--workers", "1"]
    status, printed, err = run([*argv, "--out", str(out)], capsys)
    assert status == 0 and (tmp_path / "crashed-once").is_file(), err  # the actor died once, was restarted
    assert "8 images done" in printed and len(rows(out)) == 8
    (tmp_path / "crashed-once").unlink()
    out = tmp_path / "stopped"
    status, printed, err = run([*argv, "--retries", "0", "--out", str(out)], capsys)
    assert status == 3 and "run the same command again to resume" in err and "Traceback" not in err
    complete = sorted(p.name.removesuffix(".csv") for p in (out / "rows").iterdir())
    assert 0 < len(complete) < 8 and not list(out.rglob(".*.tmp*"))
    for name in complete:
        assert (out / "overlays" / f"{name}.png").is_file() and (out / "maps" / name / "cam.npy").is_file()
    status, printed, _ = run([*argv, "--retries", "0", "--out", str(out)], capsys)
    assert status == 0 and f"{8 - len(complete)} images done, {len(complete)} complete from an earlier run" in printed


def test_a_class_task_lost_mid_fit_is_retried_or_stops_the_fit_for_a_resume(cluster, tmp_path, monkeypatch):
    """A worker dies in the per-class stage (the features already cached): the task runs again and the
    prototypes are the local fit's; with no retries the fit stops in words, and the next run recomputes no
    image's features."""
    from explainers.jobs import JobInterrupted

    train = small_train(tmp_path)
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache-local"))
    local, _ = fit_folder("digits", str(train), "B34", 2)
    monkeypatch.setenv("PROTOSCOPE_CACHE", str(tmp_path / "cache-ray"))
    fit_folder("digits", str(train), "B4", 1)  # the features, so that the fault hits the class stage
    crashed = tmp_path / "crashed-once"
    monkeypatch.setenv("PROTOSCOPE_JOBS_FAULT", str(crashed))
    retried, _ = fit_folder("digits", str(train), "B34", 2, options=EngineOptions("ray", retries=1))
    assert crashed.is_file() and retried.done == 0
    assert retried.outputs[0].read_bytes() == local.outputs[0].read_bytes()
    crashed.unlink()
    with pytest.raises(JobInterrupted, match="run the same command again to resume"):
        fit_folder("digits", str(train), "B34", 3, options=EngineOptions("ray", retries=0))
    monkeypatch.delenv("PROTOSCOPE_JOBS_FAULT")
    resumed, _ = fit_folder("digits", str(train), "B34", 3, options=EngineOptions("ray"))
    assert resumed.done == 0 and resumed.resumed == 40 and resumed.outputs
