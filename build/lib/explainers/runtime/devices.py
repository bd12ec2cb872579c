"""Where a model runs: a CUDA GPU or Apple's MPS when one is present, the CPU otherwise.

``load_model(..., device=None)`` puts a model on ``default_device()``: the device named by the
environment variable ``PROTOSCOPE_DEVICE`` (``cpu``, ``cuda``, ``cuda:1``, ``mps``) when it is set,
else the first of CUDA, MPS and the CPU that this machine has. Every tensor a method makes follows
the model's device (``ModelSpec.device``); what leaves the library for a page (maps, probabilities,
features written to disk) is numpy on the CPU.

MPS has no float64: nothing that runs on the model's device may use it (tests run every method on a
simulated device that refuses float64 and any operation mixing devices, as CUDA and MPS do).
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .errors import DeviceOutOfMemoryError, DeviceUnavailableError

__all__ = ["DEVICE_VARIABLE", "DeviceOutOfMemoryError", "DeviceUnavailableError", "accumulator_dtype", "default_device",
           "describe_device", "device_of", "for_people", "is_out_of_memory", "release_memory", "resolve_device",
           "synchronize"]

DEVICE_VARIABLE = "PROTOSCOPE_DEVICE"


def default_device() -> torch.device:
    """``PROTOSCOPE_DEVICE`` when set, else CUDA when available, else MPS when available, else the CPU."""
    named = os.environ.get(DEVICE_VARIABLE, "").strip()
    if named:
        return resolve_device(named)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a ``torch.device`` this machine has (None: ``default_device()``);
    ``DeviceUnavailableError`` says what is missing and what to use instead."""
    if device is None:
        return default_device()
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DeviceUnavailableError(f"{device!r} is not a device name: use cpu, cuda, cuda:N or mps "
                                     f"(in {DEVICE_VARIABLE} or load_model(device=...)).") from error
    if chosen.type == "cpu":
        return chosen
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DeviceUnavailableError(f"{device!r} was asked for, but this machine has no CUDA GPU that PyTorch "
                                         f"can use: use cpu{', or mps' if _mps_available() else ''}.")
        if chosen.index is not None and chosen.index >= count:
            raise DeviceUnavailableError(f"{device!r} was asked for, but this machine has {count} CUDA "
                                         f"GPU{'s' if count > 1 else ''} (cuda:0..cuda:{count - 1}).")
        return chosen
    if chosen.type == "mps" and not _mps_available():
        raise DeviceUnavailableError(f"{device!r} was asked for, but Apple's MPS is not available here: use cpu"
                                     f"{', or cuda' if torch.cuda.is_available() else ''}.")
    if chosen.type == "meta":  # holds shapes, not values: every weight would be lost on the way there
        others = f"{', cuda' if torch.cuda.is_available() else ''}{', mps' if _mps_available() else ''}"
        raise DeviceUnavailableError(f"{device!r} keeps no values (PyTorch's shape-only device): use cpu{others}.")
    try:  # any other backend PyTorch knows (a registered accelerator): usable if it holds a tensor
        torch.empty(0, device=chosen)
    except Exception as error:  # noqa: BLE001 - a backend not built in raises what it likes (xpu: AssertionError)
        raise DeviceUnavailableError(f"{device!r} was asked for, but PyTorch cannot place a tensor there "
                                     f"({error.__class__.__name__}): use cpu.") from error
    return chosen


def device_of(net: nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module that has neither."""
    for parameter in net.parameters():
        return parameter.device
    for buffer in net.buffers():
        return buffer.device
    return torch.device("cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device`` (a GPU runs asynchronously: a timing without this measures
    the launch, not the pass)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def is_out_of_memory(error: BaseException) -> bool:
    """True for a device's allocation failure: CUDA's ``torch.OutOfMemoryError``, Apple's MPS (a plain
    ``RuntimeError`` "MPS backend out of memory"), or one already turned into ``DeviceOutOfMemoryError``."""
    if isinstance(error, (torch.OutOfMemoryError, DeviceOutOfMemoryError)):
        return True
    return isinstance(error, RuntimeError) and "out of memory" in str(error).lower()


def for_people(error: BaseException) -> BaseException:
    """``error`` as a person should meet it: a device out of memory becomes ``DeviceOutOfMemoryError`` (a
    ``UserInputError``: the page says what to do, no traceback), after the memory it left cached is given
    back; any other error is returned as it is."""
    if not is_out_of_memory(error) or isinstance(error, DeviceOutOfMemoryError):
        return error
    release_memory()
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    converted = DeviceOutOfMemoryError(
        f"The device ran out of memory for this request ({first_line[:160]}). Try a smaller batch size in the "
        f"method's settings, fewer images, or run Protoscope on the CPU ({DEVICE_VARIABLE}=cpu).")
    converted.__cause__ = error
    return converted


def release_memory(device: torch.device | None = None) -> None:
    """Give the memory a failed allocation left cached back to ``device`` (None: every accelerator this
    machine has), so that the next request (of any session) starts from a clean allocator instead of
    failing in turn."""
    if (device is None or device.type == "cuda") and torch.cuda.is_available():
        torch.cuda.empty_cache()
    if (device is None or device.type == "mps") and _mps_available():
        torch.mps.empty_cache()


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """The widest float ``device`` computes in, for sums checked against an identity (LRP's conservation):
    float64, except on Apple's MPS (and any other accelerator not known to have it), float32."""
    return torch.float64 if device.type in ("cpu", "cuda") else torch.float32


def describe_device(device: torch.device) -> str:
    """A short name for people: ``CPU (2 threads)``, ``CUDA: NVIDIA A100 (cuda:0)``, ``Apple MPS``."""
    if device.type == "cpu":
        return f"CPU ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA: {torch.cuda.get_device_name(index)} (cuda:{index})"
    if device.type == "mps":
        return "Apple MPS"
    return str(device)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
