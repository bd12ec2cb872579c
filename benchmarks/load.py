"""Load benchmark: N concurrent sessions on one server, through the cached functions the pages use.

A Streamlit server runs each session's script in a thread of its own and shares the loaded
model (``st.cache_resource``). Here N sessions are N threads, each a new thread per request as
Streamlit makes them, each asking ``ui.cache.explanations`` (the Saliency page's cached
function) for views of different images, so every request computes (no cache hit). Printed:

- p50 and p95 seconds of the Saliency page's CAM view (the eight CAM-family maps at B4) and of
  a Score-CAM view, at N = 1, 4, 16 sessions, each session asking one view after another (the
  worst case: nobody pauses to look at a map);
- a classroom mix: one session running Score-CAM views non-stop while the others ask CAM views;
- whether any map differed from the one computed alone (it must never);
- the process's resident memory after warm-up and at the end;
- the same load with every session computing in its own thread (``--compare``), as Protoscope did
  before the shared compute thread, for the ratio.

Target (issue 9): at N = 4, p95 of the CAM view under 2x the single-session time; no wrong map.
Run from the repository root:  .venv/bin/python benchmarks/load.py [--quick] [--compare] [--model resnet18]
"""
from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `make bench` runs this file directly

from explainers import explain_many, load_dataset, load_model  # noqa: E402
from explainers.models import MODELS  # noqa: E402
from explainers.runtime import compute
from ui.cache import explanations, image_bytes  # noqa: E402

for _name in list(logging.root.manager.loggerDict):  # "no runtime" warnings: the cache works without one
    if _name.startswith("streamlit"):
        logging.getLogger(_name).setLevel(logging.ERROR)

CAM_VIEW = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "cam", "eigencam", "eigengradcam")
SCORE_VIEW = ("scorecam",)
BLOCK = "B4"


