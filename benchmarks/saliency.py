"""Saliency benchmark: the shared trace against one pass per method, and memory over long loops.

For the built-in ``digits`` model and torchvision ``resnet18`` (random weights, 224x224) it prints

- the time of ONE Grad-CAM call, of eight separate ``explain`` calls (one per CAM-family
  method) and of ONE ``explain_many`` call with all eight, the ratios separate/shared and
  shared/one-Grad-CAM (target: shared <= 1.5x one Grad-CAM), and the forward/backward passes
  the Explanation objects report;
- the process's resident memory (RSS) before and after a long loop of explanations of
  different images, which must stay flat;
- the perturbation methods: seconds and forward passes of Score-CAM, Ablation-CAM and
  Cluster-CAM's fast paths against their plain definitions (one full forward per channel, one
  image at a time), as ratios. Targets: Ablation-CAM at B4 >= 50x faster than brute force;
  Score-CAM >= 3x faster than one forward per channel; Cluster-CAM < 10 forward passes.

Run from the repository root:  .venv/bin/python benchmarks/saliency.py [--quick] [--only cam|perturbation]
"""
from __future__ import annotations

import argparse
import gc
import math
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

from explainers import Explanation, ModelSpec, explain, explain_many, load_dataset, load_model, method_names  # noqa: E402
from explainers.methods.ablation_cam import ablation_cam_plain  # noqa: E402
from explainers.methods.masking import scaled_masks  # noqa: E402
from explainers.methods.score_cam import score_cam_plain  # noqa: E402

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
ABLATION_TARGET = 50.0  # Ablation-CAM at B4: fast path at least this many times faster than brute force
SCORE_TARGET = 3.0  # Score-CAM: fast path at least this many times faster than one forward per channel
CLUSTER_TARGET = 10  # Cluster-CAM: fewer forward passes than this
QUICK_CHANNELS = 48  # --quick times the plain definitions on this many channels and extrapolates


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


# ---------------------------------------------------------------------------- perturbation methods


