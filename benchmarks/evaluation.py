"""Evaluation benchmark: the faithfulness metrics' throughput and how much of their time is the network's.

For the built-in ``digits`` model (test digits) and the built-in ImageNet network ``efficientnet_lite0``
(the photos bundled with scikit-image), and for Grad-CAM, Score-CAM and Cluster-CAM maps at B4, it
prints one row per registered metric (``explainers.evaluation.METRICS``: confidence drop/increase, deletion,
insertion, ROAD):

- images per second of the metric alone (the maps are computed once beforehand, ``explain_batch``);
- the distinct perturbed inputs it ran per image;
- "masked share": the time those inputs would take at the fastest batched inference of the network
  (``explainers.engine.batching.timings``, measured in this run), divided by the metric's wall time. Target:
  at least 80%, i.e. the metric code itself (planning, masks, imputation) costs little;
- "net share": the time measured inside the network calls over the wall time (the same question,
  without assuming the fastest batch size).

Run from the repository root:  .venv/bin/python benchmarks/evaluation.py [--quick]
Timings are noisy on a shared machine: compare ratios, not seconds.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `make bench` runs this file directly

from explainers import explain_batch, load_dataset, load_model  # noqa: E402
from explainers.engine import batching  # noqa: E402
from explainers.evaluation import METRICS, EvaluationSettings, evaluate_maps, insertion_blur, subset  # noqa: E402
from explainers.models.inputs import as_batch  # noqa: E402

METHODS = ("gradcam", "scorecam", "clustercam")
TARGET_SHARE = 0.8


def rows(name: str, dataset: str, count: int) -> None:
    model = load_model(name)
    images = subset(load_dataset(dataset, "test"), count)
    inputs = as_batch(model, [images[i][0] for i in range(len(images))])
    settings = EvaluationSettings(blur_sigma=insertion_blur(model, inputs).sigma)  # measured once, not timed
    batching.batch_size(model)  # measured before any timing
    fastest = min(batching.timings(model).values())
    print(f"\n{name}: {len(images)} images, batches of {batching.batch_size(model)}, fastest batched inference "
          f"{fastest * 1000:.2f} ms per image")
    print(f"{'method':12} {'metric':11} {'images/s':>9} {'inputs/img':>10} {'masked share':>13} {'net share':>10}")
    for method in METHODS:
        found = explain_batch(model, inputs, [method], "B4")
        maps = {method: [one[method].heatmap for one in found]}
        for metric in METRICS:
            started = time.perf_counter()
            result = evaluate_maps(model, inputs, maps, targets=[one[method].target for one in found],
                                   metrics=(metric,), settings=settings)
            seconds = time.perf_counter() - started
            share = result.inputs_run * fastest / seconds
            verdict = "PASS" if share >= TARGET_SHARE else "MISS"
            print(f"{method:12} {metric:11} {len(images) / seconds:9.2f} {result.inputs_run / len(images):10.1f} "
                  f"{share:12.0%} {verdict} {result.pass_seconds / seconds:9.0%}"
                  + (f"   (imputation {result.imputation_seconds / seconds:.0%} of the time)"
                     if metric == "road" else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows("digits", "digits", 8 if args.quick else 32)
    rows("efficientnet_lite0", "photos", 2 if args.quick else 6)
    print("\nmasked share = distinct inputs x fastest batched inference per image / the metric's wall time "
          f"(target >= {TARGET_SHARE:.0%}); net share = time inside the network calls / wall time.")


if __name__ == "__main__":
    main()
