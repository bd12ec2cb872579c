"""A progress bar that heavy library work (Score-CAM, Ablation-CAM, Cluster-CAM) fills while it runs."""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Iterator

import streamlit as st

from explainers.runtime import reporting


@contextmanager
def progress_bar() -> Iterator[None]:
    """Show ``st.progress`` for the library work done in the ``with`` body, and remove it afterwards.

    The work usually runs inside an ``st.cache_data`` function, which records every element
    call made during it to replay on a cache hit; a bar created outside cannot be replayed.
    The updates therefore run in the context of the page (captured here, outside the cached
    function), where nothing is recorded. A cache hit reports nothing and draws no bar.
    """
    slot = st.empty()
    page = contextvars.copy_context()

    def update(fraction: float, text: str) -> None:
        page.run(slot.progress, fraction, text=text)

    try:
        with reporting(update):
            yield
    finally:
        slot.empty()
