"""The first statement of every page: hand a run that skipped app.py over to it, before anything heavy.

With a ``pages/`` folder beside the entry script, a fresh Streamlit server serves its first requests in
its legacy multipage mode until ``st.navigation`` has run once: it lists the page files by their raw
names (``app``, ``clustercam``, ...) and runs a deep link's page file on its own, without app.py. That
page's imports (torch, the models: seconds on a cold server) ran before ``ui.sidebar.current`` noticed
and handed over, so a classroom opening a shared link saw a blank page under raw file names for that
long. Called first, before the page's other imports, the hand-over costs nothing: this module imports
Streamlit alone. (``ui.sidebar.current`` keeps the same check for a page that does not call this.)
"""
from __future__ import annotations

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

__all__ = ["through_app"]

THROUGH_ENTRY = "_through_entry"  # set by the sidebar on every run that went through app.py
HANDED_OVER = "_handed_over"  # one rerun at most in a row, so a page run alone cannot loop


def through_app() -> None:
    """Rerun through app.py unless this run went through it (its sidebar has run); see the module's note."""
    if st.session_state.get(THROUGH_ENTRY):
        return
    PagesManager.uses_pages_directory = False  # the server leaves the legacy mode for every later run
    if not st.session_state.get(HANDED_OVER):
        st.session_state[HANDED_OVER] = True
        st.rerun()
