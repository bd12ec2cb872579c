"""Page-wide CSS the app adds to Streamlit's own: every chosen method visible in the sidebar, and a
lost connection to the server said in words."""
from __future__ import annotations

import streamlit as st

# Streamlit 1.67 caps a multiselect's chips at about five rows and scrolls the rest out of
# sight (Eigen-CAM and EigenGrad-CAM of the eight defaults): let the box grow with its chips.
CHIPS = """
[data-testid="stMultiSelect"] div[role="group"]:has(> [data-testid="stMultiSelectTagsContainer"]),
[data-testid="stMultiSelectTagsContainer"] { max-height: none !important; overflow: visible !important; }
"""

# The app's root carries the websocket's state (data-test-connection-state); while it is not
# CONNECTED, Streamlit greys the stale page, shows a small "Connecting" in a corner and, after a
# while, a dismissable dialog telling a developer to restart it in a terminal. A banner along the
# bottom (clear of that dialog) says to the user what happened and what to do, for as long as the
# connection is down. (This style arrives with the first
# run, so the very first connection of a page, before any content, is not covered: nothing is
# shown then that could be mistaken for a live page.)
LOST = '[data-testid="stApp"][data-test-connection-state="{state}"]::before'
BANNER = """
{reconnecting}, {lost} {{
  position: fixed; bottom: 0; left: 0; right: 0; z-index: 1000000; padding: 0.9rem 1.5rem; pointer-events: none;
  font-size: 1.05rem; font-weight: 600; line-height: 1.4; text-align: center; white-space: pre-wrap;
  color: #ffffff; background: #b42318; box-shadow: 0 -2px 8px rgba(0, 0, 0, 0.3);
}}
{reconnecting} {{
  content: "Connection to the Protoscope server lost: trying to reconnect. The page may be out of date and cannot \\
change until it is back.\\A If this message stays, reload the page; if that fails, the server has stopped \\
— ask whoever runs it.";
}}
{lost} {{
  content: "The Protoscope server cannot be reached. Reload the page once it is running again.";
}}
""".format(reconnecting=", ".join(LOST.format(state=s) for s in ("PINGING_SERVER", "CONNECTING")),
           lost=LOST.format(state="DISCONNECTED_FOREVER"))


def style() -> None:
    """Add the app's CSS to the page (no visible element; call once per run, from app.py)."""
    st.html(f"<style>{CHIPS}{BANNER}</style>")
