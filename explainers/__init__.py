"""Protoscope: explain how convolutional image classifiers decide.

    from explainers import load_model, load_dataset, explain_many, methods
    model = load_model("digits")
    image, label = load_dataset("digits", "test")[0]
    maps = explain_many(model, image, ["gradcam", "cam"], block="B4")
"""
from .api import Explanation, MethodUnavailableError, explain, explain_batch, explain_many, explain_trace, predict
from .data import DatasetSpec, load_dataset
from .devices import default_device
from .errors import UserInputError
from .images import ImageError, load_image
from .methods import method_info, methods
from .models import CheckpointError, ModelSpec, ModelUnavailableError, load_model
from . import imagenet  # noqa: E402,F401  (registers the built-in ImageNet model, efficientnet_lite0)
from . import marked  # noqa: E402,F401  (registers the digits_marked dataset)
from .trace import Trace, trace

__all__ = [
    "CheckpointError", "DatasetSpec", "Explanation", "ImageError", "MethodUnavailableError", "ModelSpec",
    "ModelUnavailableError", "Trace", "default_device", "explain", "explain_batch", "explain_many", "explain_trace",
    "load_dataset", "load_image", "load_model", "method_info", "methods", "predict", "trace", "UserInputError",
]
