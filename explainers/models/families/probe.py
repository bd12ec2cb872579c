"""One forward pass of a network with a counting tap on every module (``Probe``), and the checks a
module must pass to be one of the blocks ``BLOCK_NAMES`` (``check_blocks``).

A module that runs more than once per forward pass (a shared activation called after the stem and
again after the head) is never a block: what a hook on it records would depend on which call it
keeps. The calls are counted with taps during one probe forward (``explainers.runtime.hooks``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...runtime import compute
from ...runtime.devices import device_of
from ...runtime.errors import BlockError
from ...runtime.hooks import tapped

__all__ = ["BLOCK_NAMES", "Probe", "check_blocks", "probe"]

BLOCK_NAMES = ("B1", "B2", "B3", "B4")


@dataclass
class Probe:
    """What one forward pass of a network showed about its modules: how often each ran, the shape of
    each one's (first) output, and the order in which the modules first finished."""

    calls: dict[str, int]
    shapes: dict[str, tuple[int, ...] | None]  # None: the module returned no tensor
    order: list[str]
    input_size: tuple[int, int]

    def size(self, path: str) -> tuple[int, int] | None:
        """(height, width) of a module's output when it is a feature map (N, C, H, W), else None."""
        shape = self.shapes.get(path)
        return (shape[2], shape[3]) if shape is not None and len(shape) == 4 else None


def probe(net: nn.Module, channels: int, input_size: tuple[int, int]) -> Probe:
    """Run ``net`` once on zeros of the model's input shape with a tap on every module (a network
    still private to the caller: the taps' dispatchers are removed again). One compute job."""
    return compute.run(_probe_job, net, channels, input_size)


@torch.inference_mode()
def _probe_job(net: nn.Module, channels: int, input_size: tuple[int, int]) -> Probe:
    names = {module: name for name, module in net.named_modules() if module is not net}
    calls: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...] | None] = {}
    order: list[str] = []

    def counter(name: str):
        def count(output: Any) -> None:
            calls[name] = calls.get(name, 0) + 1
            if name not in shapes:
                shapes[name] = tuple(output.shape) if isinstance(output, torch.Tensor) else None
                order.append(name)

        return count

    # A module registered under two names is one module: it keeps its first name.
    with tapped({module: counter(name) for module, name in names.items()}, private=True):
        net(torch.zeros(1, channels, *input_size, device=device_of(net)))
    return Probe(calls=calls, shapes=shapes, order=order, input_size=(int(input_size[0]), int(input_size[1])))


def check_blocks(net: nn.Module, paths: list[str], probe_result: Probe) -> None:
    """Refuse blocks that are not one feature map per forward pass, at decreasing resolutions."""
    for block, path in zip(BLOCK_NAMES, paths):
        calls = probe_result.calls.get(path, 0)
        kind = type(net.get_submodule(path)).__name__
        if calls > 1:
            raise BlockError(
                f"{path} ({kind}) cannot be block {block}: the network calls it {calls} times per forward pass "
                "(one module reused at several places, like an activation applied after the stem and again after "
                "the head), so what a hook on it records depends on which call it keeps. Choose a module that runs "
                "once, e.g. the stage or layer that contains that call.")
        if calls == 0:
            raise BlockError(f"{path} ({kind}) cannot be block {block}: it did not run in a forward pass.")
        if probe_result.size(path) is None:
            shape = probe_result.shapes.get(path)
            got = f"an output of shape {shape}" if shape else "no tensor"
            raise BlockError(f"{path} ({kind}) cannot be block {block}: it returns {got}, not a feature map "
                             "(N, C, H, W).")
    sizes = [probe_result.size(path) for path in paths]
    for (shallow, a), (deep, b) in zip(zip(paths, sizes), zip(paths[1:], sizes[1:])):
        assert a is not None and b is not None  # each block was checked above to give a feature map
        if not (b[0] <= a[0] and b[1] <= a[1] and b[0] * b[1] < a[0] * a[1]):
            raise BlockError(f"blocks must go from shallow to deep at decreasing resolutions: {shallow} gives "
                             f"{a[0]}x{a[1]} and {deep} after it {b[0]}x{b[1]}.")