def photos(count: int, size: int) -> list[bytes]:
    """``count`` different RGB pictures (seeded noise with structure), PNG bytes as the sidebar keeps them."""
    from PIL import Image

    generator = np.random.default_rng(0)
    pictures = []
    for _ in range(count):
        base = generator.random((8, 8, 3))
        picture = Image.fromarray((base * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
        pictures.append(image_bytes(picture))
    return pictures


def images_for(model_name: str, count: int) -> list[bytes]:
    if model_name == "digits":
        dataset = load_dataset("digits", "test")
        return [image_bytes(dataset[i][0]) for i in range(count)]
    return photos(count, 256)


class Load:
    """Runs sessions against one model and records each request's seconds and maps."""

    def __init__(self, model_name: str, images: list[bytes]) -> None:
        torch.manual_seed(0)
        built_in = model_name in MODELS and model_name in ("digits", "efficientnet_lite0")  # weights ship offline
        self.model = load_model(model_name, weights="DEFAULT" if built_in else None)
        self.key = f"{model_name}:{self.model.fingerprint}"
        self.images = images
        self.next_image = 0
        self.lock = threading.Lock()
        self.reference: dict[tuple[int, tuple[str, ...]], dict[str, np.ndarray]] = {}

    def take_image(self) -> int:
        with self.lock:
            self.next_image += 1
            return self.next_image % len(self.images)

    def request(self, methods: tuple[str, ...], salt: int) -> tuple[float, int, dict[str, np.ndarray]]:
        """One page view in a new thread (as Streamlit runs each script run): seconds, image, maps."""
        index = self.take_image()
        found: dict = {}

        def view() -> None:
            started = time.perf_counter()
            # ``salt`` in the key: every request computes, as a new image would.
            maps = explanations(f"{self.key}:{salt}", self.model, self.images[index], methods, BLOCK, None)
            found.update(seconds=time.perf_counter() - started, maps={n: e.raw for n, e in maps.items()})

        thread = threading.Thread(target=view)
        thread.start()
        thread.join()
        return found["seconds"], index, found["maps"]

    def wrong_maps(self, results: list[tuple[tuple[str, ...], int, dict[str, np.ndarray]]]) -> int:
        wrong = 0
        for methods, index, maps in results:
            key = (index, methods)
            if key not in self.reference:
                alone = explain_many(self.model, _decoded(self.images[index]), list(methods), block=BLOCK)
                self.reference[key] = {n: e.raw for n, e in alone.items()}
            wrong += sum(not np.array_equal(maps[n], self.reference[key][n]) for n in methods)
        return wrong


def _decoded(data: bytes):
    from explainers import load_image

    return load_image(data)


def run_sessions(load: Load, plan: list[tuple[str, tuple[str, ...], int]], think: float = 0.0) -> dict[str, list]:
    """``plan``: one (label, methods, requests) per session, all started together. ``think``: mean seconds a
    person looks at a view before asking the next (exponentially distributed, seeded); 0 asks at once."""
    times: dict[str, list[float]] = {}
    results: list = []
    lock = threading.Lock()
    salt = [0]

    def session(label: str, methods: tuple[str, ...], requests: int, seed: int) -> None:
        pauses = np.random.default_rng(seed).exponential(think, requests) if think else np.zeros(requests)
        for pause in pauses:
            time.sleep(float(pause))
            with lock:
                salt[0] += 1
                mine = salt[0] + int(time.time_ns() % 10**9) * 1000
            seconds, index, maps = load.request(methods, mine)
            with lock:
                times.setdefault(label, []).append(seconds)
                results.append((methods, index, maps))

    threads = [threading.Thread(target=session, args=(*spec, seed)) for seed, spec in enumerate(plan)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"times": times, "results": results}


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def resident_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def report(label: str, values: list[float], single: float | None) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    ratio = f"{p95 / single:5.2f}x" if single else "    —"
    return f"| {label} | {len(values)} | {p50 * 1000:8.1f} | {p95 * 1000:8.1f} | {ratio} |"


def benchmark(model_name: str, quick: bool, inline: bool, sizes: tuple[int, ...], think: float = 0.0) -> None:
    requests = 4 if quick else 12
    load = Load(model_name, images_for(model_name, 40))
    mode = ("each session computes in its own thread" if inline else "one shared compute thread") + (
        f", a person looks {think:g} s on average before the next view" if think else ", views asked back to back")
    print(f"\n### {model_name}, {mode}\n")
    # Warm-up: the inference copy, Streamlit's cache machinery, allocator pools.
    load.model.inference_net  # made before any session runs (torch.fx tracing must run alone)
    run_sessions(load, [("warm", CAM_VIEW, 2), ("warm", SCORE_VIEW, 1)])
    warm = resident_mb()
    print("| view, sessions | requests | p50 ms | p95 ms | p95 / single p50 |\n|---|---|---|---|---|")
    singles: dict[str, float] = {}
    wrong = 0
    for view, methods in (("CAM view", CAM_VIEW), ("Score-CAM view", SCORE_VIEW)):
        for n in sizes:
            count = max(2, requests // (4 if view == "Score-CAM view" and model_name != "digits" else 1))
            if view == "Score-CAM view" and n > 4 and (quick or model_name != "digits"):
                continue
            outcome = run_sessions(load, [(view, methods, count)] * n, think if n > 1 else 0.0)
            values = outcome["times"][view]
            if n == 1:
                singles[view] = percentile(values, 50)
            wrong += load.wrong_maps(outcome["results"])
            print(report(f"{view}, N = {n}", values, singles.get(view)))
    n = 4
    count = max(2, requests // (4 if model_name != "digits" else 1))
    outcome = run_sessions(load, [("Score-CAM view", SCORE_VIEW, max(1, count // 4))]
                           + [("CAM view", CAM_VIEW, count)] * (n - 1), think)
    wrong += load.wrong_maps(outcome["results"])
    print(report(f"classroom: CAM view beside one Score-CAM session, N = {n}", outcome["times"]["CAM view"],
                 singles["CAM view"]))
    print(f"\nwrong maps: {wrong}; resident memory after warm-up {warm:.0f} MB, at the end {resident_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests per session")
    parser.add_argument("--compare", action="store_true", help="also run with every session computing in its own thread")
    parser.add_argument("--think", type=float, default=0.0,
                        help="mean seconds between a session's views (0: back to back, the worst case)")
    parser.add_argument("--model", default="digits",
                        help="digits (default), efficientnet_lite0, or a torchvision name (random weights)")
    args = parser.parse_args()
    sizes = (1, 4) if args.quick or args.model != "digits" else (1, 4, 16)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} intra-op threads, {psutil.cpu_count()} cores")
    benchmark(args.model, args.quick, inline=False, sizes=sizes, think=args.think)
    if args.compare:
        shared_run: Callable = compute.run
        compute.run = lambda function, *a, **k: function(*a, **k)  # every session computes in its own thread
        try:
            benchmark(args.model, args.quick, inline=True, sizes=sizes, think=args.think)
        finally:
            compute.run = shared_run


if __name__ == "__main__":
    main()
