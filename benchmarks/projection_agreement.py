"""How often the own-class projection (ProtoPNet's, the default since issue 22) and the whole-set scan (the
shipped files') give a prototype another nearest training patch, on the digits at the shipped settings.

The prototypes are those of the shipped files (fitted with the whole-set scan); for each level the own-class
projection is computed on the same prototypes from the same feature cache, and the two are compared:
prototypes whose patch differs, and among them those whose whole-set patch lies in another class's image.

    .venv/bin/python benchmarks/projection_agreement.py [--model digits]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explainers import load_dataset, load_model  # noqa: E402
from explainers.fitted.checks import check_classes  # noqa: E402
from explainers.fitted.features import FeatureCache, memory_budget  # noqa: E402
from explainers.fitted.prototypes import SHIPPED, PrototypeExplainer, cache_key  # noqa: E402
from explainers.fitted.prototypes.depths import depth_blocks, recorded_blocks  # noqa: E402
from explainers.fitted.prototypes.explainer import EARLIER_VALUES  # noqa: E402
from explainers.fitted.prototypes.patches import nearest_patches  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="digits")
    args = parser.parse_args()
    model, train = load_model(args.model, device="cpu"), load_dataset(args.model, "train")
    total = differ = elsewhere = 0
    with FeatureCache(model, train) as cache:
        for depth, per_class in (("pooled", 1), ("pooled", 5), ("B4", 5), ("B34", 5), ("B234", 5), ("B1234", 5)):
            path = SHIPPED / f"{cache_key(model, train, PrototypeExplainer(depth, per_class, **EARLIER_VALUES))}.npz"
            if not path.is_file():
                print(f"{depth} K/C={per_class}: no shipped file")
                continue
            shipped = PrototypeExplainer.load(path)
            labels = check_classes(model, train, per_class, depth == "pooled")
            blocks = sorted({b for d in shipped.levels_ for b in depth_blocks(d)})
            cache.ensure(recorded_blocks(model, blocks), None, 128, memory_budget())
            own = nearest_patches(model, shipped.levels_, cache, memory_budget(), None, labels, "class")
            for name, level in shipped.levels_.items():
                pairs = list(zip(level.patches, own[name], level.labels))
                changed = [(a, b, c) for a, b, c in pairs if (a.image, a.row, a.col) != (b.image, b.row, b.col)]
                foreign = sum(labels[a.image] != c for a, _, c in pairs)
                total, differ, elsewhere = total + len(pairs), differ + len(changed), elsewhere + foreign
                print(f"{depth:6} K/C={per_class} level {name:6}: {len(changed):3} of {len(pairs):3} prototypes get "
                      f"another patch; {foreign:3} whole-set patches are in another class's image")
    print(f"\nall levels: {differ} of {total} prototypes ({100 * differ / max(total, 1):.1f}%) differ; "
          f"{elsewhere} whole-set patches ({100 * elsewhere / max(total, 1):.1f}%) lie in another class's image")


if __name__ == "__main__":
    main()
