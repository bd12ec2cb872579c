"""Q-SENN: a sparse, ternary decision layer over a few shared features (seed 003).

"Q-SENN: Quantized Self-Explaining Neural Networks" (Norrenbrock, Rudolph & Rosenhahn, 2024),
built on the SLDD-Model (Norrenbrock et al., 2022):

- Features f: the chosen block's feature maps M, average-pooled (the dense layer's input for a
  GAP + linear head). They are standardised with the training mean and standard deviation
  before any fitting, as the paper's code does (glm-saga assumes standardised input), so the
  layer reads f* = (f[selected] - mean) / std.
- Feature selection (SLDD-Model): n_f* features chosen in a supervised way, in the order they
  enter a group-lasso regularisation path of the multinomial (softmax) GLM over all features.
- The sparse layer W_sp: the elastic-net regularisation path of the multinomial GLM over the n_f*
  selected features (glm-saga, the paper's solver), and its lowest-regularisation solution.
- Quantisation (eq. 3-5): epsilon = the n_w-th largest |W_sp| (n_w = 5 * n_classes), alpha =
  the mean of the kept magnitudes, W_Q in {-alpha, 0, +alpha}; logits = alpha * W_1 f* + b.
- Full Q-SENN (Figure 2, "Q-SENN" paragraph): N iterations of (layer as above; fine-tune the
  backbone with the layer fixed, with the Feature Diversity Loss, eq. 2) at a decaying learning
  rate, on a copy of the network.
- diversity@5 (eq. 6): the local diversity of the five highest-weighted feature maps of the
  predicted class.

Why glm-saga rather than scikit-learn's elastic-net path: the layer is a *multinomial* GLM (softmax
cross-entropy, the loss the network is trained with); scikit-learn's ``enet_path`` fits least
squares to the one-hot targets, another model with other sparsity patterns, and its logistic
elastic net has no path function. glm-saga is what the paper uses, pure PyTorch (0.1.2, pinned),
and its SAGA solver (``train_saga``) takes a warm start, so the path is walked here one lambda at a
time: each step is one job of the compute thread, the progress bar moves per lambda, and a path
stops as soon as it has what it is walked for (n_f* features; more than n_w weights).

The modules: ``solver`` (the paths, the selection, W_sp, glm-saga5, eq. 3-5), ``diversity`` (eq. 6 and eq. 2),
``tuning`` (full mode's fine-tuning of a copy), ``layer`` (the estimator, ``QSENN``), ``table`` (Table 1 and the
order of W_Q's columns) and ``recipe`` (its key in the store, ``fit_qsenn``, ``shared_qsenn``).
"""
from .diversity import diversity_at_5, diversity_per_image, feature_diversity_loss
from .layer import QSENN, QSENN_MODES, ConceptExplanation, FeatureEvidence, cached_block_features
from .recipe import QSENN_KIND, QSENN_VERSION, QSENNRecipe, fit_qsenn, shared_qsenn
from .solver import quantise
from .table import (
           CONCEPT_SPLITS,
           concept_table,
           concept_table_filename,
           feature_order,
           stored_concept_table,
           write_concept_table,
)
from .tuning import block_features, full_mode_refusal

__all__ = ["CONCEPT_SPLITS", "QSENN",
           "QSENN_KIND", "QSENN_MODES", "QSENN_VERSION", "ConceptExplanation", "FeatureEvidence",
           "QSENNRecipe", "block_features", "cached_block_features", "concept_table", "concept_table_filename",
           "diversity_at_5",
           "diversity_per_image", "feature_diversity_loss", "feature_order", "fit_qsenn", "full_mode_refusal",
           "quantise", "shared_qsenn", "stored_concept_table", "write_concept_table"]
