"""The errors a person can cause, and what separates them from bugs.

Every error a user of the dashboard or the library can cause by their input (a bad image, a
checkpoint that does not fit, weights that cannot be had offline, a method that does not
apply to this model or depth, an empty or mismatched folder) is a ``UserInputError`` whose
message says what happened and what to do. Pages show these in place and carry on; anything
else is a bug and surfaces as one (a traceback in development, never disguised as bad input).

``UserInputError`` subclasses ``ValueError`` so that code catching ``ValueError`` around a
user's input keeps working.
"""
from __future__ import annotations

__all__ = ["BlockError", "CheckpointError", "DatasetError", "DeviceOutOfMemoryError", "DeviceUnavailableError",
           "FitCancelled", "ImageError",
           "MethodUnavailableError", "ModelUnavailableError", "UserInputError"]


class UserInputError(ValueError):
    """An error the user's input caused; the message is meant for that person."""


class ImageError(UserInputError):
    """An uploaded file that cannot be used as an image."""


class CheckpointError(UserInputError):
    """A checkpoint file that cannot be read, or that does not fit the architecture."""


class ModelUnavailableError(UserInputError):
    """The weights of a model cannot be had here (no network and nothing cached)."""


class MethodUnavailableError(UserInputError):
    """A method that does not apply to this model or block (the message says why)."""


class DatasetError(UserInputError):
    """A folder or dataset that cannot be used as asked (missing, empty, classes that do not match)."""


class BlockError(UserInputError):
    """A module that cannot serve as a block (it runs twice per forward, or returns no feature map)."""


class FitCancelled(UserInputError):
    """A fit stopped because a person asked (its Cancel button): what it had written to the feature cache is
    whole, and the next fit of the same model and data resumes from it."""


class DeviceUnavailableError(UserInputError):
    """The device asked for does not exist on this machine, or is not a device name at all."""


class DeviceOutOfMemoryError(UserInputError):
    """A pass needed more memory than the model's device (a GPU) had left: a smaller batch, image set or
    model, or the CPU, is the way out; nothing shared was changed by the failed pass."""
