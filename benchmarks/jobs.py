"""protoscope explain over N digits (default 1,000): resident memory after warm-up (flat within 10%?), time per
image against the dashboard's shared pass (explain_many per image; target ratio <= 1.2), and on a local Ray
cluster the feature pass's and the per-class stage's throughput with one and two CPUs. Prints; asserts nothing.

    .venv/bin/python benchmarks/jobs.py [--images 1000] [--methods gradcam,cam,layercam] [--no-ray]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from explainers import explain_many, load_dataset, load_image, load_model
from explainers.fitted.features import FeatureCache
from explainers.fitted.prototypes import PrototypeExplainer
from explainers.fitted.prototypes.kmeans import KMEANS_WORKERS
from explainers.jobs import EngineOptions, explain_folder, ray_class_runner, ray_feature_pass
from explainers.jobs.features import feature_names


def write_digits(root: Path, count: int) -> list[Path]:
    digits = [load_dataset("digits", s) for s in ("train", "test")]
    paths = []
    for n in range(count):
        dataset = digits[n % 2]
        image, label = dataset[(n // 2) % len(dataset)]
        path = root / str(label) / f"{n:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        paths.append(path)
    return paths


def rss_samples(stop: threading.Event, samples: list[tuple[float, int]]) -> None:
    process = psutil.Process()
    while not stop.is_set():
        samples.append((time.perf_counter(), process.memory_info().rss))
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--methods", default="gradcam,cam,layercam")
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    methods = args.methods.split(",")
    scratch = Path(tempfile.mkdtemp(prefix="protoscope-bench-jobs-"))
    paths = write_digits(scratch / "images", args.images)
    model = load_model("digits", device="cpu")
    # The dashboard's way: explain_many per image (one shared trace each).
    explain_many(model, load_image(paths[0]), methods)
    started = time.perf_counter()
    for path in paths[:min(len(paths), 300)]:
        explain_many(model, load_image(path), methods)
    dashboard = (time.perf_counter() - started) / min(len(paths), 300)
    # The command's way, resident memory sampled throughout.
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=rss_samples, args=(stop, samples), daemon=True)
    sampler.start()
    started = time.perf_counter()
    explain_folder("digits", [str(scratch / "images")], methods, scratch / "out")
    command = (time.perf_counter() - started) / len(paths)
    stop.set()
    sampler.join()
    rss = np.array([r for _, r in samples], dtype=float)
    warm = rss[len(rss) // 5:] if len(rss) >= 5 else rss
    print(f"explain, {len(paths):,} digits, {', '.join(methods)} at B4 (CPU, {os.cpu_count()} cores, load "
          f"{os.getloadavg()[0]:.1f})")
    print(f"  per image: command {1000 * command:.1f} ms (every file written), dashboard's explain_many "
          f"{1000 * dashboard:.1f} ms  -> ratio {command / dashboard:.2f} (target <= 1.2)")
    print(f"  resident memory after warm-up: {warm.min() / 2**20:.0f}-{warm.max() / 2**20:.0f} MB, growth "
          f"{100 * (warm[-1] / warm[0] - 1):+.1f}% first to last sample, spread "
          f"{100 * (warm.max() / warm.min() - 1):.1f}% (target: flat within 10%)")
    if args.no_ray:
        return
    import ray

    train = load_dataset("digits", "train")
    names = feature_names(model, "B234")
    for workers in (1, 2):  # a local cluster of that many CPUs: the feature pass, then the per-class stage
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            os.environ["PROTOSCOPE_CACHE"] = str(scratch / f"cache{workers}")
            cache = FeatureCache(model, train)
            started = time.perf_counter()
            ray_feature_pass("digits", "digits", "train", cache, names, EngineOptions("ray", workers=workers))
            seconds = time.perf_counter() - started
            print(f"  Ray Data feature pass (B2-B4 + logits), {len(train):,} images, {workers} worker(s): "
                  f"{len(train) / seconds:.0f} images/s ({seconds:.1f} s, actor start included)")
            ray_tasks = ray_class_runner(EngineOptions("ray"))
            for runner, where in ((ray_tasks, f"Ray tasks on {workers} CPU(s), workers starting"),
                                  (ray_tasks, f"Ray tasks on {workers} CPU(s), warm workers"),
                                  (None, f"this process's {KMEANS_WORKERS} threads (local)")):
                started = time.perf_counter()
                PrototypeExplainer("B234", per_class=5).fit(model, train, features=cache, class_runner=runner)
                seconds = time.perf_counter() - started
                print(f"  per-class k-means and own-class projection (B34 and B234, K/C = 5), {where}: "
                      f"{10 / seconds:.1f} classes/s ({seconds:.2f} s for 10, features cached)")
        finally:
            ray.shutdown()

if __name__ == "__main__":
    main()
