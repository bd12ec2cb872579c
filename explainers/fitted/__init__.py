"""What is fitted to a model and its training data, and kept: the store (memory, cache, shipped
files), the feature cache, seed 000's prototype explainers (KMEx, B4..B1234), their alignment and
accuracy tables and Figure 2's projection, seed 003's Q-SENN layer, and CHILI's head weights (seed 001).

Its modules, from the bottom: ``store`` (keys, the disk tiers, the one store of the process), ``features``
(block outputs of a dataset, on disk), ``checks`` (the model, the data and their classes, shared by both
estimators), ``prototypes/`` (KMEx and the multi-depth explainer), ``alignment`` (their tables and Figure 2),
``qsenn/`` (the Q-SENN layer) and ``chili`` (CHILI's head weights from a probing set with masks)."""
from . import store
from .alignment import (
                        Projection,
                        accuracy_models,
                        alignment_models,
                        stored_accuracy_table,
                        stored_alignment_table,
                        stored_projection,
)
from .checks import NotFittedError, class_map, folder_class_names, model_labels
from .chili import ChiliWeights, ProbingSet, fitted_chili, probing_set, read_probing_folder
from .prototypes import PROTOTYPES_KIND, PrototypeExplainer, embeddings, fit_prototypes
from .qsenn import (
                        CONCEPT_SPLITS,
                        QSENN,
                        QSENN_MODES,
                        ConceptExplanation,
                        concept_table,
                        feature_order,
                        fit_qsenn,
                        full_mode_refusal,
                        shared_qsenn,
                        stored_concept_table,
)
from .store import Key, TrainingData, find

__all__ = ["CONCEPT_SPLITS", "PROTOTYPES_KIND", "QSENN", "QSENN_MODES", "ChiliWeights", "ConceptExplanation", "Key",
           "NotFittedError", "ProbingSet", "Projection", "PrototypeExplainer", "TrainingData", "accuracy_models",
           "alignment_models", "class_map", "concept_table", "embeddings", "feature_order", "find", "fit_prototypes",
           "fit_qsenn", "fitted_chili", "folder_class_names", "full_mode_refusal", "model_labels", "probing_set",
           "read_probing_folder", "shared_qsenn", "store", "stored_accuracy_table", "stored_alignment_table",
           "stored_concept_table", "stored_projection"]
