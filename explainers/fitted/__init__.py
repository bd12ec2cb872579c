"""What is fitted to a model and its training data, and kept: the store (memory, cache, shipped
files), the feature cache, seed 000's prototype explainers (KMEx, B4..B1234), their alignment and
accuracy tables and Figure 2's projection, seed 003's Q-SENN layer, and CHILI's head weights (seed 001)."""
from . import store
from .alignment import (
                        Projection,
                        accuracy_models,
                        alignment_models,
                        stored_accuracy_table,
                        stored_alignment_table,
                        stored_projection,
)
from .chili import ChiliWeights, ProbingSet, fitted_chili, probing_set, read_probing_folder
from .prototypes import KIND, PrototypeExplainer, class_map, embeddings, fit_prototypes, model_labels
from .qsenn import (
                        MODES,
                        QSENN,
                        ConceptExplanation,
                        concept_table,
                        feature_order,
                        fit_qsenn,
                        full_mode_refusal,
                        shared_qsenn,
)
from .store import Key, TrainingData, find

__all__ = ["ChiliWeights", "ProbingSet", "fitted_chili", "probing_set", "read_probing_folder",
           "KIND", "MODES", "QSENN", "ConceptExplanation", "Key", "TrainingData", "Projection", "PrototypeExplainer",
           "accuracy_models", "alignment_models", "class_map", "concept_table", "embeddings", "feature_order", "find",
           "fit_prototypes", "fit_qsenn", "full_mode_refusal", "model_labels", "shared_qsenn", "store",
           "stored_accuracy_table", "stored_alignment_table", "stored_projection"]
