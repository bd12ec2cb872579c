"""Saliency benchmark: the shared trace against one pass per method, and memory over long loops.

For the built-in ``digits`` model and torchvision ``resnet18`` (random weights, 224x224) it prints

- the time of ONE Grad-CAM call, of eight separate ``explain`` calls (one per CAM-family
  method) and of ONE ``explain_many`` call with all eight, the ratios separate/shared and
  shared/one-Grad-CAM (target: shared <= 1.5x one Grad-CAM), and the forward/backward passes
  the Explanation objects report;
- the process's resident memory (RSS) before and after a long loop of explanations of
  different images, which must stay flat.

Run from the repository root:  .venv/bin/python benchmarks/saliency.py [--quick]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `make bench` runs this file directly

from explainers import Explanation, ModelSpec, explain, explain_many, load_dataset, load_model, methods  # noqa: E402

CAM_FAMILY = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam")
BLOCK = "B4"
TARGET_RATIO = 1.5  # the shared view may cost at most this many single Grad-CAM calls
FLAT_MB = 20.0  # RSS growth below this over the loop counts as flat
SEED = 0


@dataclass
class Settings:
    repeats: int  # timed repeats per measurement (the median is printed)
    warmup: int  # untimed calls before timing
    digits_loop: int  # explanations in the digits memory loop
    resnet_loop: int  # explanations in the resnet18 memory loop
    memory_warmup: int  # untimed explanations before the first RSS reading


FULL = Settings(repeats=11, warmup=3, digits_loop=1000, resnet_loop=1000, memory_warmup=20)
QUICK = Settings(repeats=3, warmup=1, digits_loop=100, resnet_loop=50, memory_warmup=5)


@dataclass
class Case:
    """One model, its (already transformed) inputs for timing, and what the memory loop explains."""

    title: str
    model: ModelSpec
    image: Callable[[int], torch.Tensor]  # i -> (C, H, W) input; different i, different image
    loop_input: Callable[[int], Any]  # i -> what the memory loop passes to explain_many
    loop_note: str


# ---------------------------------------------------------------------------- inputs


def digits_case() -> Case:
    """The built-in digits model on the 360 digits test images (transformed once, up front)."""
    model = load_model("digits")
    test = load_dataset("digits", "test")
    inputs = torch.stack([model.transform(test[i][0]) for i in range(len(test))])
    return Case(f"digits (64x64, {len(test)} test images)", model, lambda i: inputs[i % len(inputs)],
                lambda i: test[i % len(test)][0],
                f"PIL images cycling through the {len(test)} digits test images, preprocessing included")


def resnet_case() -> Case:
    """torchvision resnet18 with random weights on seeded random 3x224x224 tensors."""
    model = load_model("resnet18", weights=None)  # weights=None: random weights, nothing is downloaded

    def image(i: int) -> torch.Tensor:
        return torch.randn(3, 224, 224, generator=torch.Generator().manual_seed(SEED + i))

    return Case("resnet18 (random weights, 224x224, random N(0,1) input tensors)", model, image, image,
                "a new seeded random 3x224x224 tensor each call")


def target_for(case: Case, i: int) -> int:
    """A different target class from call to call (not just the predicted one)."""
    return (7 * i + i // 360) % case.model.num_classes


# ---------------------------------------------------------------------------- timing


def median_ms(runs: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median wall time of each run; the runs take turns, so a burst of load hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for repeat in range(warmup + repeats):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            if repeat >= warmup:
                times[name].append(time.perf_counter() - started)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def separate(case: Case, image: torch.Tensor, names: list[str]) -> list[Explanation]:
    return [explain(case.model, image, name, block=BLOCK, target=3) for name in names]


def shared(case: Case, image: torch.Tensor, names: list[str]) -> dict[str, Explanation]:
    return explain_many(case.model, image, names, block=BLOCK, target=3)


def passes_separate(explanations: list[Explanation]) -> tuple[int, int]:
    return sum(e.forwards for e in explanations), sum(e.backwards for e in explanations)


def passes_shared(explanations: dict[str, Explanation]) -> tuple[int, int]:
    """Every map reports the shared trace's passes, so they count once (no method here runs its own)."""
    return max(e.forwards for e in explanations.values()), max(e.backwards for e in explanations.values())


