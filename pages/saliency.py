"""Saliency: one panel per method, side by side, all from one shared pass."""
from ui.entry import through_app

through_app()  # first: a link on a fresh server reaches app.py before the imports below

import io

import streamlit as st

from explainers import UserInputError, method_info
from explainers.display import SEQUENTIAL, cells, colour_bar, diverging, grid, measured_time, overlay
from explainers.models import BORDER_NOTE
from ui.cache import Failure, explanations
from ui.progress import progress_bar
from ui.settings import method_controls
from ui.sidebar import current_with_image, runnable_methods

st.title("Saliency maps")
st.caption("Where does the network look? Each panel is one method's answer for the same image, class and depth. "
           "All panels come from one forward pass (and one backward when a gradient method is shown).")

selection = current_with_image()
model = selection.model

controls = st.columns([2, 2, 2, 3])
opacity = controls[0].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
cmap = controls[1].selectbox("Colour map", SEQUENTIAL, key="cmap",
                             help="Signed maps with negative values (CAM, HiResCAM, EigenGrad-CAM, LRP, ...) use "
                                  "blue–white–red; a signed map with no negative part is drawn with this map, "
                                  "like the unsigned ones.")
view = controls[2].radio("Show", ["overlay", "cells"], key="view", horizontal=True,
                         format_func=lambda v: {"overlay": "overlay", "cells": "block cells"}[v],
                         help="Block cells: the map at the block's own resolution, before upsampling.")



def _reason(name: str) -> str | None:
    # the sidebar's training images: what the k-means attribution fits on
    return method_info(name).available(model, selection.block, selection.train_source)


runnable, skipped = runnable_methods(selection.methods, _reason)

tunable = [name for name in runnable if method_info(name).settings]  # methods that declare settings of their own
settings = {}
if tunable:
    with st.expander("Settings of " + ", ".join(method_info(name).label for name in tunable)):
        for name in tunable:
            st.markdown(f"###### {method_info(name).label}")
            settings[name] = method_controls(name, st.columns(3))

try:
    with progress_bar():  # filled by the perturbation methods (one masked input per channel)
        maps = explanations(selection.model_key, model, selection.image_data, tuple(runnable), selection.block,
                            selection.target, settings, training=selection.train_source)
except UserInputError as error:  # a method that does not apply here, says why; anything else is a bug
    st.error(f"The maps could not be computed: {error}")
    st.stop()
# A method whose own check failed on this input (LRP's conservation, non-finite values) is not drawn; the others are.
failed = {name: found.reason for name, found in maps.items() if isinstance(found, Failure)}
maps = {name: found for name, found in maps.items() if not isinstance(found, Failure)}
if not maps:
    for name, reason in failed.items():
        st.error(f"{method_info(name).label} is not shown: {reason}")
    st.stop()
first = next(iter(maps.values()))
predicted, probability = selection.top[0]
target_probability = dict(selection.top).get(first.target)
size = max(256, model.input_size[0])
shape = model.block_shapes[selection.block]

header = st.columns([1, 3])
display_image = model.transform.geometry(selection.image)
header[0].image(display_image.resize((size, size)), caption=selection.image_caption,
                width="content")  # a 299- or 380-pixel input shrinks to its column
