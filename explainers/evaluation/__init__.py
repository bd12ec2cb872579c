"""Which map to trust: evaluations of the explanation methods (issue 13).

Sanity checks by weight randomisation (Adebayo et al. 2018): ``randomization_check``.
"""
from .sanity import (GROUPS, MODES, THRESHOLD, RandomizationResult, layer_groups, randomization_check,
                     randomized_models)

__all__ = ["GROUPS", "MODES", "THRESHOLD", "RandomizationResult", "layer_groups", "randomization_check",
           "randomized_models"]
