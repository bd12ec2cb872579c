"""The one shared pass: ``trace`` runs one forward (and at most one backward) with hooks on every
block, and ``batching`` measures the batch size of the masked passes. Every method reads a trace."""
from . import batching
from .trace import Trace, ranked, trace

__all__ = ["Trace", "batching", "ranked", "trace"]