with header[1]:
    st.markdown(f"#### Predicted **{model.class_name(predicted)}** ({probability:.1%})")
    explained = f"**{model.class_name(first.target)}**" + (f" ({target_probability:.1%})" if target_probability else "")
    st.markdown(f"Explaining class {explained} at **{selection.block}** (`{model.block_paths[selection.block]}`, "
                f"{shape[1]}×{shape[2]} cells of {shape[0]} channels).")
    own = {n for n, e in maps.items() if e.forwards > 1 or (e.backwards and not method_info(n).needs_gradients)}
    st.markdown(f"Shared pass: **{measured_time(first.trace_seconds)}**, 1 forward"
                f"{' + 1 backward' if any(method_info(n).needs_gradients for n in maps) else ''} for all "
                f"{len(maps)} maps" + (f"; {len(own)} of them also ran passes of their own (counted on their "
                                       "panels)." if own else "."))
    if selection.block == "B4" and BORDER_NOTE in model.card:  # the network's own border response, measured
        note = model.card[BORDER_NOTE]
        claim, _, _ = note.partition(":")  # one sentence here: what it is and how to tell; the figures on a click
        test = note.rsplit(". ", 1)[-1]
        st.caption(f"{claim}: {test[:1].lower()}{test[1:]}" if claim != note else note)
        with st.expander("The border pattern, measured"):
            st.caption(note)
    for name, reason in skipped:
        st.caption(f"Not shown — {reason}.")
    for name, reason in failed.items():
        st.warning(f"**{method_info(name).label} is not shown**: {reason}")
    drawn = {name: diverging(result.raw if view == "cells" else result.heatmap, result.signed)
             for name, result in maps.items()}  # signed maps with no negative part are drawn 0 -> 1
    one_signed = [method_info(n).label for n, result in maps.items() if result.signed and not drawn[n]]
    kinds = sorted(set(drawn.values()))
    scales = st.columns(len(kinds) + 1)
    for column, signed in zip(scales, kinds):
        column.image(colour_bar(signed, cmap), width=240)
        column.caption("signed: blue − · 0 · + red (each panel's 99.5th percentile of |value| = ±1)" if signed
                       else "0 → 1: each panel scaled to its own min and max"
                       + (f" (also {', '.join(one_signed)}: signed, but with no negative part)" if one_signed else ""))

panels = []
for name, result in maps.items():
    info = method_info(name)
    if view == "cells":
        picture = cells(result.raw, result.signed, cmap, size)
    else:
        picture = overlay(display_image, result.heatmap, result.signed, cmap, opacity, size)
    panels.append((info.label, picture, result))

columns_per_row = 4
for start in range(0, len(panels), columns_per_row):
    row = st.columns(columns_per_row)
    for column, (label, picture, result) in zip(row, panels[start:start + columns_per_row]):
        passes = f"{result.forwards} fwd / {result.backwards} bwd"
        column.image(picture, width="content")  # its size, or its column's when that is narrower
        column.markdown(f"**{label}**" + ((" · signed" if drawn[result.method] else " · signed, none negative")
                                          if result.signed else ""))
        if method_info(result.method).family == "classic":
            column.caption("Saliency of the image, not of the model: ignores the network and the class.")
        if not result.raw.any():
            column.caption(":orange[Zero everywhere: no location has positive evidence at this depth, "
                           "so the method's ReLU leaves nothing.]")
        where = "with its own passes" if result.method in own else "on the shared pass"
        column.caption(f"{measured_time(result.seconds)} {where} · {passes}")

buffer = io.BytesIO()
sheet = grid([(f"input: {selection.image_caption}", display_image.resize((size, size)))]
             + [(label, picture) for label, picture, _ in panels])
sheet.save(buffer, format="PNG")
st.download_button("Download the grid (PNG)", buffer.getvalue(), file_name=f"protoscope-{selection.block}.png",
                   mime="image/png")

with st.expander("What each method computes, and what it cost"):
    st.dataframe(
        [{"method": method_info(n).label, "family": method_info(n).family,
          "own time": measured_time(e.seconds), "forward passes": e.forwards, "backward passes": e.backwards,
          "what it computes": method_info(n).description, "paper": method_info(n).reference}
         for n, e in maps.items()],
        hide_index=True, width="stretch")
    st.caption("Signed maps with negative values use blue for negative and red for positive evidence, centred on "
               "zero; the others, and signed maps with no negative part, are scaled to [0, 1] per panel, so two maps "
               "equal up to a scale (Grad-CAM and CAM at B4 of a GAP head) look the same.")
