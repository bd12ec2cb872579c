"""Controls for the settings a method declares (``explainers.runtime.settings.Setting``): one widget per
setting, with its label, range, default and help, and a key of its own.

    values = method_controls("clustercam", st.columns(3), prefix="cc_")   # {"q": 6, "alpha": 0.5, ...}
    explanations(..., settings={"clustercam": values})

Which widget: a choice is a radio (a select box beyond four choices), a switch a toggle, a bounded
number with a declared step a slider, any other number a number box (empty when the method decides,
e.g. Score-CAM's measured batch size).
"""
from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from explainers import method_info
from explainers.runtime import Setting

RADIO_CHOICES = 4  # more choices than this go in a select box


def setting_key(method: str, setting: str) -> str:
    """The session-state key of a method's setting on the Saliency page: ``lrp_epsilon.epsilon``."""
    return f"{method}.{setting}"


def method_controls(method: str, containers: Sequence[Any] | None = None, prefix: str | None = None) -> dict[str, Any]:
    """Draw one control per declared setting of ``method`` and return {setting: value}.

    ``containers`` (e.g. ``st.columns(n)``) take the controls in turn (default: the page, one under
    the other); keys are ``prefix + name`` when ``prefix`` is given, else ``setting_key(method, name)``.
    """
    declared = method_info(method).settings
    places = list(containers) if containers else [st] * len(declared)
    return {s.name: setting_control(s, prefix + s.name if prefix is not None else setting_key(method, s.name),
                                    places[i % len(places)])
            for i, s in enumerate(declared)}


def setting_control(setting: Setting, key: str, place: Any = st) -> Any:
    """One widget for ``setting`` in ``place`` (the page, a column, an expander); returns its value."""
    common = {"key": key, "help": setting.help}
    if setting.type is bool:
        return place.toggle(setting.title, value=bool(setting.default), **common)
    if setting.type is str:
        choices = list(setting.choices)
        shown = {"format_func": lambda choice: setting.choice_labels.get(choice, choice)}
        if len(choices) <= RADIO_CHOICES:
            return place.radio(setting.title, choices, index=choices.index(setting.default), horizontal=True,
                               **shown, **common)
        return place.selectbox(setting.title, choices, index=choices.index(setting.default), **shown, **common)
    number = setting.type
    low = None if setting.low is None else number(setting.low)
    high = None if setting.high is None else number(setting.high)
    if setting.step is not None and low is not None and high is not None and not setting.optional:
        return place.slider(setting.title, low, high, number(setting.default), number(setting.step), **common)
    return place.number_input(
        setting.title, min_value=low, max_value=high, value=setting.default,
        step=number(setting.step) if setting.step is not None else (1 if number is int else None),
        format=None if number is int else "%g",
        placeholder="automatic" if setting.optional else None, **common)
