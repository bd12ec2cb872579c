"""What Protoscope knows about each CNN family, in one place: one registered adapter per family.

An adapter (``Family``) answers, for a network of its family:

- ``matches(net)``: is this network one of mine (by type: torchvision's classes, timm's, the
  built-in ``DigitsResNet``; a few by layout);
- ``block_paths(net, probe)``: B1..B4, the outputs of its four deepest stages (module paths,
  shallow to deep). Where a 1x1 head convolution runs at the last stage's resolution before
  the pooling (EfficientNet, MobileNet), it closes the last stage: B4 is its output, the
  feature map the classifier pools;
- ``tail(model, block)``: the network after a block, as a function of the block's output
  giving the logits (Ablation-CAM runs only that). One mechanism serves every family: the
  network's forward traced with torch.fx, cut at the block's output node; values that cross
  the cut without passing through the block (the skip input of a residual unit the block is
  inside) are computed once per image by the part of the graph before the cut (``Cut``);
- ``canonizers(net)`` and ``lrp_gap(net)``: zennit's canonizers for LRP, and None when
  zennit's rules and those canonizers cover every layer and operation of the network, or
  else why not (the LRP methods then say so instead of drawing a map);
- ``with_classes(net, n)``: the same architecture with an ``n``-class classifier, for a
  checkpoint trained on another class count.

Adapters register themselves where they are defined (``@register_family``); the first that
matches wins, in registration order, and ``generic`` (last) matches anything: it finds the
stage outputs from the traced graph (``graph_blocks``), or from the top-level children when
the forward cannot be traced. A module that runs more than once per forward pass (a shared
activation called after the stem and again after the head) is never a block: what a hook on
it records would depend on which call it keeps. ``check_blocks`` refuses such a module with
a message that says so; the calls are counted with taps during one probe forward
(``explainers.runtime.hooks``).

torch.fx tracing patches ``nn.Module.__call__`` for the whole process while it runs, so every
trace here runs as a job of the compute thread (``explainers.runtime.compute``).
"""
from __future__ import annotations

import copy
import operator
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.models import VGG, ConvNeXt, DenseNet, EfficientNet, MobileNetV2, MobileNetV3, RegNet, ResNet
from torchvision.models.densenet import _DenseLayer
from torchvision.models.resnet import BasicBlock, Bottleneck
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer, VGGCanonizer
from zennit.types import Activation, AvgPool, BatchNorm, Linear, MaxPool

from ...runtime import compute
from ...runtime.devices import device_of
from ...runtime.errors import BlockError
from ...runtime.hooks import tapped, without_hooks
from ...runtime.registry import Registry

if TYPE_CHECKING:
    from ..loading import ModelSpec

BLOCK_NAMES = ("B1", "B2", "B3", "B4")

TailRun = Callable[[torch.Tensor], torch.Tensor]  # block outputs (M, D, h, w) -> logits (M, classes)

__all__ = ["BLOCK_NAMES", "BlockError", "Cut", "FAMILIES", "Family", "Probe", "TailRun", "check_blocks", "families",
           "family_for", "family_named", "family_of", "graph_blocks", "lrp_gap_in_graph", "probe", "register_family",
           "tail_module"]


# --- the probe: one forward with a counting tap on every module ----------------------------------

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
    return Probe(calls=calls, shapes=shapes, order=order, input_size=tuple(input_size))


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
        if not (b[0] <= a[0] and b[1] <= a[1] and b[0] * b[1] < a[0] * a[1]):
            raise BlockError(f"blocks must go from shallow to deep at decreasing resolutions: {shallow} gives "
                             f"{a[0]}x{a[1]} and {deep} after it {b[0]}x{b[1]}.")


# --- the traced graph ---------------------------------------------------------------------------

NOT_A_BLOCK = (nn.Linear, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.ZeroPad2d, nn.ConstantPad2d,
               nn.ReflectionPad2d, nn.ReplicationPad2d, nn.LayerNorm)


def _not_a_block(module: nn.Module) -> bool:
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