def time_case(case: Case, names: list[str], settings: Settings) -> None:
    image = case.image(0)
    single = lambda: explain(case.model, image, "gradcam", block=BLOCK, target=3)  # noqa: E731
    timed = median_ms({"one": single, "eight": lambda: separate(case, image, names),
                       "many": lambda: shared(case, image, names)}, settings.repeats, settings.warmup)
    one, eight, many = timed["one"], timed["eight"], timed["many"]
    gradcam = single()
    fwd_sep, bwd_sep = passes_separate(separate(case, image, names))
    fwd_sh, bwd_sh = passes_shared(shared(case, image, names))
    ratio = many / one
    verdict = "PASS" if ratio <= TARGET_RATIO else "MISS"
    rows = [
        ("one Grad-CAM explain", f"{one:9.1f} ms", f"{gradcam.forwards} fwd + {gradcam.backwards} bwd"),
        (f"{len(names)} separate explain calls", f"{eight:9.1f} ms", f"{fwd_sep} fwd + {bwd_sep} bwd"),
        (f"explain_many, all {len(names)}", f"{many:9.1f} ms", f"{fwd_sh} fwd + {bwd_sh} bwd"),
        ("ratio separate / shared", f"{eight / many:9.2f} x", ""),
        ("ratio shared / one Grad-CAM", f"{ratio:9.2f} x", f"target <= {TARGET_RATIO}: {verdict}"),
    ]
    for label, value, note in rows:
        print(f"  {label:<30} {value:>12}   {note}".rstrip())
    breakdown = breakdown_ms(case, image, names, settings.repeats)
    print("  inside explain_many (median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items()))


def breakdown_ms(case: Case, image: torch.Tensor, names: list[str], repeats: int) -> dict[str, float]:
    """Median time of the shared trace and of each method, as the Explanation objects report them."""
    samples: dict[str, list[float]] = {"trace": [], **{name: [] for name in names}}
    for _ in range(repeats):
        result = shared(case, image, names)
        samples["trace"].append(next(iter(result.values())).trace_seconds)
        for name, explanation in result.items():
            samples[name].append(explanation.seconds)
    return {name: 1000 * statistics.median(values) for name, values in samples.items()}


# ---------------------------------------------------------------------------- memory


def rss_mb() -> float:
    gc.collect()
    return psutil.Process().memory_info().rss / 2**20


def explanations(case: Case, names: list[str], count: int, start: int) -> Iterator[int]:
    """Explain ``count`` different images with all methods, each with its own target; yields the index."""
    for i in range(start, start + count):
        explain_many(case.model, case.loop_input(i), names, block=BLOCK, target=target_for(case, i))
        yield i


def memory_case(case: Case, names: list[str], count: int, warmup: int) -> None:
    for _ in explanations(case, names, warmup, start=10_000):
        pass
    before = rss_mb()
    middle = before
    started = time.perf_counter()
    for i in explanations(case, names, count, start=0):
        if i == count // 2:
            middle = rss_mb()
    seconds = time.perf_counter() - started
    after = rss_mb()
    delta = after - before
    verdict = "flat" if delta < FLAT_MB else "NOT FLAT"
    print(f"  RSS over {count} explain_many calls x {len(names)} methods ({case.loop_note}; {seconds:.1f} s):")
    print(f"  before {before:7.1f} MB   halfway {middle:7.1f} MB   after {after:7.1f} MB   "
          f"delta {delta:+6.1f} MB   -> {verdict} (threshold {FLAT_MB:.0f} MB)")


# ---------------------------------------------------------------------------- main


def header(settings: Settings, quick: bool) -> None:
    print("Protoscope saliency benchmark" + (" (--quick smoke run: fewer repeats and images)" if quick else ""))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"One run on this machine: {psutil.cpu_count()} CPUs (load average {load}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads.")
    print(f"Timings in ms: median of {settings.repeats} repeats after {settings.warmup} warm-up round(s), the three "
          "measurements taking turns;")
    print(f"inputs are transformed tensors (preprocessing excluded), block {BLOCK}, fixed target class 3.")
    print("'separate' = one explain() per method, each its own trace; 'shared' = one explain_many() call,")
    print("one forward + one backward pass for all methods (counted once). RSS is read after gc.collect().")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats and images: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    names = [name for name in methods() if name in CAM_FAMILY]
    missing = sorted(set(CAM_FAMILY) - set(names))
    if missing:
        sys.exit(f"methods missing from the registry: {', '.join(missing)}")
    header(settings, args.quick)
    for build, loop in ((digits_case, settings.digits_loop), (resnet_case, settings.resnet_loop)):
        case = build()
        print(f"\n== {case.title}, methods: {', '.join(names)}")
        time_case(case, names, settings)
        memory_case(case, names, loop, settings.memory_warmup)


if __name__ == "__main__":
    main()
