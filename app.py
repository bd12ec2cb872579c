"""Protoscope: the entry point. Declares the pages, draws the shared sidebar, runs the chosen page."""
import streamlit as st

from ui.sidebar import sidebar
from ui.style import style

st.set_page_config(page_title="Protoscope", page_icon=":material/biotech:", layout="wide")
style()

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/saliency.py", title="Saliency", icon=":material/local_fire_department:", url_path="saliency"),
    st.Page("pages/clustercam.py", title="Cluster-CAM", icon=":material/scatter_plot:", url_path="clustercam"),
    st.Page("pages/segments.py", title="Segments", icon=":material/grid_view:", url_path="segments"),
    st.Page("pages/prototypes.py", title="Prototypes", icon=":material/hub:", url_path="prototypes"),
    st.Page("pages/concepts.py", title="Concepts", icon=":material/category:", url_path="concepts"),
    st.Page("pages/evaluation.py", title="Evaluation", icon=":material/fact_check:", url_path="evaluation"),
    st.Page("pages/sanity.py", title="Sanity checks", icon=":material/shuffle:", url_path="sanity"),
    st.Page("pages/compare.py", title="Side by side", icon=":material/compare:", url_path="compare"),
]
navigation = st.navigation(pages)
sidebar()
navigation.run()
