"""How many masked inputs to push through a network at once: measured, once per network.

Score-CAM, Cluster-CAM and Ablation-CAM run hundreds of gradient-free passes in batches. The
best batch size depends on the network and the machine: a ResNet on two CPU cores runs a
batch of 32 at its best speed per image, while a depthwise network such as EfficientNet-Lite0
slows down beyond a few images, its activations no longer fitting the caches (issue 10
measured 26 ms per masked pass at batches of 32 against 15 ms at its best batch size).

``batch_size(model)`` times the model's inference copy on a few batch sizes (seeded random
inputs, under ``torch.inference_mode``, each timing a job of the compute thread) and keeps,
among the sizes within 10% of the best time per image, the smallest: nearly the same throughput with
the shortest jobs, so that other sessions wait least between batches (``explainers.runtime.compute``).
Sizes are tried from 1 upwards until a batch would take longer than ``JOB_SECONDS`` at the best
speed seen so far, a size is slower per image than the best by more than ``NEAR_BEST`` (the
curve has turned up), or a batch does not fit in the device's memory (a GPU's), so the first
Score-CAM of a model pays about a second for the timing. The choice is kept per network for the
life of the process; ``timings(model)`` shows what was measured.
"""
from __future__ import annotations

import statistics
import threading
import time
import weakref
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..runtime import compute
from ..runtime.devices import is_out_of_memory, release_memory, synchronize

if TYPE_CHECKING:
    from ..models import ModelSpec

CANDIDATES = (1, 2, 4, 8, 16, 32, 64)
NEAR_BEST = 1.10  # sizes within this factor of the best time per image count as equally fast
JOB_SECONDS = 0.25  # no batch expected to take longer than this is tried (other sessions wait for it)
REPEATS = 2

_MEASURED: "weakref.WeakKeyDictionary[nn.Module, dict[int, float]]" = weakref.WeakKeyDictionary()
# A copy of a model's network (the sanity checks' randomised copies) -> the model whose timings it shares.
_SAME_SPEED: "weakref.WeakKeyDictionary[nn.Module, ModelSpec]" = weakref.WeakKeyDictionary()
_MEASURING = threading.Lock()

__all__ = ["batch_size", "choose", "same_speed", "timings"]


def batch_size(model: "ModelSpec") -> int:
    """The batch size for ``model``'s masked passes, measured on first use (see the module docstring)."""
    return choose(timings(model))


def same_speed(copy: "ModelSpec", source: "ModelSpec") -> None:
    """Let ``copy`` (the same architecture as ``source`` with other weights, e.g. randomised) use the batch
    sizes measured for ``source`` instead of timing its own: the speed of a pass does not depend on the
    weights, and a check that makes six copies should not pay six timings."""
    _SAME_SPEED[copy.net] = source


def timings(model: "ModelSpec") -> dict[int, float]:
    """Seconds per image at each batch size tried, for ``model.inference_net`` (measured once; for a copy
    declared with ``same_speed``, those of its source)."""
    source = _SAME_SPEED.get(model.net)
    if source is not None:
        return timings(source)
    network = model.inference_net
    found = _MEASURED.get(network)
    if found is None:
        with _MEASURING:
            found = _MEASURED.get(network)
            if found is None:
                found = _MEASURED[network] = _measure(network, model.probe_inputs(1))
    return dict(found)


def choose(per_image: dict[int, float]) -> int:
    """The smallest batch size whose time per image is within ``NEAR_BEST`` of the best."""
    best = min(per_image.values())
    return min(size for size, seconds in per_image.items() if seconds <= best * NEAR_BEST)


def _measure(network: nn.Module, probe: torch.Tensor) -> dict[int, float]:
    per_image: dict[int, float] = {}
    for size in CANDIDATES:
        if per_image and size * min(per_image.values()) > JOB_SECONDS:
            break  # even at the best speed seen, this batch would hold the compute thread too long
        try:
            batch = probe.expand(size, *probe.shape[1:]).contiguous(memory_format=torch.channels_last)
            compute.run_batch(_timed, network, batch)  # warm-up: allocator and kernels for this shape
            seconds = statistics.median(compute.run_batch(_timed, network, batch) for _ in range(REPEATS))
        except Exception as error:
            if not is_out_of_memory(error) or not per_image:
                raise  # not even one image fits: the method says so (``api._compute``)
            release_memory(probe.device)
            break  # a GPU's memory ends the search: the sizes that fitted are the candidates
        per_image[size] = seconds / size
        if per_image[size] > min(per_image.values()) * NEAR_BEST:
            break  # the curve has turned up: bigger is slower
    return per_image


@torch.inference_mode()
def _timed(network: nn.Module, batch: torch.Tensor) -> float:
    started = time.perf_counter()
    network(batch)
    synchronize(batch.device)
    return time.perf_counter() - started
