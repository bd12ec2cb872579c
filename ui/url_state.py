"""The view in the URL: which widget keys are mirrored in the query string, and how each is written.

On a session's first run ``seed_from_query`` starts the widgets from the URL; after every run
``write_query`` writes them back, so a URL reproduces the view.

A link's value that cannot be used (a hand-edited, truncated or stale link: ``block=B9``,
``per_class=999``, a method or a model this server does not have, an image number past the end)
is never dropped in silence, or the person opening the link would take another view for the
sender's: whoever checks the value (the sidebar, a page) calls ``accepted`` or ``refused``, and
one warning at the top of the page lists every value not used, why, and what is shown instead,
until it is dismissed.
"""
from __future__ import annotations

import re

import streamlit as st

__all__ = ["QUERY_KEYS", "accepted", "decode", "encode", "notice_area", "refused", "seed_from_query",
           "write_query"]

# Widget keys mirrored in the URL, with how each is written there; page widgets may be listed too.
QUERY_KEYS = {"model": "str", "random_weights": "bool", "source": "str", "split": "str", "cls": "str",
              "index": "int", "target_mode": "str", "target": "int", "block": "str", "methods": "list",
              "per_class": "int", "figure1": "bool"}
# The Sanity checks page's controls.
QUERY_KEYS.update({"sanity_mode": "str", "sanity_images": "int", "sanity_keep_statistics": "bool"})
QUERY_KEYS["model_name"] = "str"  # a torchvision or timm:name typed in the sidebar, which the model list lacks
QUERY_KEYS["clip_classes"] = "str"  # a CLIP model's zero-shot classes, typed comma-separated
OMITTED_WHEN_EMPTY = {"model_name", "clip_classes"}  # an empty text box is its default: no key in the URL for it
INTEGER = re.compile(r"[+-]?\d+")
NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def decode(kind: str, text: str) -> object | None:
    """The value ``text`` stands for in the URL (``kind``: int, float, bool, list or str), or None
    when it is not one (``index=abc``)."""
    if kind == "int":
        return int(text) if INTEGER.fullmatch(text.strip()) else None
    if kind == "float":
        return float(text) if NUMBER.fullmatch(text.strip()) else None
    if kind == "bool":
        return {"1": True, "0": False}.get(text.strip())
    if kind == "list":
        return [item for item in text.split(",") if item]
    return text


UNREADABLE = {"int": "not a whole number", "float": "not a number", "bool": "not 0 or 1"}
PENDING = "_url_pending"  # {key: text}: values seeded from the URL that nobody has checked yet
NOTES = "_url_notes"  # [(key, text, reason, instead)]: values of the URL not used
NOTICE = "_url_notice"  # this run's placeholder for the warning (made by ``notice_area``)


def encode(kind: str, value: object) -> str:
    """``value`` as written in the URL (the inverse of ``decode``)."""
    if kind == "bool":
        return "1" if value else "0"
    if kind == "list":
        return ",".join(map(str, value))  # type: ignore[call-overload]
    return str(value)


def seed_from_query() -> None:
    """On a session's first run, start from the view the URL describes."""
    if st.session_state.get("_seeded"):
        return
    st.session_state["_seeded"] = True
    pending: dict[str, str] = {}
    notes: list[tuple[str, str, str, str]] = []
    for key, kind in QUERY_KEYS.items():
        if key in st.query_params:
            text = st.query_params[key]
            value = decode(kind, text)
            if value is None:  # a malformed value in a shared link: keep the default, and say so
                notes.append((key, text, UNREADABLE.get(kind, "not readable"), "the default"))
            else:
                st.session_state[key] = value
                pending[key] = text
    st.session_state[PENDING] = pending
    st.session_state[NOTES] = notes


def accepted(key: str) -> None:
    """The URL's value of ``key`` (if it gave one) is used: a later reset of it is the person's doing."""
    st.session_state.get(PENDING, {}).pop(key, None)


def refused(key: str, reason: str, instead: str) -> bool:
    """The URL's value of ``key`` is not used, because of ``reason``; ``instead`` is what is shown.

    Adds it to the page's warning and returns True when the value came from the link (checked for
    the first time); returns False, adding nothing, when it did not (the person's own change made it
    stale: the caller says so itself if it must).
    """
    text = st.session_state.get(PENDING, {}).pop(key, None)
    if text is None:
        return False
    st.session_state.setdefault(NOTES, []).append((key, text, reason, instead))
    _draw_notes()
    return True


def notice_area() -> None:
    """Keep a place at the top of the page for the warning about the link's values not used, and
    draw the ones known so far; call once per run, before anything else is drawn in the main area."""
    st.session_state[NOTICE] = st.empty()
    _draw_notes()


def _dismiss() -> None:
    st.session_state[NOTES] = []


def _draw_notes() -> None:
    notes = st.session_state.get(NOTES)
    place = st.session_state.get(NOTICE)
    if not notes or place is None:
        return
    lines = "\n".join(f"- `{key}={text}`: {reason}; showing {instead} instead." for key, text, reason, instead in notes)
    head = "A value of this link was not used" if len(notes) == 1 else f"{len(notes)} values of this link were not used"
    with place.container():
        st.warning(f"**{head}**, so this view may differ from the one that was shared:\n\n" + lines,
                   icon=":material/link_off:")
        # Keyed by the number of notes: the warning is redrawn when a page adds one, in the same run.
        st.button("Dismiss", key=f"_url_notes_seen_{len(notes)}", on_click=_dismiss)


def write_query() -> None:
    """Mirror the widgets of ``QUERY_KEYS`` in the URL (only when something changed)."""
    values = {key: encode(kind, st.session_state[key]) for key, kind in QUERY_KEYS.items()
              if key in st.session_state and not (key in OMITTED_WHEN_EMPTY and st.session_state[key] == "")}
    if dict(st.query_params) != values:
        st.query_params.from_dict(values)
