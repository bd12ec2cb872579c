"""Model families: one adapter per kind of network, registered by name (``register_family``).

An adapter names a network's blocks B1..B4, its tail after a block (for Ablation-CAM), its LRP
canonizers and how to rebuild it with another number of classes. A new family is one subclass of
``Family`` (see the README's "Extending"), in a module of its own that this face imports.

The machinery every adapter shares:

- ``probe``: one forward with a counting tap on every module (``Probe``), ``BLOCK_NAMES`` and the
  checks a block passes (``check_blocks``);
- ``graph``: the forward traced with torch.fx, and the generic rule for blocks (``graph_blocks``);
- ``tail``: the network after a block, cut from the traced graph (``tail_module``);
- ``lrp_coverage``: whether zennit's rules cover every operation of the traced graph;
- ``canonizers``: the LRP canonizers added to zennit's;
- ``timm_support``: what the adapters read from timm's networks;
- ``base``: ``Family`` (its defaults are the generic rule) and the registry, ``MODEL_FAMILIES``.

The adapters, one module per group, registered when imported below, in this order; the first
adapter that matches a network is its family:

- ``torchvision_cnns``: digits, resnet, vgg, densenet, efficientnet, mobilenet, convnext, regnet;
- ``transformers``: timm_vit (ViT, DeiT, the built-in digits_vit), torchvision_vit, swin; imported before
  ``fallbacks`` so that timm's transformers do not fall to the ``timm`` adapter;
- ``clip_vit``: open_clip (a CLIP ViT image tower under a zero-shot head, ``explainers.models.clip``);
- ``fallbacks``: timm (any other timm model) and generic (anything; always last).
"""
from ...runtime.errors import BlockError

# The adapters register when imported, in this order: the first that matches a network wins.
# isort: off
from . import torchvision_cnns  # noqa: F401
from . import transformers  # noqa: F401
from . import clip_vit  # noqa: F401
from . import fallbacks  # noqa: F401
# isort: on
from .base import MODEL_FAMILIES, Family, families, family_for, family_named, family_of, register_family
from .graph import graph_blocks
from .probe import BLOCK_NAMES, Probe, check_blocks, probe
from .tail import TailRun, tail_module

__all__ = ["BLOCK_NAMES", "MODEL_FAMILIES", "BlockError", "Family", "Probe", "TailRun", "check_blocks", "families",
           "family_for", "family_named", "family_of", "graph_blocks", "probe", "register_family", "tail_module"]
