"""Forward hooks that act for one request only, on modules that many requests share.

A model loaded once serves every session of a classroom, each in its own thread. A hook
registered on a shared module for one request's pass would fire in every other request's
pass too: concurrent passes would record each other's activations (issue 9 measured 3-6
silently wrong maps in 120 threaded calls). So the modules never get per-request hooks.
Instead each tapped module carries one permanent *dispatcher* hook, and what a request wants
done at a module (record its output, replace it) lives in a ``ContextVar``: a thread, and a
``contextvars`` context copied into the compute thread (``explainers.runtime.compute``), sees only
its own taps. With no tap set, the dispatcher returns at once and the module's output passes
unchanged.

    with tapped({model.blocks["B3"]: record}):
        model.net(x)          # record(output) sees this call's B3 output, nobody else's

A tap returns None to leave the output as it is, or a tensor that replaces it (zennit's idea
of a hook that is a small object, with pytorch's own hook contract).
"""
from __future__ import annotations

import threading
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Callable, Iterator, Mapping, Optional

import torch
from torch import nn

Tap = Callable[[torch.Tensor], Optional[torch.Tensor]]

_TAPS: ContextVar[Optional[Mapping[nn.Module, Tap]]] = ContextVar("protoscope_taps", default=None)
_DISPATCHERS: "weakref.WeakKeyDictionary[nn.Module, object]" = weakref.WeakKeyDictionary()
_INSTALLING = threading.Lock()

__all__ = ["Tap", "dispatcher_installed", "tapped", "without_hooks"]


def _dispatch(module: nn.Module, _inputs: object, output: object) -> object:
    taps = _TAPS.get()
    if not taps:
        return None
    tap = taps.get(module)
    return None if tap is None else tap(output)  # type: ignore[arg-type]


def _install(module: nn.Module) -> bool:
    """Give ``module`` the dispatcher unless it has one; True when it was added now. A deep copy of a
    tapped module carries the original's dispatcher in its hooks already: a second would run every
    tap twice."""
    with _INSTALLING:
        if module in _DISPATCHERS or any(hook is _dispatch for hook in module._forward_hooks.values()):
            return False
        _DISPATCHERS[module] = module.register_forward_hook(_dispatch)
        return True


def dispatcher_installed(module: nn.Module) -> bool:
    """Whether ``module`` carries the dispatcher hook (the one hook Protoscope leaves on a shared module)."""
    return module in _DISPATCHERS or any(hook is _dispatch for hook in module._forward_hooks.values())


@contextmanager
def tapped(taps: Mapping[nn.Module, Tap], *, private: bool = False) -> Iterator[None]:
    """Apply ``taps`` (module -> function of its output) to the passes run in this context only.

    Each module gets the dispatcher once (kept afterwards, since other requests may be using it
    at that moment). ``private=True`` is for a network no other thread can see (one being
    inspected while it loads, a private copy): its dispatchers are removed again on exit.
    Taps nest: an inner ``tapped`` adds to (or overrides) the outer one's for its body.
    """
    added = [module for module in taps if _install(module)]
    outer = _TAPS.get() or {}
    token = _TAPS.set({**outer, **taps})
    try:
        yield
    finally:
        _TAPS.reset(token)
        if private:
            with _INSTALLING:
                for module in added:
                    handle = _DISPATCHERS.pop(module, None)
                    if handle is not None:
                        handle.remove()  # type: ignore[attr-defined]


def without_hooks(net: nn.Module) -> nn.Module:
    """``net`` (a fresh copy) with every forward, pre-forward and backward hook dropped: a deep copy
    inherits the hooks of what it was copied from (dispatchers, a user's or a test's hooks), which
    would otherwise fire in the copy's passes too."""
    for module in net.modules():
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
    return net
