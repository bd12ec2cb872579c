"""Dataset-scale jobs: explain, evaluate, fit prototypes and check sanity over whole folders, in batches, on
this process (the default, and the reference) or on a Ray cluster; resumable, each output written whole.
The ``protoscope`` command (``explainers.cli``) is their front; results go to the same files and caches
whichever engine ran them.

    from explainers.jobs import EngineOptions, explain_folder
    explain_folder("digits", ["digits/"], ["gradcam", "cam"], Path("out"), options=EngineOptions("ray"))
"""
from .classes import ray_class_runner
from .commands import CSV_COLUMNS, JobReport, evaluate_folder, explain_folder, fit_folder, sanity_folder
from .engines import ENGINES, EngineOptions, JobInterrupted, LocalEngine, RayEngine, open_engine
from .evaluations import gather, load_part, save_part
from .features import feature_names, ray_feature_pass
from .outputs import OutputFolder
from .sources import ImageRef, list_images, load_ref
from .work import EvaluationPart, ExplainedImage, ModelWorker, explain_images

__all__ = ["CSV_COLUMNS", "ENGINES", "EngineOptions", "EvaluationPart", "ExplainedImage", "ImageRef", "JobInterrupted",
           "JobReport", "LocalEngine", "ModelWorker", "OutputFolder", "RayEngine", "evaluate_folder", "explain_folder",
           "explain_images", "feature_names", "fit_folder", "gather", "list_images", "load_part", "load_ref",
           "open_engine", "ray_class_runner", "ray_feature_pass", "sanity_folder", "save_part"]
