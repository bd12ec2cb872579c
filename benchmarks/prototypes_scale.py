"""Prototypes at the paper's scale: a CUB-200-shaped training folder on one machine (issue 12).

Seed 000's experiment is CUB-200: 200 classes, 5,994 training images, ResNet34, ten prototypes per
class. This builds a synthetic folder of the same shape (200 classes x 30 JPEGs of 500x375, CUB's
usual size, resized to 224x224 by the model's transform), wraps a ResNet34 with random weights (the
cost of a pass does not depend on the weights), and prints for B4 and B234 at K/C = 10:

- the fit time split into features (the one pass over the folder), k-means and the patch scan;
- the peak increase of resident memory during each fit (sampled every 10 ms) and the process's peak;
- a refit with another K/C, which reuses the cached features (target: under one minute);
- the extrapolation to CUB's 5,994 images (targets: the whole fit under 30 minutes on the CPU,
  peak memory under 6 GB).

    .venv/bin/python benchmarks/prototypes_scale.py                 # 200 classes x 30 images
    .venv/bin/python benchmarks/prototypes_scale.py --classes 20     # a quicker look
    .venv/bin/python benchmarks/prototypes_scale.py --earlier        # before issue 22: whole-set scan, scikit-learn

The defaults project each prototype onto its own class's pixels and run the torch k-means (issue 22);
``--earlier`` fits with the earlier values (the whole-set scan and scikit-learn's k-means), for the
before-and-after figures.

The folder and the feature cache go to a temporary directory (``--keep DIR`` to reuse one).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainers.data.datasets import image_folder  # noqa: E402
from explainers.fitted.features import FeatureCache  # noqa: E402
from explainers.fitted.prototypes import PrototypeExplainer  # noqa: E402
from explainers.fitted.prototypes.explainer import EARLIER_VALUES  # noqa: E402
from explainers.models.loading import from_module  # noqa: E402

CUB_TRAIN_IMAGES = 5_994
GB = 2 ** 30


def synthetic_folder(root: Path, classes: int, per_class: int) -> Path:
    """``classes`` sub-folders of ``per_class`` JPEGs, 500x375, smooth random colours (decoded like photos)."""
    marker = root / f".complete-{classes}x{per_class}"
    if marker.exists():
        return root
    generator = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class_{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            coarse = generator.integers(0, 255, (12, 16, 3), dtype=np.uint8)
            Image.fromarray(coarse).resize((500, 375), Image.BICUBIC).save(folder / f"{i:03d}.jpg", quality=90)
    marker.touch()
    return root


class Peak:
    """The highest resident size while the ``with`` body runs, above the size at its start."""

    def __enter__(self) -> "Peak":
        self.before = self.peak = resident()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, resident())
            time.sleep(0.01)

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def increase(self) -> int:
        return self.peak - self.before


def resident() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def process_peak() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Stages:
    """Fit time per stage, read from the progress messages ("stage 2 of 3, ..."): the time since the
    previous message goes to the stage of the message that ends it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._since = time.perf_counter()

    def __call__(self, _fraction: float, message: str) -> None:
        now = time.perf_counter()
        stage = message.split(",")[0] if message.startswith("stage") else "other"
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._since
        self._since = now

    def stop(self) -> None:
        pass

    def of(self, number: int) -> float:
        return self.seconds.get(f"stage {number} of 3", 0.0)


