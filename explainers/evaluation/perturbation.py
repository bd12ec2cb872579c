"""The metrics' perturbed inputs (``Perturbation``), each listed once per chunk (``PerturbationPlan``), run batched."""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable

import numpy as np
import torch

from ..data.datasets import imagenet_classes
from ..engine import batching
from ..models import ModelSpec
from ..models.preprocess import IMAGENET_MEAN, Preprocess
from ..runtime import compute
from ..runtime.progress import Progress, report
from .blur import rise_blur
from .imputation import noisy_linear_imputation

if TYPE_CHECKING:
    from .settings import EvaluationSettings

__all__ = ["BaselineInput", "BlurredInput", "ChunkTensors", "DeletedInput", "ImputedInput", "InsertedInput",
           "Perturbation", "PerturbationPlan", "PlainInput", "ScaledInput", "deletion_baseline", "digest",
           "pixel_order", "removal_mask", "run_plan", "step_counts", "unit_scaled"]


# ------------------------------------------------------------------------------------- the pieces

def unit_scaled(heatmap: np.ndarray) -> np.ndarray:
    """s(.) of seed 002 (eq. 9): the map min-max scaled to [0, 1], the same affine scaling for signed
    and unsigned maps (so a signed map's most negative pixel is occluded fully and its zeros partly).
    A constant map singles out no pixel, so it occludes none: all ones (min-max would be 0/0)."""
    values = np.asarray(heatmap, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.ones_like(values)
    return (values - low) / (high - low)


def pixel_order(heatmap: np.ndarray, seed: int = 0) -> np.ndarray:
    """Pixel indices (row-major) from the most to the least relevant: descending value, ties in a
    seeded random order (the same for every map of the image size, so equal maps order alike;
    raster order would delete the top rows of a flat region first)."""
    values = np.asarray(heatmap, dtype=np.float64).reshape(-1)
    tiebreak = np.random.default_rng(seed).permutation(values.size)
    return np.lexsort((tiebreak, -values))


def step_counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels removed (or inserted) after each of ``steps`` equal steps: 0, ..., ``pixels``."""
    return np.round(np.arange(steps + 1) * pixels / steps).astype(np.int64)


def deletion_baseline(model: ModelSpec) -> torch.Tensor:
    """Deletion's constant, as model input values (C,): the mean pixel of the data the model was
    trained on. For an ImageNet classifier ImageNet's mean (EfficientNet-Lite0 normalises with 0.5,
    which is not its data's mean); otherwise the mean its preprocessing subtracts (the digits'
    training mean 0.30; a checkpoint's own normalisation)."""
    mean = model.transform.mean
    if len(mean) == 3 and list(model.classes) == list(imagenet_classes()):
        mean = IMAGENET_MEAN
    pixels = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    return model.transform.model_values(pixels).view(-1)


def removal_mask(indices: np.ndarray, pixels: int) -> np.ndarray:
    """A flat boolean mask of ``pixels`` pixels, True at ``indices``."""
    mask = np.zeros(pixels, dtype=bool)
    mask[indices] = True
    return mask


def digest(array: np.ndarray) -> bytes:
    """A 16-byte digest of an array's bytes: part of a perturbation's key."""
    return hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=16).digest()


# ------------------------------------------------------------------------------------- the inputs

@dataclass
class ChunkTensors:
    """What a chunk's perturbations are built from, on the model's device: the ``inputs`` (n, C, H, W), their
    ``blurred`` copies (RISE's insertion start, ``rise_blur``) and deletion's ``baseline`` (C, 1, 1)."""

    inputs: torch.Tensor
    blurred: torch.Tensor
    baseline: torch.Tensor


def _chunk_tensors(inputs: torch.Tensor, baseline: torch.Tensor, sigma: float, padding: str) -> ChunkTensors:
    return ChunkTensors(inputs, rise_blur(inputs, sigma, padding), baseline.view(-1, 1, 1))


