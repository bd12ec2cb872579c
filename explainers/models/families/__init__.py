"""Model families: one adapter per kind of network, registered by name (``register_family``).

An adapter names a network's blocks B1..B4, its tail after a block (for Ablation-CAM), its LRP
canonizers and how to rebuild it with another number of classes. A new family is one subclass of
``Family`` (see the README's "Extending")."""
from . import transformers  # noqa: F401  (registers the transformer families)
from .core import BLOCK_NAMES, FAMILIES, Family, Probe, family_for, family_named, family_of, probe, register_family

__all__ = ["BLOCK_NAMES", "FAMILIES", "Family", "Probe", "family_for", "family_named", "family_of", "probe",
           "register_family"]
