"""Protoscope: the entry point. Declares the pages, draws the shared sidebar, runs the chosen page."""
import streamlit as st

from ui.sidebar import sidebar

st.set_page_config(page_title="Protoscope", page_icon=":material/biotech:", layout="wide")

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/dashboard:", default=True),
    st.Page("pages/saliency.py", title="Saliency", icon=":material/local_fire_department:", url_path="saliency"),
]
navigation = st.navigation(pages)
sidebar()
navigation.run()
