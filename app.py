"""Protoscope: the entry point. Declares the pages, draws the shared sidebar, runs the chosen page.

The navigation is declared before anything heavy is imported: on a freshly started server the first
run imports torch and the models (seconds), and a classroom opening a shared link sees the page
titles and a loading note at once instead of a blank page under Streamlit's raw file names.
"""
import sys

import streamlit as st

from ui.style import style  # Streamlit alone

st.set_page_config(page_title="Protoscope", page_icon=":material/biotech:", layout="wide")
style()

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/saliency.py", title="Saliency", icon=":material/local_fire_department:", url_path="saliency"),
    st.Page("pages/heads.py", title="Heads", icon=":material/view_module:", url_path="heads"),
    st.Page("pages/clustercam.py", title="Cluster-CAM", icon=":material/scatter_plot:", url_path="clustercam"),
    st.Page("pages/segments.py", title="Segments", icon=":material/grid_view:", url_path="segments"),
    st.Page("pages/prototypes.py", title="Prototypes", icon=":material/hub:", url_path="prototypes"),
    st.Page("pages/concepts.py", title="Concepts", icon=":material/category:", url_path="concepts"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/fact_check:", url_path="evaluation"),
    st.Page("pages/sanity.py", title="Sanity checks", icon=":material/shuffle:", url_path="sanity"),
    st.Page("pages/compare.py", title="Side by side", icon=":material/compare:", url_path="compare"),
]
navigation = st.navigation(pages)

starting = st.empty()
if "ui.sidebar" not in sys.modules:  # the server's first run: the libraries and the model are still to load
    with starting.container():
        st.title(f"Protoscope · {navigation.title}")
        st.info("Starting: loading PyTorch and the model (a few seconds, once per server)…",
                icon=":material/hourglass_top:")

from ui.sidebar import sidebar  # noqa: E402  (torch, the models: after the first paint)

sidebar()
starting.empty()
navigation.run()
