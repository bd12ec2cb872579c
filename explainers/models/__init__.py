"""Classifiers by name, path or module (``load_model`` -> ``ModelSpec``), each with its family
adapter (``families``: where its blocks are, its tail after a block, its LRP canonizers), its
preprocessing, and the built-in models (``builtin``: digits, digits_marked, five torchvision
classifiers, EfficientNet-Lite0).

``spec``: what a loaded model is, and ``MODELS``; ``loading``: ``load_model``, checkpoints and
modules; ``pretrained``: torchvision's and timm's classifiers by name; ``clip``: CLIP (open_clip) as a
zero-shot classifier; ``preprocess``, ``inputs``:
images into a model's input; ``inference``: the fast copy for gradient-free passes.

A new model family is one ``Family`` subclass registered in ``families``; a new built-in model is
one function registered in ``MODELS`` (see the README's "Extending").
"""
from . import builtin  # noqa: F401  (registers the built-in models)
from .builtin.digits import SHIPPED_MODELS
from .builtin.imagenet import BORDER_NOTE
from .clip import OPEN_CLIP_PREFIX, PROMPT, open_clip_model, split_open_clip_name
from .families import BLOCK_NAMES
from .inputs import as_batch
from .loading import from_checkpoint, from_module, load_model, model_name
from .preprocess import Preprocess
from .pretrained import timm_model, torchvision_model
from .spec import MODELS, ModelSpec

__all__ = ["BLOCK_NAMES", "BORDER_NOTE", "MODELS", "OPEN_CLIP_PREFIX", "PROMPT", "SHIPPED_MODELS", "ModelSpec",
           "Preprocess", "as_batch", "from_checkpoint", "from_module", "load_model", "model_name", "open_clip_model",
           "split_open_clip_name", "timm_model", "torchvision_model"]
