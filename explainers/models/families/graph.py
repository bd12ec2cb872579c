"""A network's forward traced with torch.fx (``trace_graph``), and the generic rule for its blocks read from
that graph (``graph_blocks``), or from its top-level children when the forward cannot be traced
(``children_blocks``).

torch.fx tracing patches ``nn.Module.__call__`` for the whole process while it runs, so every trace
runs as a job of the compute thread (``explainers.runtime.compute``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable

from torch import fx, nn

from ...runtime import compute
from .probe import Probe

__all__ = ["NOT_A_BLOCK", "Graph", "ModuleTracer", "children_blocks", "deepest_levels", "graph_blocks",
           "not_a_block", "trace_graph"]


NOT_A_BLOCK = (nn.Linear, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.ZeroPad2d, nn.ConstantPad2d,
               nn.ReflectionPad2d, nn.ReplicationPad2d, nn.LayerNorm)


def not_a_block(module: nn.Module) -> bool:
    """Padding (its output is larger than the feature map), linear layers and norms on channels-last
    tensors, and modules that only pass their input on."""
    return isinstance(module, NOT_A_BLOCK) or "pad" in type(module).__name__.lower()


def _timm_loaded() -> bool:
    return "timm" in sys.modules


def _tracer_leaves_and_functions() -> tuple[tuple[type, ...], tuple[Callable, ...]]:
    """timm's own list of modules and functions torch.fx must not trace into (dynamic 'same' padding, ...)."""
    if not _timm_loaded():
        return (), ()
    from timm.layers import get_notrace_functions, get_notrace_modules

    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


class ModuleTracer(fx.Tracer):
    """A torch.fx tracer that records which graph node each module call returned, and the first node
    the call created (so a module's span in the graph is known). ``leaf`` decides which modules are
    called whole instead of traced through."""

    def __init__(self, leaf: Callable[[nn.Module, str], bool | None] | None = None) -> None:
        leaves, functions = _tracer_leaves_and_functions()
        super().__init__(autowrap_functions=functions)
        self.leaves = leaves
        self.leaf = leaf
        self.outputs: dict[str, list[tuple[int, fx.Node]]] = {}

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if self.leaf is not None:
            decided = self.leaf(m, qualname)
            if decided is not None:
                return decided
        return (bool(self.leaves) and isinstance(m, self.leaves)) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward: Callable, args: tuple, kwargs: dict) -> Any:
        path = self.path_of_module(m)
        start = len(self.graph.nodes)
        output = super().call_module(m, forward, args, kwargs)
        if isinstance(output, fx.Proxy):
            self.outputs.setdefault(path, []).append((start, output.node))
        return output


@dataclass
class Graph:
    """A network's traced graph: its nodes in order, which module call returned which node, and the
    nodes every path from the input to the logits runs through (the *cuts*)."""

    nodes: list[fx.Node]
    index: dict[fx.Node, int]
    outputs: dict[str, list[tuple[int, fx.Node]]]
    cuts: set[fx.Node]


def trace_graph(net: nn.Module, leaf: Callable[[nn.Module, str], bool | None] | None = None) -> Graph:
    """Trace ``net`` (as a compute job: tracing patches every module's ``__call__``); raises what
    torch.fx raises for a forward it cannot trace."""
    return compute.run(_trace_job, net, leaf)


def _trace_job(net: nn.Module, leaf: Callable[[nn.Module, str], bool | None] | None) -> Graph:
    tracer = ModuleTracer(leaf)
    graph = tracer.trace(net)
    nodes = list(graph.nodes)
    index = {node: i for i, node in enumerate(nodes)}
    return Graph(nodes=nodes, index=index, outputs=tracer.outputs, cuts=_cuts(nodes, index))


def _cuts(nodes: list[fx.Node], index: dict[fx.Node, int]) -> set[fx.Node]:
    """Nodes through which every path from the inputs to the output runs.

    In a topological order, a node v on some input-output path is such a cut exactly when no
    edge between two such nodes jumps over it (an edge a -> b with a before v before b gives a
    path that avoids v: input -> a uses only nodes before v, b -> output only nodes after it).
    """
    reached = set()
    for node in nodes:
        if node.op == "placeholder" or any(isinstance(a, fx.Node) and a in reached for a in node.all_input_nodes):
            reached.add(node)
    useful = set()
    for node in reversed(nodes):
        if node.op == "output" or any(user in useful for user in node.users):
            useful.add(node)
    live = [node for node in nodes if node in reached and node in useful]
    cuts, farthest = set(), -1
    for node in live:
        if farthest <= index[node]:
            cuts.add(node)
        ends = [index[user] for user in node.users if user in reached and user in useful]
        farthest = max([farthest, *ends])
    return cuts


