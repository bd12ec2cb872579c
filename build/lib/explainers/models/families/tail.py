"""The network after a block (``tail_module``): the forward traced with torch.fx and cut at the block's output
node, for Ablation-CAM, which runs only that part per ablated channel."""
from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import fx, nn

from ...runtime import compute
from .graph import ModuleTracer

__all__ = ["Cut", "TailRun", "tail_module"]

TailRun = Callable[[torch.Tensor], torch.Tensor]  # block outputs (M, D, h, w) -> logits (M, classes)


@dataclass
class Cut:
    """The network after a block, traced with torch.fx and cut at the block's output node.

    ``tail`` maps the block's output (and ``crossing``'s values, in order) to the logits. ``crossing`` are
    the values the tail needs that the block does not make: none when every path from the input to the
    logits runs through the block (a ResNet's ``layer3``); a block inside a residual unit (timm's Xception
    features, ``blocks.11.stack.act3``) leaves the unit's skip input crossing the cut. Zeroing a channel of
    the block changes none of them, so ``prefix`` (the input -> the crossing values, None when there are
    none) runs once per image and its values serve every ablated row of it."""

    tail: fx.GraphModule
    prefix: fx.GraphModule | None


_TAILS: "weakref.WeakKeyDictionary[nn.Module, dict[str, Cut | None]]" = weakref.WeakKeyDictionary()
_TAILS_LOCK = threading.Lock()


def tail_module(net: nn.Module, path: str) -> Cut | None:
    """The part of ``net`` after the module at ``path`` (``Cut``); None when the forward cannot be traced
    or calls the module more than once. Made once per network and block (a compute job), then kept.

    Modules that neither contain the block nor are the block are called whole (the tail of a
    ResNet after ``layer3`` calls ``layer4``, ``avgpool`` and ``fc``), so hooks on them see the tail's
    passes; only the forward code of the block's ancestors is traced.
    """
    with _TAILS_LOCK:
        known = _TAILS.setdefault(net, {})
        if path in known:
            return known[path]
    made = compute.run(_tail_job, net, path)
    with _TAILS_LOCK:
        _TAILS[net][path] = made
    return made


def _tail_job(net: nn.Module, path: str) -> Cut | None:
    ancestors = {""} | {path.rsplit(".", n)[0] for n in range(1, path.count(".") + 1)}

    def leaf(_module: nn.Module, qualname: str) -> bool | None:
        return None if qualname in ancestors else True

    try:
        tracer = ModuleTracer(leaf)
        graph = tracer.trace(net)
    except Exception:  # noqa: BLE001 - a forward torch.fx cannot trace has no tail; callers fall back
        return None
    calls = tracer.outputs.get(path, [])
    if len(calls) != 1:
        return None
    block = calls[0][1]
    output = next(node for node in graph.nodes if node.op == "output")
    after = _descendants(block)
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    on_input = _descendants(*inputs) | set(inputs)
    needed = _ancestors(output, stop=block) | {output}
    # Values the tail reads that the block does not make, yet the input does: computed once per image.
    # (``needed`` holds the output node, and ``after`` every node the block feeds, the output included.)
    crossing = [node for node in graph.nodes
                if node in needed and node not in after and node in on_input and node is not block
                and any(user in after and user in needed for user in node.users)]
    tail = fx.Graph()
    env = {block: tail.placeholder("block_output")}
    env.update({node: tail.placeholder(f"crossing_{i}") for i, node in enumerate(crossing)})
    for node in graph.nodes:
        if node in needed and node not in env and node.op != "placeholder":
            if node not in after and node in on_input:
                continue  # made before the cut: only the crossing ones are read, from their placeholders
            env[node] = tail.node_copy(node, lambda n: env[n])
    return Cut(tail=fx.GraphModule(net, tail, class_name="Tail").eval(),
               prefix=_prefix(net, graph, crossing) if crossing else None)


def _prefix(net: nn.Module, graph: fx.Graph, crossing: list[fx.Node]) -> fx.GraphModule:
    """The input -> the ``crossing`` values, as the network computes them (the part of the graph they need)."""
    needed: set[fx.Node] = set()
    for node in crossing:
        needed |= _ancestors(node) | {node}
    prefix = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in graph.nodes:
        if node in needed:
            env[node] = prefix.node_copy(node, lambda n: env[n])
    prefix.output(tuple(env[node] for node in crossing))
    return fx.GraphModule(net, prefix, class_name="Prefix").eval()


def _ancestors(node: fx.Node, stop: fx.Node | None = None) -> set[fx.Node]:
    """Every node ``node`` is computed from (itself excluded), not looking past ``stop``."""
    found: set[fx.Node] = set()
    stack = list(node.all_input_nodes)
    while stack:
        current = stack.pop()
        if current in found or current is stop:
            continue
        found.add(current)
        stack.extend(current.all_input_nodes)
    return found


def _descendants(*nodes: fx.Node) -> set[fx.Node]:
    """Every node computed from any of ``nodes`` (themselves excluded)."""
    found: set[fx.Node] = set()
    stack = [user for node in nodes for user in node.users]
    while stack:
        current = stack.pop()
        if current in found:
            continue
        found.add(current)
        stack.extend(current.users)
    return found
