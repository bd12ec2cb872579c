"""The one shared pass: ``trace`` runs one forward (and at most one backward) with hooks on every
block, and ``batching`` measures the batch size of the masked passes. Every method reads a trace.
``decomposition``: TEXTSPAN's exact decomposition of a ViT's representation from a trace."""
from . import batching
from .attention import ATTENTION_NEEDS, AttentionTrace, attention_reason
from .decomposition import COMPLETENESS_TOLERANCE, Decomposition, class_directions, decompose
from .trace import Trace, ranked, trace

__all__ = ["ATTENTION_NEEDS", "COMPLETENESS_TOLERANCE", "AttentionTrace", "Decomposition", "Trace", "attention_reason",
           "batching", "class_directions", "decompose", "ranked", "trace"]
