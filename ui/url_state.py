"""The view in the URL: which widget keys are mirrored in the query string, and how each is written.

On a session's first run ``seed_from_query`` starts the widgets from the URL; after every run
``write_query`` writes them back, so a URL reproduces the view. A value that cannot be read
(a hand-edited or truncated link) is left out, and the widget keeps its default.
"""
from __future__ import annotations

import re

import streamlit as st

__all__ = ["QUERY_KEYS", "decode", "encode", "seed_from_query", "write_query"]

# Widget keys mirrored in the URL, with how each is written there; page widgets may be listed too.
QUERY_KEYS = {"model": "str", "random_weights": "bool", "source": "str", "split": "str", "cls": "str",
              "index": "int", "target_mode": "str", "target": "int", "block": "str", "methods": "list",
              "per_class": "int", "figure1": "bool"}
QUERY_KEYS.update({"sanity_mode": "str", "sanity_images": "int", "sanity_keep_statistics": "bool"})  # the Sanity checks page
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
        return text == "1"
    if kind == "list":
        return [item for item in text.split(",") if item]
    return text


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
    for key, kind in QUERY_KEYS.items():
        if key in st.query_params:
            value = decode(kind, st.query_params[key])
            if value is not None:  # a malformed value in a shared link: keep the default
                st.session_state[key] = value


def write_query() -> None:
    """Mirror the widgets of ``QUERY_KEYS`` in the URL (only when something changed)."""
    values = {key: encode(kind, st.session_state[key]) for key, kind in QUERY_KEYS.items()
              if key in st.session_state and not (key in OMITTED_WHEN_EMPTY and st.session_state[key] == "")}
    if dict(st.query_params) != values:
        st.query_params.from_dict(values)