class Perturbation:
    """One perturbed input of a chunk: image ``image`` (its index in the chunk) changed one way.

    ``key`` names the input: the image, the kind (the class) and ``detail`` (a digest of the mask or map),
    so two perturbations with equal keys are one input, computed once. A kind says how it is built from
    the chunk's tensors (``build``, on the compute thread) and may do work beforehand in the planning
    thread (``prepare``: ROAD's imputation), which ``run_plan`` overlaps with the previous batch's pass.

    Every perturbed input is a model input (after normalisation): X o H multiplies the normalised tensor,
    so an occluded pixel becomes the normalisation mean, the zero of the network's input.
    """

    def __init__(self, image: int, *detail: Hashable) -> None:
        self.image = image
        self.key: Hashable = (image, type(self).__name__, *detail)

    def prepare(self, inputs: torch.Tensor, settings: EvaluationSettings, units: Preprocess | None = None) -> None:
        """Work before the batch goes to the compute thread, from the chunk's CPU ``inputs`` (model input values;
        ``units``, the model's ``Preprocess``, converts them to [0, 1] pixels and back); none by default."""

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        """The input itself (C, H, W), from the chunk's ``shared`` tensors."""
        raise NotImplementedError


class PlainInput(Perturbation):
    """The image unchanged: S_c(X)."""

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        return shared.inputs[self.image]


class BaselineInput(Perturbation):
    """Every pixel deleted: the baseline everywhere, the same for every map."""

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        return shared.baseline.expand_as(shared.inputs[self.image])


class BlurredInput(Perturbation):
    """The blurred copy (nothing inserted yet), the same for every map."""

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        return shared.blurred[self.image]


class ScaledInput(Perturbation):
    """X o H: the image times ``scale`` (H, W), a map scaled to [0, 1] (seed 002 eq. 23)."""

    def __init__(self, image: int, scale: np.ndarray) -> None:
        super().__init__(image, digest(scale))
        self.scale = torch.from_numpy(scale)

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        x = shared.inputs[self.image]
        return x * self.scale.to(x.device)


class DeletedInput(Perturbation):
    """The pixels of ``mask`` (flat, H x W) set to the baseline."""

    def __init__(self, image: int, mask: np.ndarray) -> None:
        super().__init__(image, digest(np.packbits(mask)))
        self.mask = torch.from_numpy(mask)

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        x = shared.inputs[self.image]
        return torch.where(self.mask.view(x.shape[-2:]).to(x.device), shared.baseline, x)


class InsertedInput(Perturbation):
    """The pixels of ``mask`` (flat, H x W) of the image put into its blurred copy."""

    def __init__(self, image: int, mask: np.ndarray) -> None:
        super().__init__(image, digest(np.packbits(mask)))
        self.mask = torch.from_numpy(mask)

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        x = shared.inputs[self.image]
        return torch.where(self.mask.view(x.shape[-2:]).to(x.device), x, shared.blurred[self.image])


class ImputedInput(Perturbation):
    """ROAD's input: the pixels of ``mask`` (flat, H x W) removed and filled in by noisy linear imputation
    (``prepare``, in the planning thread), in [0, 1] pixels before the model's normalisation as the authors'
    code does (``settings.road_units`` "pixels"; "model": in the normalised input). The imputation itself is
    the same either way (a weighted mean commutes with the normalisation); the noise's standard deviation is
    ``settings.road_noise`` in those units. The noise is seeded by ``seed`` and by what is removed, so two
    maps that remove the same pixels share one input."""

    def __init__(self, image: int, mask: np.ndarray, seed: int) -> None:
        key = digest(np.packbits(mask))
        super().__init__(image, key)
        self.mask = mask
        self.seed = (seed << 64) | int.from_bytes(key[:8], "little")
        self.imputed: torch.Tensor | None = None

    def prepare(self, inputs: torch.Tensor, settings: EvaluationSettings, units: Preprocess | None = None) -> None:
        if self.imputed is not None:
            return
        x, removed = inputs[self.image], self.mask.reshape(inputs.shape[-2:])
        if settings.road_units == "model" or units is None:
            self.imputed = noisy_linear_imputation(x, removed, settings.road_noise, self.seed)
            return
        pixels = units.pixel_values(x[None].double())[0]
        filled = units.model_values(noisy_linear_imputation(pixels, removed, settings.road_noise,
                                                            self.seed)[None].double())[0].float()
        self.imputed = torch.where(torch.from_numpy(removed), filled, x)  # kept pixels exactly as they were

    def build(self, shared: ChunkTensors) -> torch.Tensor:
        assert self.imputed is not None, "run_plan prepares every input before building it"
        return self.imputed.to(shared.inputs.device)


