"""Sanity checks by weight randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps",
NeurIPS; cited by seed 001, the lecture's "limits of saliency"): a map that explains the *model*
must change when the model's weights are destroyed. One that barely changes explains the image.

Two randomisations of a private copy of the network (the loaded model, shared by a classroom,
is never touched: no weight, hook, flag or fingerprint of it changes):

- **cascading** (Adebayo sec. 3.1): the weights are re-initialised from the top down, one layer
  group after another, cumulatively: the classifier, then B4, B3, B2, B1 and the stem, so the
  last step is a network with no learned weight left;
- **independent**: one group at a time, every other group keeping its learned weights.

Layer groups come from the model's own blocks (``ModelSpec.block_paths``, as the family adapters
of ``explainers.models.families`` name them): every module that owns parameters or buffers belongs to
the first block whose output it precedes in the forward pass (a module inside a block, or between
the previous block's output and this one's: VGG's convolutions before a stage's max pool,
EfficientNet's stages between two feature levels and its head convolution), "stem" before B1 and
"classifier" after the last block (the final linear layer and anything between it and the last
block, DenseNet's last batch norm). Tensors the network holds itself (a ViT's position embedding and class
token, added to the patch embedding before the first block) belong to the stem. The order comes from one
probe forward of the copy.

Re-initialisation: each module's own ``reset_parameters()`` (what PyTorch's constructors run:
Kaiming-uniform convolutions and linear layers), seeded per group, so a group gets the same random
weights in both modes and on every run. Batch norms are reset *entirely* by default: affine weight 1
and bias 0, and the running mean 0 and variance 1 as well. Adebayo re-initialise the network's
weights "and other trainable variables" (batch norm's scale and shift among them) and leave the
moving statistics, which are not trainable. Here they are reset too: they were measured on the
activations of the trained layers below, so kept they normalise random activations with the
statistics of learned ones (a network that is neither trained nor random), and a small trained
variance then amplifies every randomised layer's output, compounding through a deep network's
cascade. Reset, a fully randomised copy is exactly the untrained architecture as PyTorch builds it
(Quantus' parameter randomisation does the same). ``keep_statistics=True`` follows Adebayo's
choice instead. A module with parameters and no ``reset_parameters`` (a layer scale) has each
parameter redrawn from a normal with that parameter's own mean and standard deviation.

Similarity of each randomised map with the original one (Adebayo sec. 3, Figures 2-4), per image
at input resolution, averaged over images:

- ``spearman``: Spearman rank correlation of the absolute values of the maps. Adebayo report it
  with and without the absolute value; the absolute value is the primary one here because several
  methods (LRP, CAM, HiResCAM) are signed and a map whose sign flips everywhere still points at the
  same pixels: ignoring the sign can only make a method look *more* stable, so a method that passes
  on absolute values passes on signed ones too. ``spearman_signed`` is the other one.
- ``ssim``: structural similarity (``skimage.metrics.structural_similarity``) of the absolute maps,
  each min-max scaled to [0, 1] as the dashboard draws an unsigned map (data range 1).

A map that is constant (Grad-CAM's ReLU of a randomised network may leave nothing) has no ranks:
its Spearman is undefined (NaN), counted in ``constant``, and left out of the mean.

A method is *flagged* when its mean rank correlation stays at or above ``THRESHOLD`` = 0.5 after
full randomisation (cascading), or after randomising a group (independent): 0.5 is halfway between
a map that is unchanged (1) and one that has nothing to do with the original (0). Adebayo give no
threshold; they judge the curves by eye, and the methods they find to fail (Guided BackProp, Guided
Grad-CAM) keep a visibly high similarity as layers are randomised, while the gradient and Grad-CAM
lose it. On the digits model, over 51 test images with every layer randomised (printed by
``benchmarks/sanity_figures.py``): at B4 every CAM method falls to between -0.04 and 0.10; at B3 most fall
to between -0.07 and 0.14, but LayerCAM stays at 0.654 (flagged) and EigenGrad-CAM at 0.387; the
model-independent spectral residual stays at 1.
"""
from __future__ import annotations

import threading
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from ..data.datasets import DatasetSpec
from ..engine import batching
from ..engine.trace import trace
from ..methods import method_info
from ..methods.explanation import explain_trace
from ..models import ModelSpec
from ..models.families import Probe, probe
from ..models.inference import hookless_copy
from ..models.inputs import as_batch
from ..runtime import compute
from ..runtime.errors import MethodUnavailableError, UserInputError
from ..runtime.progress import Progress, current_listener, report, reporting, scaled
from ..runtime.settings import UnknownSettingError
from .faithfulness import image_source

