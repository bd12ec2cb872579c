"""The one shared pass: ``trace`` runs one forward (and at most one backward) with hooks on every
block, and ``batching`` measures the batch size of the masked passes. Every method reads a trace."""
from . import batching
from .attention import ATTENTION_NEEDS, AttentionTrace, attention_reason
from .trace import Trace, ranked, trace

__all__ = ["ATTENTION_NEEDS", "AttentionTrace", "Trace", "attention_reason", "batching", "ranked", "trace"]
