"""Heavy parts of a page run when the person asks for them, so that every page's first view takes seconds
(issue 21): the page draws its controls and says what would run, and the work starts with a button.

    kept("eval_steps", 20, [10, 20, 50])  # before each control that the result depends on
    steps = st.select_slider("Steps", [10, 20, 50], key="eval_steps")
    if not asked_for("evaluation", key, "Run the evaluation", lambda: what_would_run, button_key="eval_run"):
        st.stop()                     # the first view: the controls, what would run, the button
    result = cached_computation(...)  # asked for: computed once (st.cache_data), shown again on every rerun

What was asked for is remembered for the session under its ``key`` (everything the result depends on), so a
rerun, or coming back from another page, shows the result again without asking twice. Changing a setting
changes the key: the page says that these settings have not been run yet, and shows the button again.

Streamlit forgets a widget's value when its page is not drawn; ``kept`` gives the page's controls back the
values they had, so that coming back finds the same settings, hence the same key and the same result.
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Hashable

import streamlit as st

__all__ = ["asked_for", "kept"]

ASKED = "_asked_for"  # session state: page name -> the keys of what was asked for there in this session
KEPT = "_page_kept_"  # session state: the prefix of a page control's last value


def asked_for(page: str, key: Hashable, label: str, what: Callable[[], str], button_key: str) -> bool:
    """True when ``key`` was asked for on ``page`` in this session (the caller then computes, from its cache,
    and shows the result); else draws ``what()`` (what would run, Markdown; called only then) and a button
    ``label`` that asks for it, and returns False (the caller stops the page there)."""
    asked: set = st.session_state.setdefault(ASKED, {}).setdefault(page, set())
    if key in asked:
        return True
    note = (" These settings have not been run in this session yet (earlier runs come back when their settings "
            "do)." if asked else " Nothing is computed until you press it; the result is then kept for the session.")
    st.info(what() + note, icon=":material/play_circle:")
    # Asked for before the next run starts (a callback), so that run computes and draws no button.
    st.button(label, key=button_key, type="primary", on_click=asked.add, args=(key,))
    return False


def kept(key: str, default: Any, valid: Callable[[Any], bool] | Collection[Any] | None = None) -> None:
    """Call before drawing the widget ``key``, which then takes no default of its own (its value is in the
    session state): it keeps the value it had when its page was last drawn, else starts at ``default``. A
    value that ``valid`` refuses (a function, or the widget's options), such as a count past the end of a
    smaller set, starts at ``default`` instead."""
    if key in st.session_state:  # drawn on the previous run of this page
        value = st.session_state[key]
    else:  # the page was not drawn on the previous run: Streamlit dropped the value
        value = st.session_state.get(KEPT + key, default)
    if valid is not None and not (valid(value) if callable(valid) else value in valid):
        value = default
    if key not in st.session_state or st.session_state[key] != value:  # a widget's own value stays its own
        st.session_state[key] = value
    st.session_state[KEPT + key] = value
