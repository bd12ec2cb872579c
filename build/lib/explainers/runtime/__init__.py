"""The machinery every other part runs on, and which imports no other part of the library.

Errors a person causes (``UserInputError`` and its kinds), registries by name, declared settings,
progress with time left, devices, the one compute thread, per-request hooks, map arithmetic and
where the shipped files are.
"""
from .devices import DEVICE_VARIABLE, default_device, describe_device, device_of, resolve_device
from .errors import (
                     BlockError,
                     CheckpointError,
                     DatasetError,
                     DeviceOutOfMemoryError,
                     DeviceUnavailableError,
                     FitCancelled,
                     ImageError,
                     MethodUnavailableError,
                     ModelUnavailableError,
                     UserInputError,
)
from .maps import normalise, upsample
from .paths import ASSETS, HOME
from .progress import Progress, current_listener, reporting, time_span, with_eta
from .registry import Registry, UnknownNameError
from .settings import DeclaredParameters, Setting, SettingError, SettingValueError, UnknownSettingError

__all__ = [
    "ASSETS", "DEVICE_VARIABLE", "HOME", "BlockError", "CheckpointError", "DatasetError", "DeclaredParameters",
    "DeviceOutOfMemoryError",
    "DeviceUnavailableError", "FitCancelled", "ImageError", "MethodUnavailableError", "ModelUnavailableError",
    "Progress", "Registry", "Setting", "SettingError", "SettingValueError", "UnknownNameError", "UnknownSettingError",
    "UserInputError", "current_listener", "default_device", "describe_device", "device_of", "normalise", "reporting",
    "resolve_device", "time_span", "upsample", "with_eta",
]
