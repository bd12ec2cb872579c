"""Protoscope: explain how image classifiers decide.

    from explainers import load_model, load_dataset, explain_many, method_names
    model = load_model("digits")
    image, label = load_dataset("digits", "test")[0]
    maps = explain_many(model, image, ["gradcam", "cam"], block="B4")

The library is in layers, each a subpackage whose ``__init__`` is its public face (README,
"Architecture"): ``runtime`` < ``data``, ``engine`` < ``models`` < ``fitted`` < ``methods`` <
``evaluation`` < ``display``; ``cli`` is the command line.
"""
from .data import DatasetSpec, load_dataset, load_image
from .engine import Trace, trace
from .methods import (
                      Explanation,
                      explain,
                      explain_batch,
                      explain_many,
                      explain_trace,
                      method_info,
                      method_names,
                      predict,
)
from .models import ModelSpec, load_model
from .runtime import (
                      CheckpointError,
                      ImageError,
                      MethodUnavailableError,
                      ModelUnavailableError,
                      UserInputError,
                      default_device,
)

__all__ = [
    "CheckpointError", "DatasetSpec", "Explanation", "ImageError", "MethodUnavailableError", "ModelSpec",
    "ModelUnavailableError", "Trace", "UserInputError", "default_device", "explain", "explain_batch", "explain_many",
    "explain_trace", "load_dataset", "load_image", "load_model", "method_info", "method_names", "predict", "trace",
]