# ------------------------------------------------------------------------------------- the plan and its run

class PerturbationPlan:
    """The distinct perturbed inputs of a chunk, in the order first asked for, each under its key;
    ``requested`` counts every request, shared or not. Every metric of every method adds the inputs it
    needs: the plain image, its blurred copy and the all-deleted image then serve every method, and two
    maps that order the pixels alike share their steps."""

    def __init__(self) -> None:
        self.inputs: list[Perturbation] = []
        self.keys: dict[Hashable, int] = {}
        self.requested = 0

    def add(self, perturbation: Perturbation) -> int:
        """The index of ``perturbation``'s input in the plan: a new one, or the one already under its key."""
        self.requested += 1
        found = self.keys.get(perturbation.key)
        if found is None:
            found = self.keys[perturbation.key] = len(self.inputs)
            self.inputs.append(perturbation)
        return found


def run_plan(model: ModelSpec, inputs: torch.Tensor, targets: torch.Tensor, plan: PerturbationPlan,
             settings: EvaluationSettings, listener: Progress | None) -> tuple[np.ndarray, float, float]:
    """The target's probability for every input of ``plan``, the seconds inside the network's passes and
    the seconds spent preparing inputs here (ROAD's imputation): batches of the measured size through the
    inference copy, each a compute job, the next batch prepared while the previous one runs."""
    network = model.inference_net
    size = batching.batch_size(model)
    # On the model's device; ROAD's imputation reads the CPU copy (scipy), and its results go to the device in build.
    if settings.blur_sigma is None:
        raise ValueError("run_plan needs a blur_sigma: evaluate measures it first (insertion_blur)")
    shared = compute.run(_chunk_tensors, inputs.to(model.device), deletion_baseline(model).to(model.device),
                         settings.blur_sigma, settings.blur_padding)
    units = model.transform
    values = np.zeros(len(plan.inputs))
    timing = {"passes": 0.0, "preparation": 0.0}
    total = len(plan.inputs)

    def collect(start: int, running: Future) -> None:
        scores, seconds = running.result()
        values[start:start + len(scores)] = scores
        timing["passes"] += seconds
        report(start + len(scores), total, f"Evaluation: {start + len(scores)} of {total} perturbed inputs", listener)

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="protoscope-evaluation") as submitter:
        pending: tuple[int, Future] | None = None
        for start in range(0, total, size):
            batch = plan.inputs[start:start + size]
            began = time.perf_counter()
            for perturbation in batch:
                perturbation.prepare(inputs, settings, units)
            timing["preparation"] += time.perf_counter() - began
            if pending is not None:
                collect(*pending)
            pending = (start, submitter.submit(compute.run_batch, _score_job, network, shared, targets, batch))
        if pending is not None:
            collect(*pending)
    return values, timing["passes"], timing["preparation"]


@torch.inference_mode()
def _score_job(network: torch.nn.Module, shared: ChunkTensors, targets: torch.Tensor,
               batch: list[Perturbation]) -> tuple[np.ndarray, float]:
    """One compute job: build the batch's inputs, one pass, each input's target probability."""
    stacked = torch.stack([p.build(shared) for p in batch]).contiguous(memory_format=torch.channels_last)
    started = time.perf_counter()
    probabilities = network(stacked).softmax(dim=1)
    seconds = time.perf_counter() - started
    chosen = targets[torch.tensor([p.image for p in batch], device=targets.device)]
    return probabilities.gather(1, chosen[:, None])[:, 0].cpu().numpy().astype(np.float64), seconds