def graph_blocks(net: nn.Module, probe_result: Probe) -> list[str]:
    """The generic rule: module outputs that every path to the logits runs through (so never a layer
    inside a residual block, nor a padding inside a convolution), run once, of a feature map; grouped
    by resolution from the input down, keeping the last module of each; the four deepest.

    A node several nested modules return (``layer2`` and ``layer2.1``) is named by the outermost one
    that spans a single resolution level: the stage, not the trunk that holds every stage.
    """
    graph = trace_graph(net)
    modules = dict(net.named_modules())
    candidates: list[tuple[int, str]] = []  # (node index, path)
    for path, calls in graph.outputs.items():
        if len(calls) != 1 or probe_result.calls.get(path) != 1 or path not in modules or not path:
            continue
        start, node = calls[0]
        if node in graph.cuts and probe_result.size(path) is not None and not not_a_block(modules[path]):
            candidates.append((graph.index[node], path))
    inside = [c for c in candidates if not _inside_a_downsampling_block(c, candidates, probe_result)]
    return deepest_levels([(index, path, _span_start(graph, path)) for index, path in sorted(inside)],
                           probe_result)


def _inside_a_downsampling_block(candidate: tuple[int, str], candidates: list[tuple[int, str]],
                                 probe_result: Probe) -> bool:
    """Whether ``candidate`` lies inside a module that takes its resolution down by one level: the
    expansion convolution that opens the next stage's first inverted-residual block runs at the old
    resolution, but it is no stage output. A trunk holding several stages (its insides span three
    or more resolutions) is no such block."""
    index, path = candidate
    size = probe_result.size(path)
    parts = path.split(".")
    for depth in range(1, len(parts)):
        ancestor = ".".join(parts[:depth])
        outer = probe_result.size(ancestor)
        if outer is None or outer == size or probe_result.calls.get(ancestor) != 1:
            continue
        within = {probe_result.size(p) for i, p in candidates if p.startswith(ancestor + ".") and p != ancestor}
        if within <= {size, outer}:
            return True
    return False


def _span_start(graph: Graph, path: str) -> int:
    return graph.outputs[path][0][0]


def deepest_levels(candidates: list[tuple[int, str, int]], probe_result: Probe) -> list[str]:
    """Group candidates (node index, path, first node of the call), in the order they run, by resolution
    level and keep the last one per level; the four deepest levels.

    Levels only go down: an output larger than the current level (a padding) is no stage, nor is a
    1x1 output (a pooled vector). Among modules returning the same node, the outermost one that does
    not reach back over the previous level's output names it (``layer2``, not ``layer2.1``; but
    ``features.8``, not the ``features`` trunk that holds every stage).
    """
    levels: list[list[tuple[int, str, int]]] = []
    sizes: list[tuple[int, int]] = []
    current = probe_result.input_size
    for candidate in candidates:
        size = probe_result.size(candidate[1])
        if size is None or size == (1, 1) or size[0] > current[0] or size[1] > current[1]:
            continue
        if sizes and size == sizes[-1]:
            levels[-1].append(candidate)
        else:
            levels.append([candidate])
            sizes.append(size)
            current = size
    chosen, previous_end = [], -1
    for members in levels:
        last = max(index for index, _, _ in members)
        same = [m for m in members if m[0] == last]
        fitting = [m for m in same if m[2] > previous_end] or same
        chosen.append(min(fitting, key=lambda m: (m[2], m[1].count(".")))[1])
        previous_end = last
    return chosen[-4:]


def children_blocks(net: nn.Module, probe_result: Probe) -> list[str]:
    """For a forward torch.fx cannot trace: the top-level children (a top-level ``nn.Sequential``'s own
    children instead), in the order they finished, run once, each a feature map; the last one per
    resolution level, the four deepest."""
    paths = []
    for name, child in net.named_children():
        if isinstance(child, nn.Sequential):
            paths += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            paths.append(name)
    modules = dict(net.named_modules())
    ran = [p for p in probe_result.order if p in set(paths)]
    candidates = [(i, p, i) for i, p in enumerate(ran) if probe_result.calls.get(p) == 1
                  and probe_result.size(p) is not None and not not_a_block(modules[p])]
    return deepest_levels(candidates, probe_result)