__all__ = ["GROUPS", "IMAGES_PER_PASS", "ORIGINAL", "THRESHOLD", "RandomizationResult", "SANITY_MODES",
           "layer_groups", "randomization_check", "randomized_models", "rank_correlation",
           "structural_similarity_of_maps"]

GROUPS = ("classifier", "B4", "B3", "B2", "B1", "stem")  # cascading order: from the top of the network down
SANITY_MODES = ("cascading", "independent")
ORIGINAL = "original"  # the first step: the model as loaded
THRESHOLD = 0.5
SEED = 0
IMAGES_PER_PASS = 16  # images per pass: a step's maps for N images take ceil(N / 16) traces


class UnsuitableMethodError(MethodUnavailableError):
    """A method the randomisation check cannot run honestly (the message says why)."""


# --- which modules belong to which group -----------------------------------------------------------

def layer_groups(model: ModelSpec) -> dict[str, list[str]]:
    """Module paths of each layer group (``GROUPS`` order; a group the network lacks is absent), by the
    order in which one probe forward of a private copy finishes them (see the module docstring). Only
    modules that own parameters or buffers are listed: they are what a randomisation changes."""
    return _groups(compute.run(hookless_copy, model.net), model)  # copied on the compute thread: nothing taps it then


def _groups(net: nn.Module, model: ModelSpec) -> dict[str, list[str]]:
    observed = probe(net, len(model.transform.mean), model.input_size)  # a private copy: its taps go again
    position = {path: i for i, path in enumerate(observed.order)}
    blocks = list(model.block_paths.items())
    ends = [position[path] for _, path in blocks]
    stem_end = _stem_end(observed, position, blocks[0][1], ends[0])
    found: dict[str, list[str]] = {group: [] for group in GROUPS}
    for path, module in net.named_modules():
        owns = any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
        if owns and path == "" and not callable(getattr(module, "reset_parameters", None)):
            found["stem"].append(path)  # the network's own tensors: a ViT's position embedding and class token
            continue
        if not owns or path not in position:  # owns nothing, or never runs: randomising it changes nothing
            continue
        found[_group_of(path, position[path], blocks, ends, stem_end)].append(path)
    return {group: paths for group, paths in found.items() if paths}


def _inside(path: str, block_path: str) -> bool:
    return path == block_path or path.startswith(block_path + ".")


def _stem_end(observed: Probe, position: dict[str, int], first_block: str, first_end: int) -> int:
    """Where the stem ends, as a position in the forward's finishing order: at the last module before B1
    whose output is at another resolution than B1's input. B1's stage starts after it: VGG's B1 is a max
    pool, and the two convolutions before it, at the same resolution, belong to it, while the first stage
    (at the input's resolution) is the stem. When nothing before B1 runs at another resolution (Lite0's
    stride-2 stem convolution, then a stage at that resolution), B1 is its own modules and the rest the stem."""
    before = [path for path in observed.order[:first_end] if not _inside(path, first_block)
              and observed.size(path) is not None]
    if not before:
        return -1
    entering = observed.size(before[-1])  # what B1 receives
    other = [path for path in before if observed.size(path) != entering]
    return position[other[-1]] if other else first_end


def _group_of(path: str, finished: int, blocks: list[tuple[str, str]], ends: list[int], stem_end: int) -> str:
    for name, block_path in blocks:
        if _inside(path, block_path):
            return name
    if finished < ends[0]:
        return "stem" if finished <= stem_end else blocks[0][0]
    return next((name for (name, _), end in zip(blocks, ends) if finished < end), "classifier")


# --- randomised copies -------------------------------------------------------------------------------