def seconds(run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls (one untimed warm-up first) and the last result."""
    result = run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


@torch.no_grad()
def score_cam_batched_naive(model: ModelSpec, image: torch.Tensor, block: str, target: int,
                            channels: int | None = None) -> int:
    """One forward per channel in batches of 32, no skipping, no sharing, default memory layout
    (how pytorch-grad-cam runs Score-CAM); returns the forward passes. Only timed, for comparison."""
    from explainers.engine import trace

    activations = trace(model, image[None], target, blocks=[block]).activations[block][0][:channels]
    for start in range(0, len(activations), 32):
        masks, _ = scaled_masks(activations[start:start + 32], model.input_size)
        model.net(image[None] * masks[:, None]).softmax(dim=1)[:, target]
    return 1 + len(activations)


def peak_gflops() -> float:
    """FP32 peak at the nominal clock: two 256-bit FMA pipes per core (AVX2 / AVX-512 on Zen 4) are
    32 FLOP per cycle; boost clocks can add to it. Read from /proc/cpuinfo (0 when unknown)."""
    try:
        with open("/proc/cpuinfo") as info:
            mhz = next(float(line.split(":")[1]) for line in info if line.startswith("cpu MHz"))
    except (OSError, StopIteration, ValueError):
        return 0.0
    return psutil.cpu_count() * 32 * mhz / 1e3


def multiply_adds(model: ModelSpec) -> int:
    """Multiply-adds of one forward pass of one image, counted over the convolutions and linear layers."""
    count = [0]

    def add(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if isinstance(module, torch.nn.Conv2d):
            count[0] += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, torch.nn.Linear):
            count[0] += output.numel() * module.in_features

    handles = [module.register_forward_hook(add) for module in model.net.modules()]
    try:
        with torch.inference_mode():
            model.net(torch.zeros(1, len(model.transform.mean), *model.input_size))
    finally:
        for handle in handles:
            handle.remove()
    return count[0]


def plain_seconds(plain: Callable[..., tuple[torch.Tensor, int]], model: ModelSpec, image: torch.Tensor,
                  block: str, target: int, quick: bool) -> tuple[float, int, str]:
    """Seconds and passes of a plain definition; with --quick, timed on the first channels and scaled up."""
    channels = model.block_shapes[block][0]
    subset = QUICK_CHANNELS if quick and channels > QUICK_CHANNELS else None
    started = time.perf_counter()
    _, passes = plain(model, image, block, target, channels=subset)
    elapsed = time.perf_counter() - started
    if subset is None:
        return elapsed, passes, ""
    return elapsed * channels / subset, 1 + channels, f" (plain timed on {subset} channels, scaled to {channels})"


def perturbation_case(case: Case, settings: Settings, quick: bool) -> None:
    """Fast path against plain definition for Ablation-CAM (B4, B3), Score-CAM (B4) and Cluster-CAM (B4)."""
    model, image = case.model, case.image(0)
    target = explain(model, image, "gradcam").target
    repeats = max(1, settings.repeats // 4)
    print(f"  perturbation methods, target class {target} (the predicted one); seconds: fast path median of "
          f"{repeats}, plain definition once; forward passes counted in images, per explained image")
    rows = []
    for block in ("B4", "B3"):
        fast, result = seconds(lambda: explain(model, image, "ablationcam", block=block), repeats)
        plain, passes, note = plain_seconds(ablation_cam_plain, model, image, block, target, quick)
        verdict = f"target >= {ABLATION_TARGET:.0f}x: {'PASS' if plain / fast >= ABLATION_TARGET else 'MISS'}" \
            if block == "B4" else "(no target)"
        rows.append((f"Ablation-CAM {block}", fast, result.forwards, plain, passes, verdict + note))
    fast, result = seconds(lambda: explain(model, image, "scorecam"), repeats)
    plain, passes, note = plain_seconds(score_cam_plain, model, image, "B4", target, quick)
    rows.append(("Score-CAM B4", fast, result.forwards, plain, passes,
                 "vs one forward per channel, one at a time (the authors' code)" + note))
    total = model.block_shapes["B4"][0]
    channels = min(QUICK_CHANNELS, total) if quick else total
    naive, _ = seconds(lambda: score_cam_batched_naive(model, image, "B4", target, channels), repeats)
    naive *= total / channels  # warmed up and a median, like the fast path: a fair baseline
    verdict = f"target >= {SCORE_TARGET:.0f}x: {'PASS' if naive / fast >= SCORE_TARGET else 'MISS'}"
    rows.append(("  vs batches of 32, no skip", fast, result.forwards, naive, 1 + total,
                 f"{verdict}; every channel, default layout (pytorch-grad-cam's way)"))
    masked = result.forwards - 1  # beyond the shared trace
    flops = 2 * multiply_adds(model)
    needed = naive / SCORE_TARGET / masked  # seconds per pass the target allows, with these passes
    decomposition = (
        f"  Score-CAM time = masked passes x time per pass.\n"
        f"  Passes: {masked} distinct non-constant masks of {total} channels ({total / masked:.2f}x fewer); each needs "
        f"its own pass of a nonlinear network, so no exact method does fewer.\n"
        f"  Per pass ({flops / 1e6:.0f} MFLOP): {fast / masked * 1e3:.2f} ms = {flops / (fast / masked) / 1e9:.0f} GFLOP/s "
        f"(BN-folded, channels-last copy) against {naive / total * 1e3:.2f} ms = {flops / (naive / total) / 1e9:.0f} "
        f"GFLOP/s ({naive / total / (fast / masked):.2f}x).\n"
        f"  The {SCORE_TARGET:.0f}x target against batches of 32 needs {needed * 1e3:.2f} ms per pass = "
        f"{flops / needed / 1e9:.0f} GFLOP/s; this CPU's FP32 peak is about {peak_gflops():.0f} GFLOP/s at its nominal "
        f"clock ({psutil.cpu_count()} cores x 32 FLOP per cycle; boost clocks add some).")
    cluster, result = seconds(lambda: explain(model, image, "clustercam"), repeats)
    verdict = f"target < {CLUSTER_TARGET} passes: {'PASS' if result.forwards < CLUSTER_TARGET else 'MISS'}"
    rows.append(("Cluster-CAM B4 (Q = 6)", cluster, result.forwards, fast, rows[2][2], verdict + "; vs fast Score-CAM"))
    print(f"  {'':<28} {'fast s':>9} {'fwd':>5}   {'plain s':>9} {'fwd':>5}   {'time ratio':>10} {'fwd ratio':>9}")
    for label, fast_s, fast_fwd, plain_s, plain_fwd, note in rows:
        print(f"  {label:<28} {fast_s:9.3f} {fast_fwd:5d}   {plain_s:9.3f} {plain_fwd:5d}   "
              f"{plain_s / fast_s:9.1f}x {plain_fwd / max(fast_fwd, 1):8.1f}x   {note}")
    print(decomposition)


# ---------------------------------------------------------------------------- the built-in ImageNet model


def imagenet_case(settings: Settings, names: list[str]) -> None:
    """efficientnet_lite0 (real ImageNet weights) on the cat photo, at B4 and B3: every CAM-family map
    that applies at the block (CAM is defined at B4 only) from one ``explain_many`` call, against one
    Grad-CAM (target <= 1.5x); and the dashboard's pass of a view (``ui.cache.view_trace``: every
    block recorded, one backward of the predicted class to every block) with the same maps from it."""
    from explainers import explain_trace, method_info, trace
    from explainers.data.datasets import PHOTOS

    model = load_model("efficientnet_lite0")
    image = model.transform(PHOTOS[0].load())  # chelsea, preprocessed once: preprocessing excluded
    print("\n== efficientnet_lite0 (ImageNet-1k weights, 224x224, scikit-image's cat photo, predicted class)")
    for block in ("B4", "B3"):
        chosen = [name for name in names if method_info(name).available(model, block) is None]
        runs = {
            "one": lambda block=block: explain(model, image, "gradcam", block=block),
            "many": lambda block=block, chosen=chosen: explain_many(model, image, chosen, block=block),
            "view": lambda block=block, chosen=chosen: explain_trace(
                model, trace(model, image[None], gradients=True), chosen, block),
        }
        timed = median_ms(runs, settings.repeats, settings.warmup)
        one, many, view = timed["one"], timed["many"], timed["view"]
        verdict = "PASS" if many / one <= TARGET_RATIO else "MISS"
        shape = model.block_shapes[block]
        print(f"  {block} = {model.block_paths[block]} ({shape[0]} x {shape[1]} x {shape[2]}), "
              f"{len(chosen)} methods: {', '.join(chosen)}")
        for label, value, note in (
            ("one Grad-CAM explain", f"{one:9.1f} ms", "1 fwd + 1 bwd to the block"),
            (f"explain_many, all {len(chosen)}", f"{many:9.1f} ms", "1 fwd + 1 bwd to the block"),
            ("ratio shared / one Grad-CAM", f"{many / one:9.2f} x", f"target <= {TARGET_RATIO}: {verdict}"),
            (f"app's view pass + {len(chosen)} maps", f"{view:9.1f} ms",
             f"1 fwd + 1 bwd to B1 (every depth at once); {view / one:.2f}x one Grad-CAM"),
        ):
            print(f"  {label:<30} {value:>12}   {note}")
        score_cam_per_pass(model, image, block)


SCORE_PASS_TARGET = 1.25  # Score-CAM's seconds per masked pass / the network's best batched seconds per image


def score_cam_per_pass(model: ModelSpec, image: torch.Tensor, block: str) -> None:
    """Score-CAM's seconds per masked pass against the fastest batched inference per image of the same
    network, measured in the same run (issue 10: target <= 1.25x)."""
    from explainers.engine import batching

    explain(model, image, "scorecam", block=block)  # warm: inference copy made, batch size measured
    made = explain(model, image, "scorecam", block=block)
    passes = made.forwards - 1  # the first forward is the shared trace
    fastest = min(batching.timings(model).values())  # measured in this run, when the batch size was chosen
    per_pass = made.seconds / passes
    verdict = "PASS" if per_pass / fastest <= SCORE_PASS_TARGET else "MISS"
    print(f"  {'Score-CAM per masked pass':<30} {per_pass * 1000:9.1f} ms   {passes} passes in {made.seconds:.2f} s, "
          f"batches of {batching.batch_size(model)}; fastest batched inference {fastest * 1000:.1f} ms per image: "
          f"{per_pass / fastest:.2f}x (target <= {SCORE_PASS_TARGET}: {verdict})")


# ---------------------------------------------------------------------------- main


def header(settings: Settings, quick: bool, only: str | None = None) -> None:
    print("Protoscope saliency benchmark" + (" (--quick smoke run: fewer repeats and images)" if quick else ""))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(f"One run on this machine: {psutil.cpu_count()} CPUs (load average {load}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads.")
    if only == "perturbation":
        return
    print(f"Timings in ms: median of {settings.repeats} repeats after {settings.warmup} warm-up round(s), the three "
          "measurements taking turns;")
    print(f"inputs are transformed tensors (preprocessing excluded), block {BLOCK}, fixed target class 3.")
    print("'separate' = one explain() per method, each its own trace; 'shared' = one explain_many() call,")
    print("one forward + one backward pass for all methods (counted once). RSS is read after gc.collect().")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few repeats and images: a smoke run")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    parser.add_argument("--only", choices=["cam", "perturbation", "imagenet"], help="run one part: the CAM family's "
                        "shared trace and memory, the perturbation methods' fast paths, or the built-in ImageNet model")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    names = [name for name in method_names() if name in CAM_FAMILY]
    missing = sorted(set(CAM_FAMILY) - set(names))
    if missing:
        sys.exit(f"methods missing from the registry: {', '.join(missing)}")
    header(settings, args.quick, args.only)
    if args.only in (None, "cam", "imagenet"):
        imagenet_case(settings, names)
    if args.only == "imagenet":
        return
    for build, loop in ((digits_case, settings.digits_loop), (resnet_case, settings.resnet_loop)):
        case = build()
        if args.only != "perturbation":
            print(f"\n== {case.title}, methods: {', '.join(names)}")
            time_case(case, names, settings)
            memory_case(case, names, loop, settings.memory_warmup)
        if args.only != "cam":
            print(f"\n== {case.title}: Score-CAM, Ablation-CAM, Cluster-CAM")
            perturbation_case(case, settings, args.quick)


if __name__ == "__main__":
    main()
