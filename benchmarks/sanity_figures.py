"""The sanity-check figures the README and ``explainers/evaluation/sanity.py`` quote, printed by the code
that makes them: Adebayo et al.'s cascading randomisation of the digits model, every CAM method and the
model-independent spectral residual, over N test images (spread over the split, ``subset``), at each
block asked. Prints, per block and method, the mean Spearman rank correlation of |map| with the original
after every layer is randomised, its SSIM, and whether the method is flagged (>= 0.5).

    .venv/bin/python benchmarks/sanity_figures.py                 # 51 images, B4 and B3 (about a minute)
    .venv/bin/python benchmarks/sanity_figures.py --images 20 --blocks B3
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainers import load_dataset, load_model  # noqa: E402
from explainers.evaluation import randomization_check, subset  # noqa: E402

CAM_METHODS = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "cam", "eigencam", "eigengradcam")


def main() -> None:
    """Print the figures (a markdown table) for the digits model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=51)
    parser.add_argument("--blocks", nargs="+", default=["B4", "B3"])
    parser.add_argument("--model", default="digits")
    args = parser.parse_args()
    model = load_model(args.model)
    images = subset(load_dataset(args.model, "test"), args.images)
    print(f"{args.model}, cascading randomisation (batch norms reset), {len(images)} test images; "
          "after every layer is randomised:\n")
    print("| block | method | Spearman | SSIM | flagged (>= 0.5) |")
    print("|---|---|---|---|---|")
    for block in args.blocks:
        started = time.perf_counter()
        methods = [m for m in CAM_METHODS if m != "cam" or block == list(model.blocks)[-1]]  # CAM: the last block only
        result = randomization_check(model, images, [*methods, "spectral_residual"], block=block)
        flagged = result.flags()
        for method in result.methods:
            row = result.final(method)
            print(f"| {block} | {method} | {row.spearman:.3f} | {row.ssim:.3f} | {'yes' if method in flagged else ''} |")
        print(f"<!-- {block}: {time.perf_counter() - started:.0f} s -->")


if __name__ == "__main__":
    main()