def randomized_models(model: ModelSpec, mode: str = "cascading", seed: int = SEED,
                      groups: Mapping[str, Sequence[str]] | None = None,
                      keep_statistics: bool = False) -> Iterator[tuple[str, ModelSpec]]:
    """The randomisation steps of ``model``: (group, a ``ModelSpec`` of a private copy with that group
    re-initialised, and in ``cascading`` mode every group above it too), in ``GROUPS`` order.

    Each copy is a real ``ModelSpec`` (same blocks by module path, classifier, preprocessing, classes),
    so every method runs on it unchanged; copies are made one step at a time and independent of each
    other (a caller may keep them). ``model`` itself is only read. ``groups``: ``layer_groups(model)``
    when the caller has it already. ``keep_statistics``: batch norms keep their running statistics
    (Adebayo's protocol, see the module docstring); by default they are reset with the rest.
    """
    if mode not in SANITY_MODES:
        raise UserInputError(f"mode must be one of {', '.join(SANITY_MODES)}, not {mode!r}")
    groups = groups or layer_groups(model)
    previous: nn.Module | None = None
    randomised: list[str] = []
    for group, paths in groups.items():
        source = previous if mode == "cascading" and previous is not None else model.net
        net = compute.run(_randomised_copy, source, paths, _group_seed(seed, group), keep_statistics)
        randomised = [*randomised, group] if mode == "cascading" else [group]
        previous = net
        yield group, _spec_of(model, net, randomised)


def _group_seed(seed: int, group: str) -> int:
    """One seed per group, the same in both modes: cascading's B3 step holds independent's B3 weights."""
    return zlib.crc32(f"{seed}:{group}".encode())


def _randomised_copy(net: nn.Module, paths: Sequence[str], seed: int, keep_statistics: bool = False) -> nn.Module:
    """A hookless copy of ``net`` with the modules at ``paths`` re-initialised under ``seed``. A compute
    job: torch's global generator is forked for it, and no other pass draws from it meanwhile."""
    twin = hookless_copy(net)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for path in paths:
            _reinitialise(twin.get_submodule(path), keep_statistics)
    return twin


def _reinitialise(module: nn.Module, keep_statistics: bool = False) -> None:
    reset = getattr(module, "reset_parameters", None)
    if callable(reset):
        kept = ({name: buffer.clone() for name, buffer in module.named_buffers(recurse=False)}
                if keep_statistics and isinstance(module, nn.modules.batchnorm._NormBase) else {})
        reset()  # batch norms: running statistics too (reset_running_stats), see the module docstring
        for name, values in kept.items():
            getattr(module, name).copy_(values)
        return
    for parameter in module.parameters(recurse=False):
        values = parameter.detach()
        spread = values.std() if values.numel() > 1 else values.abs()
        parameter.copy_(torch.randn_like(values) * spread + values.mean())


def _spec_of(model: ModelSpec, net: nn.Module, randomised: list[str]) -> ModelSpec:
    """``model``'s description over the copy ``net``: the same block and classifier paths. The block
    shapes and whether the head is GAP + linear are the architecture's, so they are the original's."""
    classifier = next(path for path, module in model.net.named_modules() if module is model.classifier)
    head = net.get_submodule(classifier)
    assert isinstance(head, nn.Linear)  # the copy's module at the original's classifier path
    return replace(
        model, name=f"{model.name} (randomised: {', '.join(randomised)})", net=net,
        blocks={name: net.get_submodule(path) for name, path in model.block_paths.items()},
        classifier=head, card={**model.card, "randomised": list(randomised)},
        _fingerprint=None, _block_shapes=dict(model.block_shapes), _gap_head=model.gap_head, _inference_net=None,
        _lazy=threading.Lock())


# --- similarity -------------------------------------------------------------------------------------

