"""Streamlit helpers shared by the pages: cached loaders and the sidebar. No business logic."""
