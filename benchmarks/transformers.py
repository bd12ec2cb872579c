"""All gradient-based transformer maps of one view from the shared pass, against one LeGrad, on torchvision's
vit_b_16 with random weights (issue 20; target <= 2x). Prints, never asserts.

    .venv/bin/python benchmarks/transformers.py
"""
from __future__ import annotations

import time

import torch
import torchvision

from explainers import explain_many, load_model

CAM_FAMILY = ["gradcam", "gradcampp", "xgradcam"]


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    model = load_model(torchvision.models.vit_b_16(weights=None).eval(), input_size=(224, 224))
    image = torch.randn(3, 224, 224)
    explain_many(model, image, ["legrad"])  # warm-up
    one = best_of(3, lambda: explain_many(model, image, ["legrad"]))
    every = best_of(3, lambda: explain_many(model, image, CAM_FAMILY + ["legrad", "chefer"]))
    print(f"one LeGrad: {one:.2f} s; {', '.join(CAM_FAMILY)}, LeGrad and Chefer from one shared pass: {every:.2f} s; "
          f"ratio {every / one:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
