"""Fit and explain times of Q-SENN (seed 003) on the built-in digits model.

Prints the fit time split into its stages (the layer's own ``timings_``): features (batched forward
passes without gradients), the glm-saga5 baseline's path, feature selection, the sparse layer's path,
quantisation (with the bias refit) and, in full mode, fine-tuning; then the time to predict and to explain
one image once fitted (target: under 20 ms on digits), and their ratio to one plain forward pass of the
model. One run; nothing is read from or written to the cache. Timings are noisy on a shared machine.

    .venv/bin/python benchmarks/qsenn.py             # post hoc
    .venv/bin/python benchmarks/qsenn.py --full      # also full Q-SENN (N = 3 rounds of 2 epochs: minutes)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainers import load_dataset, load_model  # noqa: E402
from explainers.fitted.qsenn import QSENN  # noqa: E402

REPEATS = 30


def median_ms(action) -> float:
    action()  # warm-up
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def report(mode: str, model, train, test) -> None:
    started = time.perf_counter()
    layer = QSENN(mode=mode).fit(model, train)
    total = time.perf_counter() - started
    print(f"\n{mode} fit: {total:.1f} s in all")
    for stage, seconds in layer.timings_.items():
        print(f"  {stage:16} {seconds:7.2f} s  ({100 * seconds / total:4.1f}%)")
    image = test[0][0]
    inputs = model.transform(image)[None]
    with torch.inference_mode():
        forward = median_ms(lambda: model.net(inputs))
    predict = median_ms(lambda: layer.predict(image))
    explain = median_ms(lambda: layer.explain(image))
    print(f"  one plain forward pass   {forward:6.2f} ms")
    print(f"  predict one image        {predict:6.2f} ms  ({predict / forward:.1f}x the plain pass)")
    print(f"  explain one image        {explain:6.2f} ms  ({explain / forward:.1f}x; target under 20 ms)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="also time full Q-SENN (fine-tuning)")
    args = parser.parse_args()
    model = load_model("digits")
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    print(f"digits: {len(train)} training images, torch threads {torch.get_num_threads()}")
    report("post-hoc", model, train, test)
    if args.full:
        report("full", model, train, test)


if __name__ == "__main__":
    main()