def fit(model, train, features, depth: str, per_class: int, settings: dict) -> tuple[float, Stages, Peak]:
    stages = Stages()
    started = time.perf_counter()
    with Peak() as peak:
        PrototypeExplainer(depth, per_class=per_class, batch_size=32, **settings).fit(
            model, train, progress=stages, features=features)
    stages.stop()
    return time.perf_counter() - started, stages, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--images", type=int, default=30, help="images per class")
    parser.add_argument("--per-class", type=int, default=10, help="prototypes per class (K/C)")
    parser.add_argument("--keep", type=Path, help="a folder to keep (and reuse) the images and features in")
    parser.add_argument("--earlier", action="store_true",
                        help="the whole-set scan and scikit-learn's k-means (the fits before issue 22)")
    args = parser.parse_args()
    settings = dict(EARLIER_VALUES) if args.earlier else {}
    torch.manual_seed(0)
    scratch = None if args.keep else tempfile.TemporaryDirectory(prefix="protoscope-scale-")
    root = args.keep or Path(scratch.name)
    started = time.perf_counter()
    data = synthetic_folder(root / "images", args.classes, args.images)
    print(f"synthetic folder: {args.classes} classes x {args.images} JPEGs (500x375) in "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    train = image_folder(data, "train", test_fraction=0.0)
    from torchvision.models import resnet34
    net = resnet34(num_classes=args.classes)
    model = from_module(net, "resnet34-random", classes=train.classes, input_size=(224, 224))
    model_gb = sum(p.numel() * 4 for p in net.parameters()) / GB
    fitted = PrototypeExplainer(**settings)
    print(f"ResNet34 (random weights, {model_gb * 1024:.0f} MB), {len(train):,} training images, "
          f"K/C = {args.per_class}, {torch.get_num_threads()} threads, projection={fitted.projection!r}, "
          f"kmeans={fitted.kmeans!r}, load {os.getloadavg()[0]:.1f}\n", flush=True)
    rows = []
    with FeatureCache(model, train, folder=root / "features") as features:
        for depth, per_class in (("B4", args.per_class), ("B234", args.per_class),
                                 ("B4", args.per_class // 2), ("B234", args.per_class // 2)):
            seconds, stages, peak = fit(model, train, features, depth, per_class, settings)
            rows.append((depth, per_class, seconds, stages, peak))
            print(f"{depth:5} K/C={per_class:<3} total {seconds:7.1f} s   features {stages.of(1):7.1f} s   "
                  f"k-means {stages.of(2):7.1f} s   patches {stages.of(3):6.1f} s   "
                  f"peak +{peak.increase / GB:.2f} GB", flush=True)
        disk = sum(f.stat().st_size for f in (root / "features").glob("*.bin")) / GB
    # To CUB's size: features and k-means grow with the images (k-means: classes of a fixed size), the
    # exact nearest-patch scan over every image with images x prototypes, i.e. with the square of the
    # scale, the own-class scan with the classes (each class's images x its prototypes), i.e. with the scale.
    scale = CUB_TRAIN_IMAGES / len(train)
    scan_scale = scale ** 2 if fitted.projection == "all" else scale
    first_b4, first_b234, refit_b4, refit_b234 = rows

    def at_cub(stages: Stages) -> float:
        return stages.of(1) * scale + stages.of(2) * scale + stages.of(3) * scan_scale

    features_per_image = (first_b4[3].of(1) + first_b234[3].of(1)) / len(train)
    whole = features_per_image * CUB_TRAIN_IMAGES + (at_cub(first_b234[3]) - first_b234[3].of(1) * scale)
    print(f"\nfeature cache on disk: {disk:.2f} GB (float16: B2, B3, B4 and the logits)")
    print(f"process peak resident memory: {process_peak() / GB:.2f} GB (target < 6 GB: "
          f"{'PASS' if process_peak() < 6 * GB else 'MISS'})")
    print(f"features: {1000 * features_per_image:.0f} ms per image for B2-B4")
    print(f"extrapolated to CUB's {CUB_TRAIN_IMAGES:,} images (features and k-means x {scale:.1f}, the patch scan "
          f"x {scan_scale:.1f}): B234 fit from scratch {whole / 60:.1f} min "
          f"(target < 30 min: {'PASS' if whole < 1800 else 'MISS'})")
    for depth, per_class, seconds, stages, _ in (refit_b4, refit_b234):
        print(f"refit {depth} with K/C = {per_class} on cached features: {seconds:.1f} s here, "
              f"{at_cub(stages):.0f} s at {CUB_TRAIN_IMAGES:,} images (target < 60 s: "
              f"{'PASS' if at_cub(stages) < 60 else 'MISS'})")
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
