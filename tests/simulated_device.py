"""A simulated accelerator for the device tests: this machine has no GPU, so the tests make one.

``DEVICE`` ("simgpu:0") is a PyTorch device of its own (the PrivateUse1 backend, registered from
Python). A tensor there is a wrapper (``OnDevice``) around a CPU tensor: every operation runs on
the CPU, so results equal the CPU's, while the wrapper refuses what a real GPU refuses:

- an operation mixing a device tensor with a CPU tensor of one element or more ("Expected all
  tensors to be on the same device"), as CUDA and MPS do; copies between devices (``.to``,
  ``.cpu()``, ``copy_``) and CPU index tensors (which CUDA accepts) are allowed;
- ``.numpy()`` of a device tensor (PyTorch refuses it for tensor subclasses, as for CUDA tensors);
- float64 on the device, as Apple's MPS does (so one simulation checks both CUDA's rules and MPS's).

It is made with PyTorch's own hooks for out-of-tree backends (``_setup_privateuseone_for_python_backend``,
the empty/copy kernels registered for PrivateUse1) and works from every thread, the compute thread
included. Importing this module registers the backend for the whole test process (PyTorch allows
one such backend per process; nothing else changes).
"""
from __future__ import annotations

import threading

import torch
from torch.utils._python_dispatch import return_and_correct_aliasing
from torch.utils._pytree import tree_map
from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

__all__ = ["DEVICE", "OnDevice", "on_device", "refusals_in_backward"]

NAME = "simgpu"
CPU = torch.device("cpu")
# CUDA takes CPU tensors as indices of a device tensor.
INDEX_OPERATIONS = {"index", "index_put", "index_put_", "_index_put_impl_"}
COPIES = {"copy_", "to", "_to_copy", "_copy_from", "_copy_from_and_resize"}


class OnDevice(torch.Tensor):
    """A tensor on the simulated device: a CPU tensor inside, the device's rules outside."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor) -> "OnDevice":
        if inner.dtype == torch.float64:
            refuse(TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
                             "float64 (simulated device: float64 is refused, as on Apple's MPS)"))
        with torch.inference_mode(False):  # a view may share its version counter with a normal tensor
            wrapper = torch.Tensor._make_wrapper_subclass(
                cls, inner.size(), strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
                layout=inner.layout, device=DEVICE, requires_grad=inner.requires_grad)
        wrapper.inner = inner
        assert not isinstance(inner, OnDevice), "a device tensor wrapped twice"
        return wrapper

    @property
    def data(self) -> torch.Tensor:
        return torch.Tensor.data.__get__(self)

    @data.setter
    def data(self, new: torch.Tensor) -> None:
        """``module.weight.data = ...`` (zennit's canonizers do it): the wrapper takes the new values."""
        if not isinstance(new, OnDevice):
            raise RuntimeError("simulated device: .data of a device tensor set to a CPU tensor (on a GPU this "
                               "silently moves the parameter to the CPU)")
        torch.Tensor.data.__set__(self, new)
        self.inner = new.inner

    def tolist(self) -> list:  # CUDA tensors give their values to Python, as .item() does
        return self.inner.tolist()

    def __repr__(self, **_: object) -> str:
        return f"OnDevice({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN206 - PyTorch's protocol
        kwargs = kwargs or {}
        places: set[str] = set()

        def unwrap(value: object) -> object:
            if isinstance(value, OnDevice):
                places.add(NAME)
                return value.inner
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                places.add(value.device.type)
            return value

        inner_args, inner_kwargs = tree_map(unwrap, args), tree_map(unwrap, kwargs)
        name = func.overloadpacket.__name__
        if len(places) > 1 and name not in COPIES | INDEX_OPERATIONS:
            refuse(RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                f"{NAME}:0 and cpu! (simulated device, in {func})"))
        target = inner_kwargs.get("device")
        if target is not None:  # .to(), .cpu(), new_zeros(device=...): the result is where the call says
            inner_kwargs["device"] = CPU
            result = func(*inner_args, **inner_kwargs)
            return _wrapped(result) if torch.device(target).type == NAME else result
        result = func(*inner_args, **inner_kwargs)
        if name == "_local_scalar_dense":  # .item(), float(t): a Python number, as from a GPU
            return result
        return return_and_correct_aliasing(func, args, kwargs, _wrapped(result))


# What was refused inside a backward pass: the autograd engine runs a device's backward on a thread of its
# own, and an exception raised there aborts the whole process for this Python-registered device (PyTorch
# cannot reach the device guard's stream functions while it unwinds). So there the refusal is recorded,
# the operation goes on, and the tests check that this list stays empty (``refusals_in_backward``).
BACKWARD_REFUSALS: list[str] = []


def refuse(error: Exception) -> None:
    if isinstance(threading.current_thread(), threading._DummyThread):  # a C++ thread: autograd's device worker
        BACKWARD_REFUSALS.append(str(error))
        return
    raise error


def refusals_in_backward() -> list[str]:
    """What backward passes did that a GPU refuses, since the last call (which empties the record)."""
    found = list(BACKWARD_REFUSALS)
    BACKWARD_REFUSALS.clear()
    return found


def _wrapped(result: object) -> object:
    return tree_map(lambda value: value if isinstance(value, OnDevice) else
                    OnDevice(value) if isinstance(value, torch.Tensor) else value, result)


def on_device(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, OnDevice)


def _unwrapped(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.inner if isinstance(tensor, OnDevice) else tensor


def _empty(*args, **kwargs) -> OnDevice:  # noqa: ANN002, ANN003 - aten's signature
    return OnDevice(torch.ops.aten.empty.memory_format(*args, **{**kwargs, "device": CPU}))


def _empty_strided(*args, **kwargs) -> OnDevice:  # noqa: ANN002, ANN003 - aten's signature
    return OnDevice(torch.ops.aten.empty_strided.default(*args, **{**kwargs, "device": CPU}))


def _copy_from(source: torch.Tensor, destination: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    _unwrapped(destination).copy_(_unwrapped(source))
    return destination


def _copy_from_and_resize(source: torch.Tensor, destination: torch.Tensor) -> torch.Tensor:
    _unwrapped(destination).resize_(source.shape).copy_(_unwrapped(source))
    return destination


def _register() -> torch.device:
    _setup_privateuseone_for_python_backend(NAME)
    library = torch.library.Library("aten", "IMPL")
    library.impl("empty.memory_format", _empty, "PrivateUse1")
    library.impl("empty_strided", _empty_strided, "PrivateUse1")
    library.impl("_copy_from", _copy_from, "PrivateUse1")
    library.impl("_copy_from_and_resize", _copy_from_and_resize, "PrivateUse1")
    _LIBRARIES.append(library)  # the registrations live as long as the library object
    return torch.device(NAME, 0)


_LIBRARIES: list[torch.library.Library] = []
DEVICE = _register()
