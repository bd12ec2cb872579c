"""Fit and explain times of the prototype explainers on the built-in digits model.

Prints, for KMEx (pooled), B4 and B234 with K/C = 5: the fit time split into feature
extraction (batched forward passes, no gradients) and k-means, the nearest-patch scan, and
the explain time per image once fitted. Targets (issue 3): B234 fit under 60 s on a 2-core
machine; one explanation under 100 ms. One run; nothing is read from or written to the cache.

    .venv/bin/python benchmarks/prototypes.py
    .venv/bin/python benchmarks/prototypes.py --scale [--classes 40]   # the CUB-200-shaped row (prototypes_scale.py)
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainers import load_dataset, load_model  # noqa: E402
from explainers.fitted.prototypes import PrototypeExplainer, suffix_depths  # noqa: E402


class Timer:
    """Splits fit time by phase, read from the progress messages the explainer reports."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}
        self._phase, self._since = None, time.perf_counter()

    def __call__(self, _fraction: float, message: str) -> None:
        phase = message.split(",")[0]  # "stage 2 of 3, k-means at B34: class 4 of 10" -> "stage 2 of 3"
        if phase != self._phase:
            self.stop()
            self._phase, self._since = phase, time.perf_counter()

    def stop(self) -> None:
        if self._phase is not None:
            self.phases[self._phase] = self.phases.get(self._phase, 0.0) + time.perf_counter() - self._since
            self._phase = None


def main() -> None:
    if "--scale" in sys.argv:  # the CUB-shaped row (issue 12): minutes to an hour, so not by default
        sys.argv.remove("--scale")
        from prototypes_scale import main as scale
        scale()
        return
    torch.set_num_threads(2)
    model = load_model("digits")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    images = [test[i][0] for i in range(50)]
    print(f"Prototype explainers on digits ({len(train)} training images, 64x64), K/C = 5, one run, "
          f"{torch.get_num_threads()} threads.\n")
    print(f"{'depth':7} {'levels':12} {'features':>9} {'k-means':>8} {'patches':>8} {'fit total':>10} "
          f"{'explain/img':>12} {'target':>18}")
    for depth in ("pooled", "B4", "B234"):
        timer = Timer()
        started = time.perf_counter()
        explainer = PrototypeExplainer(depth, per_class=5).fit(model, train, progress=timer)
        timer.stop()
        total = time.perf_counter() - started
        explain_ms = "—"
        if depth != "pooled":
            explainer.explain(images[0])
            samples = []
            for image in images:
                tick = time.perf_counter()
                explainer.explain(image)
                samples.append(1000 * (time.perf_counter() - tick))
            explain_ms = f"{statistics.median(samples):.1f} ms"
        phases = timer.phases
        levels = "pooled" if depth == "pooled" else "+".join(suffix_depths(depth))
        target = "fit < 60 s: " + ("PASS" if total < 60 else "MISS") if depth == "B234" else ""
        print(f"{depth:7} {levels:12} {phases.get('stage 1 of 3', 0):8.1f}s {phases.get('stage 2 of 3', 0):7.1f}s "
              f"{phases.get('stage 3 of 3', 0):7.1f}s {total:9.1f}s {explain_ms:>12} {target:>18}")
    print("\nfeatures: one batched forward pass over the training set without gradients; patches: a second pass "
          "that scans every training pixel for each prototype's nearest one. explain: median over 50 test images "
          "(one forward pass, the assignment and the attribution chain); target < 100 ms.")


if __name__ == "__main__":
    main()
