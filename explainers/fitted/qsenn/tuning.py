"""Full Q-SENN (Figure 2): a copy of the backbone fine-tuned, the layer fixed, with L_div (eq. 2), and its features."""
from __future__ import annotations

import math
from dataclasses import replace
from threading import Lock
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...data.datasets import DatasetSpec
from ...engine.trace import trace
from ...models import ModelSpec
from ...models.inference import hookless_copy
from ...runtime import compute
from ...runtime.hooks import tapped
from ...runtime.progress import Progress, report_fraction
from ..prototypes.depths import image_batches
from .diversity import feature_diversity_loss

# Full mode fine-tunes every weight of the backbone N times: on a CPU that is minutes for the digits
# network (0.7 M parameters) and hours for an ImageNet ResNet. Above this size it needs a GPU.
FULL_MODE_CPU_PARAMETERS = 3_000_000


def full_mode_refusal(model: ModelSpec) -> str | None:
    """Why full Q-SENN cannot run for ``model`` on this machine, or None when it can."""
    parameters = sum(p.numel() for p in model.net.parameters())
    if model.device.type != "cpu" or parameters <= FULL_MODE_CPU_PARAMETERS:
        return None
    return (f"Full Q-SENN fine-tunes every weight of the backbone, several times: {model.name} has "
            f"{parameters / 1e6:.1f} M parameters, which would take hours on the CPU it runs on (no GPU here). "
            f"Use the post-hoc mode (frozen backbone, minutes), or run on a machine with a GPU.")


def tuned_spec(model: ModelSpec, net: nn.Module) -> ModelSpec:
    """A ModelSpec for a fine-tuned copy of ``model``'s network: same blocks (by module path), transform
    and classes, so ``trace`` runs it like any model. Its own final layer is stale (Q-SENN replaces it)."""
    blocks = {name: net.get_submodule(path) for name, path in model.block_paths.items()}
    classifier = net.get_submodule(next(name for name, module in model.net.named_modules()
                                        if module is model.classifier))
    assert isinstance(classifier, nn.Linear)  # the copy of the model's own linear classifier
    return replace(model, name=f"{model.name} (Q-SENN fine-tuned)", net=net, blocks=blocks, classifier=classifier,
                   _fingerprint=None, _inference_net=None, _lazy=Lock())


def block_features(model: ModelSpec, dataset: DatasetSpec, block: str, batch_size: int = 128,
                   progress: Progress | None = None, what: str = "features") -> torch.Tensor:
    """f for every image of ``dataset``: the block's feature maps average-pooled, (N, D), in batches
    through the compute thread, without gradients; on the CPU, where glm-saga fits the layer. Full mode's
    fine-tuned copies need this pass (a copy's features change every round); the frozen model's are read
    from the feature cache (``cached_block_features``)."""
    out = []
    for start, inputs in image_batches(model, dataset, batch_size):
        with torch.inference_mode():
            out.append(trace(model, inputs, blocks=[block]).activations[block].mean(dim=(2, 3)).cpu())
        done = start + len(inputs)
        report_fraction(done / len(dataset), f"{what}: {done:,} / {len(dataset):,} images", progress)
    return torch.cat(out).float()


def _training_step(net: nn.Module, block: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                   layer: dict[str, torch.Tensor], optimiser: torch.optim.Optimizer, beta: float) -> float:
    """One step of full Q-SENN's fine-tuning (a job of the compute thread): the block's maps of the copy,
    the fixed ternary layer on their standardised selected features, CE + beta * L_div, one optimiser step."""
    captured: dict[str, torch.Tensor] = {}

    def record(output: torch.Tensor) -> torch.Tensor:
        captured["maps"] = output
        return output.clone()  # downstream in-place operations must not change what was recorded

    net.train()
    with torch.enable_grad(), tapped({block: record}, private=True):
        net(inputs)
        maps = captured["maps"][:, layer["selected"]]
        standard = (maps.mean(dim=(2, 3)) - layer["mean"]) / layer["std"]
        logits = standard @ layer["weights"].T + layer["bias"]
        loss = F.cross_entropy(logits, labels) + beta * feature_diversity_loss(maps, layer["weights"], logits)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    net.eval()
    return float(loss.detach())

def fine_tune(model: ModelSpec, network: ModelSpec, dataset: DatasetSpec, labels: torch.Tensor, block: str,
              layer: Mapping[str, np.ndarray], lr: float, epochs: int, batch_size: int, beta: float, seed: int,
              round_: int, progress: Progress | None = None) -> ModelSpec:
    """Train every weight of a copy of the backbone for ``epochs`` with ``layer`` fixed (its ``selected`` features
    of ``block``, their ``mean`` and ``std``, the ternary ``weights`` and ``bias``), on L = CE + beta * L_div
    (eq. 2), at ``lr``, the images shuffled by ``seed``. The shared model is never touched: the first round
    (``network is model``) copies it, later rounds go on training that private copy, which is returned."""
    if network is model:
        net = hookless_copy(model.net)
        network = tuned_spec(model, net)
    net = network.net
    device = model.device  # the copy is where the model is: a GPU when there is one
    net.requires_grad_(True)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    fixed = {name: torch.as_tensor(values, device=device) for name, values in layer.items()}
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(dataset) / batch_size)
    done = 0
    for epoch in range(epochs):
        order = torch.randperm(len(dataset), generator=generator)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            inputs = torch.stack([model.transform(dataset[int(i)][0]) for i in index])
            loss = compute.run_batch(_training_step, net, network.blocks[block], inputs.to(device),
                                     labels[index].to(device), fixed, optimiser, beta)
            done += 1
            report_fraction(done / steps, f"round {round_ + 1}, fine-tuning: epoch {epoch + 1} of {epochs}, "
                                          f"loss {loss:.3f}", progress)
    net.eval().requires_grad_(False)
    return network
