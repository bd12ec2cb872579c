"""Start the dashboard warm: ``python -m ui.serve [streamlit options]`` (what ``make run`` does).

``streamlit run app.py`` runs nothing before the first visitor, who then waits for PyTorch, the library
(scikit-learn, torchvision, ...) and the default model to load: 5-17 s on two cores, on the page a class
opens first. Here the server starts at once and, in a thread beside it, the same imports and the default
model's load run before anyone asks (into the very caches the pages use: ``st.cache_resource`` is one per
process), so the first visitor finds them done, or waits only for the rest of them.
"""
from __future__ import annotations

import importlib
import sys
import threading
from pathlib import Path

from streamlit.web import cli as streamlit_cli

DEFAULT_MODEL = "efficientnet_lite0"  # the sidebar's default: the built-in ImageNet model


def warm_up() -> None:
    """Import what every page imports, load the default model as the sidebar will ask for it, and time its
    masked passes' batch sizes (``explainers.engine.batching``: measured once per model and process, on the
    first view of Cluster-CAM or Evaluation otherwise)."""
    importlib.import_module("ui.sidebar")  # torch, the library, the datasets
    cache = importlib.import_module("ui.cache")
    runtime = importlib.import_module("explainers.runtime")
    engine = importlib.import_module("explainers.engine")
    try:
        model = cache.get_model(DEFAULT_MODEL, False, str(runtime.default_device()))
    except runtime.UserInputError:  # its weights are missing: the sidebar will say so to the visitor
        return
    engine.batching.batch_size(model)


def main(arguments: list[str]) -> None:
    """Start the warm-up thread, then Streamlit's server on app.py with ``arguments``."""
    threading.Thread(target=warm_up, name="protoscope-warm-up", daemon=True).start()
    sys.argv = ["streamlit", "run", str(Path(__file__).resolve().parents[1] / "app.py"), *arguments]
    streamlit_cli.main()


if __name__ == "__main__":
    main(sys.argv[1:])
