"""k-means prototypes of a frozen CNN: KMEx and the multi-depth explainer of seed 000.

"Post-hoc Self-explanation of CNNs" (Boubekki & Clemmensen, 2026):
- KMEx (sec. 3.2): per class, K/C prototypes by k-means on the pooled embeddings z of the
  training set; an image gets the class of its nearest prototype (the argmax of
  exp(-||z - p_k||^2)).
- Multi-depth explainer (sec. 3.3, eq. 6-10): the outputs x^(b) of the blocks used are
  upsampled (bilinear) to the resolution R' of the shallowest one (eq. 7), each pixel
  vector is divided by D_b times its norm and the blocks are concatenated into h-check
  (eq. 8); per class, K/C prototypes by k-means on the rows of h-check of that class's
  images; every pixel goes to its nearest prototype (eq. 9: the explanation map) and the
  class whose prototypes own the most pixels is the prediction (eq. 10).
- Gradient-free attribution (eq. 11 and the three steps after it): at the last block
  att(h_wh, c_j) = h_wh . c_j / ||c_j||^2; one block shallower, upsample the map and give
  each pixel the mean over its segment of the explanation map at that depth.

``fit_prototypes`` returns a fitted ``PrototypeExplainer`` (scikit-learn style: ``__init__``
only stores the settings, ``fit`` validates them and the model and data, learned attributes end
with ``_``), cached on disk by model and dataset fingerprints and settings. Two tiers are read
(``explainers.fitted.store``): ``.cache/prototypes/`` (written by fits on this machine), then
``assets/prototypes/`` (read-only: the built-in digits model's fits at the pages' default
settings, shipped so that the prototype pages open in seconds on a fresh machine;
``python -m explainers.cli prototypes digits`` reproduces them). Both are keyed by the same
fingerprints, so a shipped file is simply never found once the weights, the data or the fitting
code (``PROTOTYPES_VERSION``) change. ``PrototypeRecipe`` is how the store keeps one fitted explainer
in memory for every session and page (``explainers.methods.kmeans_attribution.fitted``).

The modules, in the order a fit uses them:

- ``depths``: the depths ("pooled", "B4", "B34", ...), their blocks, and what is read at each: z (eq. 2),
  h-check (eq. 7-8), the embeddings of a dataset;
- ``kmeans``: stage 2, class-wise k-means on rows read from the feature cache (``explainers.fitted.features``),
  with ``lloyd`` (k-means as matrix products, the default) or scikit-learn's (the shipped files');
- ``classwise``: stages 2 and 3 one class at a time (``ClassTask``, ``fit_class``): its rows formed once,
  clustered, and searched for each prototype's nearest patch among its own class's images (the default,
  ProtoPNet's projection); run on threads here, or as Ray tasks by ``explainers.jobs``;
- ``patches``: the whole-set scan of stage 3, every image for every prototype (the shipped files');
- ``explainer``: the estimator (``PrototypeExplainer``: fit, predict, explain, the attribution, save and load);
- ``recipe``: its key and file name in the store and the disk tiers, and ``fit_prototypes``.

A dataset's classes are matched to the model's by name (``explainers.fitted.checks.class_map``).
"""
from .classwise import ClassLevel, ClassRunner, ClassTask, fit_class
from .depths import DEPTHS, depth_blocks, embeddings, hcheck, image_batches, suffix_depths
from .explainer import Level, PrototypeExplainer, PrototypeExplanation
from .patches import Patch, receptive_box
from .recipe import PROTOTYPES_KIND, PROTOTYPES_VERSION, SHIPPED, PrototypeRecipe, cache_key, fit_prototypes

__all__ = ["DEPTHS", "PROTOTYPES_KIND", "PROTOTYPES_VERSION", "SHIPPED", "ClassLevel", "ClassRunner", "ClassTask",
           "Level", "Patch", "PrototypeExplainer",
           "PrototypeExplanation", "PrototypeRecipe", "cache_key", "depth_blocks", "embeddings", "fit_class",
           "fit_prototypes",
           "hcheck", "image_batches", "receptive_box", "suffix_depths"]
