"""Whether zennit's LRP rules cover every operation of a network, read from its traced graph
(``lrp_gap_in_graph``), and the reason the adapters give for residual sums and gates (``residual_reason``)."""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn
from zennit.layer import Sum
from zennit.types import Activation, AvgPool, BatchNorm, Linear, MaxPool

from .graph import trace_graph

__all__ = ["NEUTRAL_METHODS", "lrp_gap_in_graph", "residual_reason"]


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


def residual_reason(what: str) -> str:
    """Why LRP does not apply to a network whose blocks do ``what`` (sums and products in their forward code)."""
    return (f"{what}; zennit 0.5.1 has no canonizer that makes these sums and products modules its rules "
            "could split, so the relevance would be counted twice or mixed with the gates")