class _Tracer(fx.Tracer):
    """A torch.fx tracer that records which graph node each module call returned, and the first node
    the call created (so a module's span in the graph is known). ``leaf`` decides which modules are
    called whole instead of traced through."""

    def __init__(self, leaf: Callable[[nn.Module, str], bool] | None = None) -> None:
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
    tracer = _Tracer(leaf)
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
        if node in graph.cuts and probe_result.size(path) is not None and not _not_a_block(modules[path]):
            candidates.append((graph.index[node], path))
    inside = [c for c in candidates if not _inside_a_downsampling_block(c, candidates, probe_result)]
    return _deepest_levels([(index, path, _span_start(graph, path)) for index, path in sorted(inside)],
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


def _deepest_levels(candidates: list[tuple[int, str, int]], probe_result: Probe) -> list[str]:
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
    candidates = [(i, p, i) for i, p in enumerate(ran)
                  if probe_result.calls.get(p) == 1 and probe_result.size(p) is not None and not _not_a_block(modules[p])]
    return _deepest_levels(candidates, probe_result)


# --- the tail: the network after a block ------------------------------------------------------------

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
        tracer = _Tracer(leaf)
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


# --- LRP coverage from the graph ---------------------------------------------------------------------

def _relevance_neutral_functions() -> set:
    return {torch.flatten, torch.cat, torch.relu, F.relu, F.max_pool2d, F.dropout, operator.getitem, getattr,
            torch.nn.functional.relu_}


# Average pooling written as a function is not neutral: its gradient spreads relevance evenly over the
# pixels, also over those a ReLU before it zeroed, where it is lost; as a module it gets the norm rule.
NEUTRAL_METHODS = {"view", "reshape", "flatten", "size", "dim", "contiguous", "relu", "relu_", "permute",
                   "squeeze", "unsqueeze", "clone", "float", "to"}


def lrp_gap_in_graph(net: nn.Module, extra_leaves: tuple[type, ...] = ()) -> str | None:
    """None when every operation of ``net``'s forward has an LRP rule in zennit 0.5.1 or passes relevance
    on unchanged (reshapes, concatenation, pooling, ReLU); otherwise what does not, with where it is.

    Functional arithmetic between layers is what usually fails: a residual sum written as ``x + f(x)``
    gives its whole relevance to both terms (counted twice), a product of two signals (a
    squeeze-and-excitation gate, a layer scale) has no rule.
    """
    covered = (Linear, BatchNorm, Activation, AvgPool, MaxPool, nn.Flatten, nn.Dropout, nn.Dropout2d, nn.Identity,
               nn.ZeroPad2d, nn.ConstantPad2d, Sum, *extra_leaves)

    def leaf(module: nn.Module, _name: str) -> bool | None:
        return True if isinstance(module, covered) else None  # zennit's rule sees the whole module

    try:
        graph = trace_graph(net, leaf)
    except Exception as error:  # noqa: BLE001 - an untraceable forward cannot be checked
        return (f"its forward could not be traced by torch.fx ({type(error).__name__}), so which operations it "
                "applies between its layers is unknown")
    modules = dict(net.named_modules())
    neutral = _relevance_neutral_functions()
    problems: list[str] = []
    for node in graph.nodes:
        where = _where(node)
        if node.op == "call_module":
            module = modules.get(str(node.target))
            if module is not None and not isinstance(module, covered):
                problems.append(f"{type(module).__name__} at {node.target} (no LRP rule)")
        elif node.op == "call_function" and node.target not in neutral:
            name = getattr(node.target, "__name__", str(node.target))
            problems.append(f"`{name}` in {where}" + (" (a residual sum: its relevance would be counted twice)"
                                                     if name in ("add", "iadd") else ""))
        elif node.op == "call_method" and node.target not in NEUTRAL_METHODS:
            problems.append(f"`.{node.target}()` in {where}")
    if not problems:
        return None
    unique = list(dict.fromkeys(problems))
    more = f" and {len(unique) - 3} more" if len(unique) > 3 else ""
    return f"zennit 0.5.1 has no rule for {'; '.join(unique[:3])}{more}"


def _where(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()), ("", None))[0] if stack else ""
    return f"the forward of {path}" if path else "the network's forward"


# --- the registry ------------------------------------------------------------------------------------

