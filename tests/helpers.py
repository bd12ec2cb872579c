"""Shared helpers for the library's unit tests (no fixtures here: conftest.py belongs to another suite).

Everything is built at test time: the digits weights are read from assets/ on every
``load_model("digits")`` call; torchvision models use random weights (``weights=None``) so
nothing is ever downloaded. Models that are slow to build are kept in memory for the session.
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from explainers import load_dataset, load_model
from explainers.models import ModelSpec
from explainers.runtime.hooks import _dispatch

REPO = Path(__file__).resolve().parents[1]


def page_test(path: str, timeout: float = 120, **query: str):
    """An AppTest of one page (``path`` from the repo root, e.g. ``pages/saliency.py``) with the shared sidebar
    drawn first, as app.py draws them, and the link values ``query``; not run yet."""
    from streamlit.testing.v1 import AppTest

    script = ("import runpy\nfrom ui.sidebar import sidebar\nsidebar()\n"
              f"runpy.run_path({str(REPO / path)!r}, run_name='__main__')\n")
    app = AppTest.from_string(script, default_timeout=timeout)
    for key, value in query.items():
        app.query_params[key] = value
    return app


ALL_METHODS = ("cam", "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "eigencam", "eigengradcam")
GRADIENT_FREE = ("cam", "eigencam")


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: these models are tiny, and two threads on a busy
    two-core machine spin against each other (a 3 ms forward pass became 600 ms)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def digits_model() -> ModelSpec:
    """A fresh ModelSpec of the built-in digits model (weights read from assets/ now; ~50 ms)."""
    return load_model("digits")


@functools.lru_cache(maxsize=None)
def random_torchvision(name: str) -> ModelSpec:
    """A torchvision model with seeded random weights (no download); built once per session."""
    torch.manual_seed(0)
    return load_model(name, weights=None)


@functools.lru_cache(maxsize=None)
def _digits_test_batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    from explainers.models.builtin.digits import digits_transform

    dataset = load_dataset("digits", "test")
    transform = digits_transform()
    # Spread over the split so several classes appear.
    indices = torch.linspace(0, len(dataset) - 1, n).round().long().tolist()
    images = torch.stack([transform(dataset[i][0]) for i in indices])
    labels = torch.as_tensor([dataset[i][1] for i in indices])
    return images, labels


def digits_test_batch(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real digits test images as model inputs (N, 1, 64, 64) and their labels."""
    images, labels = _digits_test_batch(n)
    return images.clone(), labels.clone()


def hook_counts(net: nn.Module) -> dict[str, tuple[int, int, int, int]]:
    """Number of forward / forward-pre / backward / backward-pre hooks on every module, not counting
    the one permanent dispatcher of ``explainers.runtime.hooks`` (it acts only for a request that set a tap)."""
    return {
        name: (sum(hook is not _dispatch for hook in m._forward_hooks.values()), len(m._forward_pre_hooks),
               len(m._backward_hooks),
               len(getattr(m, "_backward_pre_hooks", {})))
        for name, m in net.named_modules()
    }


@dataclass
class PassCounter:
    forwards: int = 0
    backwards: int = 0  # backward passes that really ran through the network's output
    grad_calls: int = 0  # calls of torch.autograd.grad / torch.autograd.backward (Tensor.backward uses it)


@contextmanager
def count_passes(net: nn.Module, monkeypatch, *more: nn.Module) -> Iterator[PassCounter]:
    """Count real forward calls of ``net`` (and of ``more`` networks, e.g. ``model.inference_net``) and
    real backward passes through their outputs.

    A forward hook on ``net`` counts its calls; when the output is part of an autograd
    graph, a tensor hook on it counts every backward pass that reaches the logits (it fires
    once per pass, whatever API started it). The autograd entry points are also wrapped.
    """
    counter = PassCounter()

    def on_backward(grad: torch.Tensor) -> None:
        counter.backwards += 1

    def on_forward(_module: nn.Module, _inputs: object, output: object) -> None:
        counter.forwards += 1
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(on_backward)

    def wrap(function):
        @functools.wraps(function)
        def counted(*args, **kwargs):
            counter.grad_calls += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(torch.autograd, "grad", wrap(torch.autograd.grad))
    monkeypatch.setattr(torch.autograd, "backward", wrap(torch.autograd.backward))
    handles = [module.register_forward_hook(on_forward) for module in {id(m): m for m in (net, *more)}.values()]
    try:
        yield counter
    finally:
        for handle in handles:
            handle.remove()