def rank_correlation(original: np.ndarray, other: np.ndarray) -> float:
    """Spearman's rank correlation of two maps' pixels (ties get average ranks); NaN when either map is
    constant (it has no ranking)."""
    a, b = np.asarray(original, dtype=np.float64).ravel(), np.asarray(other, dtype=np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def structural_similarity_of_maps(original: np.ndarray, other: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, skimage's defaults: 7x7 windows) of two maps each min-max scaled to
    [0, 1] (a constant map becomes 0 everywhere), with data range 1."""
    return float(structural_similarity(_unit(original), _unit(other), data_range=1.0))


def _unit(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    low, span = values.min(), np.ptp(values)
    return (values - low) / span if span > 0 else np.zeros_like(values)


def _scores(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    magnitude, other_magnitude = np.abs(original), np.abs(other)
    return {"spearman": rank_correlation(magnitude, other_magnitude),
            "ssim": structural_similarity_of_maps(magnitude, other_magnitude),
            "spearman_signed": rank_correlation(original, other),
            "constant": float(np.ptp(other) == 0)}


# --- the check --------------------------------------------------------------------------------------

@dataclass
class RandomizationResult:
    """What ``randomization_check`` found.

    ``table``: one row per method and step (``steps``: "original" first), columns ``method``, ``step``,
    ``spearman``, ``ssim`` (means over the images), ``spearman_signed``, ``constant`` (images whose map
    became constant, left out of the Spearman means), ``images``, ``randomised`` (the groups
    randomised at that step) and ``note`` (why a value is missing). ``per_image``: the same per image.
    ``maps[method][step]``: the heatmaps (K, H, W) at input resolution of the first ``kept`` images.
    ``groups``: the module paths of each layer group.
    """

    mode: str
    block: str
    methods: list[str]
    steps: list[str]
    groups: dict[str, list[str]]
    targets: list[int]
    table: pd.DataFrame
    per_image: pd.DataFrame
    maps: dict[str, dict[str, np.ndarray]]
    signed: dict[str, bool]
    threshold: float = THRESHOLD
    seed: int = SEED
    failures: dict[tuple[str, str], str] = field(default_factory=dict)

    def final(self, method: str) -> pd.Series:
        """The method's row of the last step (every group randomised, in cascading mode)."""
        rows = self.table[(self.table.method == method) & (self.table.step == self.steps[-1])]
        return rows.iloc[0]

    def insensitive_steps(self, method: str) -> list[str]:
        """The randomisation steps after which the method's mean rank correlation stays >= ``threshold``."""
        rows = self.table[(self.table.method == method) & (self.table.step != ORIGINAL)]
        return [str(row.step) for row in rows.itertuples() if row.spearman >= self.threshold]

    def flags(self) -> dict[str, str]:
        """For each flagged method, in words, why: its maps do not depend on the model's weights (cascading:
        after full randomisation; independent: after randomising one group, or any)."""
        found = {}
        for method in self.methods:
            label = method_info(method).label
            if self.mode == "cascading":
                last = self.final(method)
                if last.spearman >= self.threshold:
                    found[method] = (
                        f"{label} does not depend on the model's weights{self._on()}: with every layer randomised its "
                        f"maps still have a mean rank correlation of {last.spearman:.2f} (SSIM {last.ssim:.2f}) with "
                        f"the original (threshold {self.threshold:g}).")
                continue
            steps = self.insensitive_steps(method)
            if steps and len(steps) == len(self.steps) - 1:
                found[method] = (f"{label} does not depend on the model's weights{self._on()}: randomising any one "
                                 f"group ({', '.join(steps)}) leaves its maps with a rank correlation of at least "
                                 f"{self.threshold:g} with the original.")
            elif steps:
                found[method] = (f"{label} barely depends on the weights of {', '.join(steps)}{self._on()}: "
                                 f"randomising {'it' if len(steps) == 1 else 'any one of them'} alone leaves its maps "
                                 f"with a rank correlation of at least {self.threshold:g} with the original.")
        for method in found:
            if method_info(method).family == "classic":  # expected, and what the check is calibrated against
                found[method] += " As it should: it is computed from the image alone, a baseline for the others."
        return found

    def _on(self) -> str:
        """Which images a flag speaks for: one image is an anecdote, several are a finding."""
        images = int(self.per_image.image.nunique()) if len(self.per_image) else 0
        return " on this image" if images == 1 else f" on these {images} images"


def randomization_check(model: ModelSpec, images: Any, methods: Sequence[str], block: str = "B4",
                        mode: str = "cascading", target: int | Sequence[int] | None = None,
                        method_settings: Mapping[str, Mapping[str, Any]] | None = None, seed: int = SEED,
                        keep_statistics: bool = False,
                        threshold: float = THRESHOLD, keep: int = 1, batch_size: int = IMAGES_PER_PASS,
                        progress: Progress | None = None, *,
                        training: str | DatasetSpec | None = None) -> RandomizationResult:
    """Adebayo et al. 2018's model-randomisation test of ``methods`` at ``block`` on ``images``.

    Maps of the original model, then of each randomised copy (``randomized_models``: ``mode``
    "cascading" or "independent"), for the same target classes (``target``; None: each image's class
    as the *original* model predicts it; in a list, None for one image's predicted class), compared with the
    original map by rank correlation and SSIM (module docstring). Every pass is a job of the compute thread
    (``explainers.engine.trace``); progress goes to ``progress`` (default: the listener of
    ``progress.reporting``), one step per randomisation step and batch of ``batch_size`` images, with the
    methods' own progress inside each step.

    ``training``: the training images of methods fitted on them, as ``explain_trace`` takes it.
    ``keep_statistics``: batch norms keep their running statistics, as Adebayo's trainable-variables-only
    randomisation does (default: reset with the rest; module docstring).

    A method that gives no honest map on a randomised copy (non-finite values, LRP's conservation)
    is reported in ``failures`` and its row of that step left empty, never filled in.
    """
    if mode not in SANITY_MODES:
        raise UserInputError(f"mode must be one of {', '.join(SANITY_MODES)}, not {mode!r}")
    if block not in model.blocks:
        raise UserInputError(f"block {block!r} is not in {model.name}; it has {', '.join(model.blocks)}")
    chosen = _suitable(model, methods, block)
    _check_settings(chosen, method_settings or {})  # before the first pass, not after it
    count, image = image_source(images)  # a DatasetSpec (e.g. ``subset(test, 50)``) as the faithfulness metrics take
    inputs = as_batch(model, [image(i) for i in range(count)])
    groups = layer_groups(model)
    steps = [ORIGINAL, *groups]
    plan = _Plan(inputs, chosen, block, dict(method_settings or {}), batch_size, len(steps),
                 progress or current_listener(), training)
    original, failures, targets = _maps(plan, model, ORIGINAL, 0, _targets(model, inputs, target))
    missing = [m for m in chosen if m not in original]
    if missing:
        raise MethodUnavailableError(f"{method_info(missing[0]).label} gives no map on {model.name} itself: "
                                     f"{failures[(missing[0], ORIGINAL)]}")
    rows: list[dict] = []
    per_image: list[dict] = []
    kept = {m: {ORIGINAL: original[m][:keep]} for m in chosen}
    randomised: list[str] = []
    _compare(rows, per_image, chosen, original, original, ORIGINAL, [], failures)
    for index, (group, spec) in enumerate(randomized_models(model, mode, seed, groups, keep_statistics),
                                       start=1):
        randomised = [*randomised, group] if mode == "cascading" else [group]
        batching.same_speed(spec, model)  # same architecture, same best batch size: not measured again
        found, failed, _ = _maps(plan, spec, group, index, targets)
        failures.update(failed)
        for method, values in found.items():
            kept[method][group] = values[:keep]
        _compare(rows, per_image, chosen, original, found, group, randomised, failures)
    return RandomizationResult(
        mode=mode, block=block, methods=list(chosen), steps=steps, groups=groups, targets=targets,
        table=pd.DataFrame(rows), per_image=pd.DataFrame(per_image), maps=kept,
        signed={m: method_info(m).signed for m in chosen}, threshold=threshold, seed=seed, failures=failures)


@dataclass
class _Plan:
    """What every step of one check computes: the inputs in batches, the methods and their settings, and
    where the progress of each (step, batch) goes."""

    inputs: torch.Tensor
    methods: list[str]
    block: str
    settings: dict[str, Mapping[str, Any]]
    batch_size: int
    steps: int
    listener: Progress | None
    training: str | DatasetSpec | None = None

    @property
    def parts(self) -> list[slice]:
        size, total = self.batch_size, len(self.inputs)
        return [slice(i, min(i + size, total)) for i in range(0, total, size)]

    def unit(self, step_index: int, part_index: int) -> tuple[Progress | None, int, int]:
        """The listener for one (step, batch), its fractions scaled into that unit's share of the bar, and the
        units done after it and in all."""
        total = self.steps * len(self.parts)
        done = step_index * len(self.parts) + part_index
        return scaled(self.listener, done / total, (done + 1) / total), done + 1, total


def _targets(model: ModelSpec, inputs: torch.Tensor, target: Any
             ) -> int | np.integer | torch.Tensor | list[int] | None:
    """``target`` as ``trace`` takes it: None (each image's predicted class), one class, or one per image,
    where a None in a sequence is that image's class as the original model predicts it (one forward)."""
    if target is None or isinstance(target, (int, np.integer)) or isinstance(target, torch.Tensor):
        return target
    given = list(target)
    if len(given) != len(inputs):
        raise UserInputError(f"{len(given)} target classes were given for {len(inputs)} images: give one class for "
                             "all of them, one per image (None for its predicted class), or None.")
    if any(t is None for t in given):
        predicted = trace(model, inputs, None, blocks=[next(iter(model.blocks))]).targets.tolist()
        given = [p if t is None else t for t, p in zip(given, predicted)]
    return [int(t) for t in given]


def _suitable(model: ModelSpec, methods: Sequence[str], block: str) -> list[str]:
    """The methods, refused (``MethodUnavailableError``) when one does not apply here or cannot be checked
    honestly: the prototype attribution would need prototypes fitted on every randomised copy."""
    if not methods:
        raise UserInputError("choose at least one method to check")
    for name in methods:
        info = method_info(name)
        if info.family == "prototype":
            raise UnsuitableMethodError(
                f"{info.label} is not checked here: its prototypes belong to the trained network, and a fair check "
                "would fit new ones (30-60 s each) on every randomised copy.")
        reason = info.available(model, block)
        if reason:
            raise MethodUnavailableError(reason)
    return list(dict.fromkeys(methods))


def _check_settings(chosen: list[str], given: Mapping[str, Mapping[str, Any]]) -> None:
    stray = [name for name in given if name not in chosen]
    if stray:
        raise UnknownSettingError(f"settings were given for {', '.join(map(repr, stray))}, not among the methods "
                                  f"checked ({', '.join(chosen)})")
    for name in chosen:
        method_info(name).resolve(given.get(name))  # SettingValueError or UnknownSettingError, saying which


def _maps(plan: _Plan, spec: ModelSpec, step: str, step_index: int, targets: Any
          ) -> tuple[dict[str, np.ndarray], dict[tuple[str, str], str], list[int]]:
    """Every method's heatmaps (N, H, W) on ``spec`` (the model at ``step``), batch by batch from one shared
    trace per batch; the methods that failed, (method, step) -> reason; the target of each image."""
    infos = [method_info(m) for m in plan.methods]
    gradients = any(i.needs_gradients for i in infos)
    blocks = list(spec.blocks) if any(i.needs_all_blocks for i in infos) else [plan.block]
    found: dict[str, list[np.ndarray]] = {m: [] for m in plan.methods}
    failures: dict[tuple[str, str], str] = {}
    chosen_targets: list[int] = []
    for number, part in enumerate(plan.parts):
        listener, done, total = plan.unit(step_index, number)
        wanted = targets[part] if isinstance(targets, (list, torch.Tensor)) else targets
        with reporting(listener):  # a method's own progress (Score-CAM's masked inputs) fills this unit
            shared = trace(spec, plan.inputs[part], wanted, gradients=gradients, blocks=blocks,
                           attention=sorted({need for i in infos for need in i.attention}))  # a ViT's maps
            chosen_targets += [int(t) for t in shared.targets]
            for method in plan.methods:
                if (method, step) not in failures:
                    _explain(plan, spec, shared, method, step, found, failures)
        report(done, total, f"{'original model' if step == ORIGINAL else f'randomised {step}'}: "
                            f"images {part.start + 1}-{part.stop} of {len(plan.inputs)}", plan.listener)
    maps = {m: np.stack(v) for m, v in found.items() if (m, step) not in failures}
    return maps, failures, chosen_targets


def _explain(plan: _Plan, spec: ModelSpec, shared: Any, method: str, step: str, found: dict[str, list[np.ndarray]],
             failures: dict[tuple[str, str], str]) -> None:
    given = {method: plan.settings[method]} if method in plan.settings else None
    try:
        result = explain_trace(spec, shared, [method], plan.block, given, training=plan.training)
    except MethodUnavailableError as error:  # its own check failed here (non-finite values, conservation)
        failures[(method, step)] = str(error)
        return
    found[method] += [r[method].heatmap for r in result]


def _compare(rows: list[dict], per_image: list[dict], methods: list[str], original: dict[str, np.ndarray],
             found: dict[str, np.ndarray], step: str, randomised: list[str],
             failures: dict[tuple[str, str], str]) -> None:
    for method in methods:
        if method not in found:
            rows.append({"method": method, "step": step, "spearman": np.nan, "ssim": np.nan,
                         "spearman_signed": np.nan, "constant": 0, "images": 0,
                         "randomised": ", ".join(randomised), "note": failures.get((method, step), "")})
            continue
        scores = [_scores(a, b) for a, b in zip(original[method], found[method])]
        for image, score in enumerate(scores):
            per_image.append({"method": method, "step": step, "image": image, **score})
        constant = int(sum(s["constant"] for s in scores))
        rows.append({"method": method, "step": step,
                     "spearman": _mean([s["spearman"] for s in scores]), "ssim": _mean([s["ssim"] for s in scores]),
                     "spearman_signed": _mean([s["spearman_signed"] for s in scores]), "constant": constant,
                     "images": len(scores), "randomised": ", ".join(randomised),
                     "note": f"{constant} of {len(scores)} maps constant (no ranks)" if constant else ""})


def _mean(values: list[float]) -> float:
    defined = [v for v in values if not np.isnan(v)]
    return float(np.mean(defined)) if defined else float("nan")