class Family:
    """The adapter of one CNN family; subclasses override what differs (pytorch-grad-cam's idea)."""

    name = ""
    description = ""

    def matches(self, net: nn.Module) -> bool:
        raise NotImplementedError

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        """B1..B4 as module paths, shallow to deep (fewer when the network has fewer stages)."""
        try:
            return graph_blocks(net, probe_result)
        except Exception:  # noqa: BLE001 - torch.fx cannot trace every forward; the children can still be probed
            return children_blocks(net, probe_result)

    def tail(self, model: "ModelSpec", block: str) -> Callable[[torch.Tensor], TailRun | None] | None:
        """The network after ``block`` on the model's inference copy (batch norms folded, channels-last), as a
        function of an image (C, H, W) that gives its logits as a function of the block's outputs (M, D, h, w)
        (``TailRun``; None where the values crossing the cut are not batch-first tensors). None when the
        network has no such cut."""
        cut = tail_module(model.inference_net, model.block_paths[block])
        if cut is None:
            return None

        def for_image(image: torch.Tensor) -> TailRun | None:
            crossing: tuple = ()
            if cut.prefix is not None:  # the values crossing the cut, once for this image (a compute job)
                crossing = compute.run(_crossing_values, cut.prefix, image)
                if not all(isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 1 for v in crossing):
                    return None  # a size or a non-batch value: rows of another count would misread it

            def run(outputs: torch.Tensor) -> torch.Tensor:  # copies: an in-place layer must not change the inputs
                rows = [value.expand(len(outputs), *value.shape[1:]).clone() for value in crossing]
                return cut.tail(outputs.clone(memory_format=torch.channels_last), *rows)

            return run

        return for_image

    def canonizers(self, net: nn.Module) -> list:
        return [SequentialMergeBatchNorm()]

    def fold_pairs(self, net: nn.Module) -> list[tuple[str, str]] | None:
        """(convolution, the batch norm it alone feeds) to fold in the inference copy
        (``explainers.models.inference``); None: find them in the traced graph."""
        return None

    def lrp_gap(self, net: nn.Module) -> str | None:
        """None when zennit's rules (after ``canonizers``) cover every layer, else why not."""
        return lrp_gap_in_graph(net)

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        """A copy of ``net`` whose classifier (its last ``nn.Linear``) has ``num_classes`` outputs."""
        twin = without_hooks(copy.deepcopy(net))
        path, old = [(name, m) for name, m in twin.named_modules() if isinstance(m, nn.Linear)][-1]
        twin.set_submodule(path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        return twin.eval()


@torch.inference_mode()
def _crossing_values(prefix: fx.GraphModule, image: torch.Tensor) -> tuple:
    values = prefix(image.unsqueeze(0).contiguous(memory_format=torch.channels_last))
    return tuple(values)


FAMILIES: Registry[Family] = Registry("model family")


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: register one instance under ``cls.name`` (matched in registration order;
    the catch-all ``generic`` stays last)."""
    FAMILIES.add(cls.name, cls(), cls.description, last=cls.name == "generic")
    return cls


def families() -> list[str]:
    return list(FAMILIES)


def family_for(net: nn.Module) -> Family:
    """The first registered adapter that matches ``net`` (``generic`` matches every network)."""
    return next(family for family in FAMILIES.values() if family.matches(net))


def family_named(name: str) -> Family:
    return FAMILIES[name]  # an unknown name raises UnknownNameError listing the known ones


def family_of(model: "ModelSpec") -> Family:
    """The adapter of a loaded model (its ``family`` is the adapter's name)."""
    return family_named(model.family)


def _is_timm(net: nn.Module) -> bool:
    return type(net).__module__.startswith("timm.")


def _last_child_per_level(net: nn.Module, container: str, probe_result: Probe) -> list[str]:
    """The last child of ``container`` at each resolution level, the four deepest (stages of a
    ``features`` stack: EfficientNet, MobileNet, ConvNeXt)."""
    parent = net.get_submodule(container)
    paths = [f"{container}.{name}" for name, _ in parent.named_children()]
    candidates = [(i, p, i) for i, p in enumerate(paths) if probe_result.calls.get(p) == 1
                  and probe_result.size(p) is not None]
    return _deepest_levels(candidates, probe_result)


def _residual_reason(what: str) -> str:
    return (f"{what}; zennit 0.5.1 has no canonizer that makes these sums and products modules its rules "
            "could split, so the relevance would be counted twice or mixed with the gates")


# --- the families ------------------------------------------------------------------------------------

@register_family
class DigitsFamily(Family):
    name = "digits"
    description = "the built-in DigitsResNet (torchvision BasicBlocks): B1..B4 = layer1..layer4"

    def matches(self, net: nn.Module) -> bool:
        # By name along the class hierarchy: the built-in model's module imports this one (no import circle).
        return any(cls.__name__ == "DigitsResNet" and cls.__module__.startswith("explainers.")
                   for cls in type(net).__mro__)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"layer{i}" for i in range(1, 5)]

    def canonizers(self, net: nn.Module) -> list:
        return [ResNetCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        return _torchvision_blocks_only(net)


def _torchvision_blocks_only(net: nn.Module) -> str | None:
    """ResNetCanonizer rewrites torchvision's BasicBlock and Bottleneck only: stages of other blocks are not covered."""
    for i in range(1, 5):
        for name, block in getattr(net, f"layer{i}").named_children():
            if not isinstance(block, (BasicBlock, Bottleneck)):
                return _residual_reason(f"layer{i}.{name} is a {type(block).__name__}, not a torchvision BasicBlock "
                                        "or Bottleneck")
    return None


@register_family
class ResNetFamily(Family):
    name = "resnet"
    description = ("torchvision ResNet, ResNeXt, Wide ResNet, timm's ResNet (its ResNeXt, Wide and 'd' variants), "
                   "and networks laid out like them: B1..B4 = layer1..layer4")

    def matches(self, net: nn.Module) -> bool:
        if isinstance(net, ResNet) or _is_timm_resnet(net):
            return True
        return (not _is_timm(net) and all(isinstance(getattr(net, f"layer{i}", None), nn.Module) for i in range(1, 5))
                and isinstance(getattr(net, "fc", None), nn.Linear))

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"layer{i}" for i in range(1, 5)]

    def canonizers(self, net: nn.Module) -> list:
        if _is_timm_resnet(net):
            return [ExactSequentialMergeBatchNorm(), TimmResNetCanonizer()]
        return [ResNetCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        return _timm_resnet_blocks_only(net) if _is_timm_resnet(net) else _torchvision_blocks_only(net)

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        return _timm_with_classes(net, num_classes) if _is_timm_resnet(net) else super().with_classes(net, num_classes)


def _is_timm_resnet(net: nn.Module) -> bool:
    return _is_timm(net) and type(net).__name__ == "ResNet" and type(net).__module__ == "timm.models.resnet"


def _timm_resnet_blocks_only(net: nn.Module) -> str | None:
    """``TimmResNetCanonizer`` rewrites timm's BasicBlock and Bottleneck; one with a squeeze-and-excitation
    or ECA gate (a product of two signals), anti-aliased pooling or another block type is not covered."""
    from timm.models.resnet import BasicBlock as TimmBasic
    from timm.models.resnet import Bottleneck as TimmBottleneck

    for i in range(1, 5):
        for name, block in getattr(net, f"layer{i}").named_children():
            where = f"layer{i}.{name}"
            if not isinstance(block, (TimmBasic, TimmBottleneck)):
                return _residual_reason(f"{where} is a {type(block).__name__}, not a timm BasicBlock or Bottleneck")
            if block.se is not None:
                return (f"{where} gates its channels by {type(block.se).__name__} (a product of two signals), for "
                        "which zennit 0.5.1 has no rule")
            extra = next((m for m in (block.aa, block.drop_block) if not isinstance(m, nn.Identity)), None)
            if extra is not None:  # anti-aliased pooling or DropBlock
                return f"{where} applies {type(extra).__name__}, for which zennit 0.5.1 has no rule"
    stem = [m for m in net.conv1.modules()] if isinstance(net.conv1, nn.Sequential) else [net.conv1]
    if not all(isinstance(m, (nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU)) for m in stem):
        return "its stem holds layers no zennit rule covers"
    return None


class ForwardRewrite(AttributeCanonizer):
    """A zennit ``AttributeCanonizer`` whose subclass only says, in ``_attribute_map``, which modules it
    rewrites and with what (a new ``forward`` and the modules it calls), as zennit's own canonizers do."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    def copy(self) -> "ForwardRewrite":
        return type(self)()

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        raise NotImplementedError


class TimmResNetCanonizer(ForwardRewrite):
    """timm's ResNet blocks add their shortcut in ``forward`` (``x += shortcut``), where no LRP rule sees the
    sum and the gradient would give both terms the whole relevance. This rewrites the forward of each
    BasicBlock and Bottleneck so that the sum is zennit's ``Sum`` module (its norm rule shares the relevance
    in proportion to each term), as zennit's ``ResNetCanonizer`` does for torchvision's blocks. The function
    is unchanged (``lrp_output`` checks the logits against the model's)."""

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        from timm.models.resnet import BasicBlock as TimmBasic
        from timm.models.resnet import Bottleneck as TimmBottleneck

        if isinstance(module, (TimmBasic, TimmBottleneck)):
            body = cls.bottleneck if isinstance(module, TimmBottleneck) else cls.basic
            return {"forward": body.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def _joined(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.canonizer_sum(torch.stack([shortcut, x], dim=-1))

    @staticmethod
    def basic(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        y = self.bn2(self.conv2(y))
        return self.act2(TimmResNetCanonizer._joined(self, y, x))

    @staticmethod
    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(y)))))
        y = self.bn3(self.conv3(y))
        return self.act3(TimmResNetCanonizer._joined(self, y, x))


@register_family
class VGGFamily(Family):
    name = "vgg"
    description = "torchvision VGG (and features/classifier stacks with max pools): B1..B4 = the last four max pools"

    def matches(self, net: nn.Module) -> bool:
        if isinstance(net, VGG):
            return True
        features = getattr(net, "features", None)
        return (not _is_timm(net) and isinstance(features, nn.Sequential)
                and isinstance(getattr(net, "classifier", None), (nn.Sequential, nn.Linear))
                and sum(isinstance(m, nn.MaxPool2d) for m in features) >= 2)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        # A VGG conv stage ends with its max pool; the last four stages are B1..B4.
        return [f"features.{i}" for i, m in enumerate(net.features) if isinstance(m, nn.MaxPool2d)][-4:]

    def canonizers(self, net: nn.Module) -> list:
        return [VGGCanonizer()]


@register_family
class DenseNetFamily(Family):
    name = "densenet"
    description = "torchvision DenseNet: B1..B4 = features.denseblock1..4"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, DenseNet)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"features.denseblock{i}" for i in range(1, 5)]

    def canonizers(self, net: nn.Module) -> list:
        """zennit 0.5 has none for DenseNet, whose batch norms mostly come after a concatenation, where
        they cannot be merged: only the pairs of a convolution followed by its batch norm are merged
        (``conv0``/``norm0`` and each dense layer's ``conv1``/``norm2``); the other batch norms pass
        relevance on unchanged."""
        pairs = [(["features.conv0"], "features.norm0")]
        pairs += [([f"{name}.conv1"], f"{name}.norm2") for name, module in net.named_modules()
                  if isinstance(module, _DenseLayer)]
        return [NamedMergeBatchNorm(pairs), DenseNetHeadCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        return None  # dense layers concatenate (relevance splits), the head is made modules by the canonizer


class DenseNetHeadCanonizer(ForwardRewrite):
    """torchvision's DenseNet applies its last ReLU and the global average pooling as functions, which no
    LRP rule sees: the pooling's gradient spreads each feature's relevance evenly over all its pixels,
    also over those the ReLU zeroes, where it is lost (5-20% of the logit on random DenseNets). This
    canonizer gives both a module, as ResNet has them: the ReLU passes relevance on, the pooling
    shares it in proportion to each pixel's activation (zennit's norm rule). The function is unchanged."""

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        if isinstance(module, DenseNet):
            return {"forward": cls.forward.__get__(module), "canonizer_relu": nn.ReLU(),
                    "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        return None

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.canonizer_pool(self.canonizer_relu(self.features(x)))
        return self.classifier(torch.flatten(out, 1))


@register_family
class EfficientNetFamily(Family):
    name = "efficientnet"
    description = ("EfficientNet v1 and v2 (torchvision), EfficientNet and EfficientNet-Lite (timm): B1..B4 = the "
                   "last stage at 1/4, 1/8, 1/16 and the 1x1 head convolution at 1/32")

    def matches(self, net: nn.Module) -> bool:
        if isinstance(net, EfficientNet):
            return True
        return _is_timm(net) and type(net).__name__ == "EfficientNet"

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        if _is_timm(net):
            return timm_blocks(net, probe_result)
        return _last_child_per_level(net, "features", probe_result)

    def canonizers(self, net: nn.Module) -> list:
        if not _is_timm(net):
            return super().canonizers(net)
        return [ExactMergeBatchNorm(_timm_efficientnet_pairs(net)), TimmResidualCanonizer()]

    def lrp_gap(self, net: nn.Module) -> str | None:
        gated = any("SqueezeExcit" in type(m).__name__ for m in net.modules())
        if _is_timm(net) and not gated and _timm_blocks_known(net):
            return None  # EfficientNet-Lite: ReLU6, no gates; the canonizers make the residual sums modules
        return _residual_reason("its blocks add their input back in their forward code (residual sums)"
                                + (" and gate channels by squeeze-and-excitation (a product of two signals)"
                                   if gated else ""))

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        return _timm_with_classes(net, num_classes) if _is_timm(net) else super().with_classes(net, num_classes)

    def fold_pairs(self, net: nn.Module) -> list[tuple[str, str]] | None:
        # torch.fx traces into timm's BatchNormAct2d, so the graph shows no conv -> norm module pair.
        if _is_timm(net) and _timm_blocks_known(net):
            return [(convs[0], norm) for convs, norm in _timm_efficientnet_pairs(net)]
        return None


def _timm_block_types() -> tuple[type, ...]:
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual

    return DepthwiseSeparableConv, InvertedResidual


def _timm_blocks_known(net: nn.Module) -> bool:
    """Every block of the timm EfficientNet is one whose forward ``TimmResidualCanonizer`` rewrites."""
    known = _timm_block_types()
    blocks = [block for stage in net.blocks for block in stage]
    return all(isinstance(b, known) and getattr(b, "conv_s2d", None) is None for b in blocks)


def _timm_efficientnet_pairs(net: nn.Module) -> list[tuple[list[str], str]]:
    """(convolution, the batch norm right after it) of a timm EfficientNet, by name: its batch norms are
    ``BatchNormAct2d`` modules with the activation inside, which zennit's sequential merge does not see."""
    separable, inverted = _timm_block_types()
    pairs = [(["conv_stem"], "bn1"), (["conv_head"], "bn2")]
    for name, module in net.named_modules():
        if isinstance(module, separable):
            pairs += [([f"{name}.conv_dw"], f"{name}.bn1"), ([f"{name}.conv_pw"], f"{name}.bn2")]
        elif isinstance(module, inverted):
            pairs += [([f"{name}.conv_pw"], f"{name}.bn1"), ([f"{name}.conv_dw"], f"{name}.bn2"),
                      ([f"{name}.conv_pwl"], f"{name}.bn3")]
    return pairs


class _ExactIdentity:
    """For zennit's batch-norm merges: the merged batch norm an exact identity. zennit leaves its ``eps``, so
    it computes x / sqrt(1 + eps). That is 5e-6 per batch norm for PyTorch's eps = 1e-5 (1.3e-4 of the logits
    after ResNet-50d's 55), but 5e-4 for the TensorFlow eps = 1e-3 of timm's ``tf_`` models, 2% on Lite0's
    logits after its 50 batch norms, where the canonized network would no longer be the model. Here eps is
    0 while merged."""

    def register(self, linears: list, batch_norm: nn.Module) -> None:
        super().register(linears, batch_norm)  # type: ignore[misc]
        self.batch_norm_eps = batch_norm.eps
        batch_norm.eps = 0.0

    def remove(self) -> None:
        super().remove()  # type: ignore[misc]
        self.batch_norm.eps = self.batch_norm_eps  # type: ignore[attr-defined]


class ExactMergeBatchNorm(_ExactIdentity, NamedMergeBatchNorm):
    """zennit's named merge (conv, batch norm pairs given by name), the merged batch norm an exact identity."""


class ExactSequentialMergeBatchNorm(_ExactIdentity, SequentialMergeBatchNorm):
    """zennit's sequential merge (a batch norm right after a convolution in module order), the merged batch norm
    an exact identity."""


class TimmResidualCanonizer(ForwardRewrite):
    """timm's EfficientNet blocks add their input back in ``forward`` (``x = drop_path(x) + shortcut``),
    where no LRP rule sees the sum and the gradient would give both terms the whole relevance. This
    rewrites the forward of each block with a skip so that the sum is zennit's ``Sum`` module (its norm
    rule shares the relevance in proportion to each term), as ``ResNetCanonizer`` does for torchvision's
    blocks. The function is unchanged (``lrp_output`` checks the logits)."""

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        separable, inverted = _timm_block_types()
        if isinstance(module, (separable, inverted)) and module.has_skip:
            body = cls.separable if isinstance(module, separable) else cls.inverted
            return {"forward": body.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def separable(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.aa(self.bn1(self.conv_dw(x))))
        y = self.bn2(self.conv_pw(y))
        return self.canonizer_sum(torch.stack([x, self.drop_path(y)], dim=-1))

    @staticmethod
    def inverted(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv_pw(x))
        y = self.se(self.aa(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return self.canonizer_sum(torch.stack([x, self.drop_path(y)], dim=-1))


@register_family
class MobileNetFamily(Family):
    name = "mobilenet"
    description = "torchvision MobileNet v2 and v3: B1..B4 = the last block at 1/4, 1/8, 1/16 and the head conv at 1/32"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, (MobileNetV2, MobileNetV3))

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return _last_child_per_level(net, "features", probe_result)

    def lrp_gap(self, net: nn.Module) -> str | None:
        gated = " and gate channels by squeeze-and-excitation" if isinstance(net, MobileNetV3) else ""
        return _residual_reason(f"its inverted residual blocks add their input back in their forward code{gated}")


@register_family
class ConvNeXtFamily(Family):
    name = "convnext"
    description = "torchvision ConvNeXt: B1..B4 = features.1, .3, .5, .7 (the four stages)"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, ConvNeXt)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return _last_child_per_level(net, "features", probe_result)

    def lrp_gap(self, net: nn.Module) -> str | None:
        return ("its blocks normalise with LayerNorm, for which zennit 0.5.1 has no rule, scale by a learned layer "
                "scale and add their input back in their forward code (residual sums), which no zennit canonizer "
                "rewrites")


@register_family
class RegNetFamily(Family):
    name = "regnet"
    description = "torchvision RegNet X and Y: B1..B4 = trunk_output.block1..block4"

    def matches(self, net: nn.Module) -> bool:
        return isinstance(net, RegNet)

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return [f"trunk_output.{name}" for name, _ in net.trunk_output.named_children()][-4:]

    def lrp_gap(self, net: nn.Module) -> str | None:
        gated = any("SqueezeExcit" in type(m).__name__ for m in net.modules())
        return _residual_reason("its blocks add their input back in their forward code (residual sums)"
                                + (" and gate channels by squeeze-and-excitation" if gated else ""))


def timm_blocks(net: nn.Module, probe_result: Probe) -> list[str]:
    """From timm's ``feature_info`` (module and reduction of each stage): the last module per reduction,
    the four deepest. B4 continues to the last top-level module that still runs at the same resolution
    before the pooling (EfficientNet's ``conv_head``/``bn2``): the feature map the classifier pools."""
    info = getattr(net, "feature_info", None)
    entries = info.get_dicts() if hasattr(info, "get_dicts") else list(info or [])
    per_reduction: dict[int, str] = {}
    for entry in entries:
        per_reduction[int(entry["reduction"])] = str(entry["module"])
    paths = [per_reduction[r] for r in sorted(per_reduction)][-4:]
    paths = [p for p in paths if probe_result.size(p) is not None]
    if not paths:
        return graph_blocks(net, probe_result)
    last, size = paths[-1], probe_result.size(paths[-1])
    top = paths[-1].split(".")[0]
    order = probe_result.order
    modules = dict(net.named_modules())
    later = [p for p in order[order.index(last) + 1:] if "." not in p and p != top] if last in order else []
    for path in later:
        if probe_result.size(path) != size:
            break
        if probe_result.calls.get(path) == 1 and not _not_a_block(modules[path]):
            paths[-1] = path
    return paths


def _timm_with_classes(net: nn.Module, num_classes: int) -> nn.Module:
    twin = without_hooks(copy.deepcopy(net))
    twin.reset_classifier(num_classes)
    return twin.eval()


@register_family
class TimmFamily(Family):
    name = "timm"
    description = "any other timm model: B1..B4 from timm's feature_info"

    def matches(self, net: nn.Module) -> bool:
        return _is_timm(net) and getattr(net, "feature_info", None) is not None

    def block_paths(self, net: nn.Module, probe_result: Probe) -> list[str]:
        return timm_blocks(net, probe_result)

    def with_classes(self, net: nn.Module, num_classes: int) -> nn.Module:
        return _timm_with_classes(net, num_classes)


@register_family
class GenericFamily(Family):
    name = "generic"
    description = ("any other module ending in a linear classifier: the stage outputs found in its traced graph "
                   "(or its top-level children), the last per resolution")

    def matches(self, net: nn.Module) -> bool:
        return True
