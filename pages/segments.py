"""Segments: the k-means explanation of the encoder (seed 000, sec. 3.3 and Figure 1)."""
from ui.entry import through_app

through_app()  # first: a link on a fresh server reaches app.py before the imports below

import plotly.graph_objects as go
import streamlit as st
from PIL import Image

from explainers.display import DIVERGING, colorize, framed_patch, segment_overlay, segment_palette
from explainers.methods import depth_for
from ui.cache import get_dataset
from ui.prototype_cache import explainer, offer_digits, per_class_control, unavailable
from ui.sidebar import current

st.title("Prototype segments")
st.caption("Every pixel of the chosen depth goes to its nearest k-means prototype (the explanation map); the class "
           "whose prototypes own the most pixels is the prediction. The attribution is h·c_j/||c_j||² at B4, "
           "averaged within segments down to the chosen depth — no gradient. Each segment's prototype is shown by "
           "its nearest training patch, framed in the segment's colour.")

selection = current()
no_image = "Choose an image in the sidebar; if an upload could not be used, the sidebar says why."
problem = selection.load_failure or unavailable(selection) or (None if selection.image else no_image)
if problem:
    st.info(problem)
    offer_digits(selection)
    st.stop()
model = selection.model

controls = st.columns([2, 3, 3])
per_class = per_class_control(controls[0])
figure1 = controls[1].toggle("B4 and B234 side by side (Figure 1)", key="figure1")
if figure1:
    depths = ["B4", "B234"]
else:
    depths = [depth_for(selection.block, model)]
    controls[2].markdown(f"Depth **{depths[0]}**: the sidebar's {selection.block} and every deeper block.")

size = 224 if figure1 else 256
MAX_PATCHES = 12
display_image = model.transform.geometry(selection.image)
train = get_dataset(selection.train_source, "train")

for column, depth in zip(st.columns(len(depths)), depths):
    fitted = explainer(model, selection.train_source, depth, per_class)
    result = fitted.explain(selection.image, selection.target)
    palette = segment_palette(result.segments)
    level = fitted.level_
    with column:
        st.subheader(f"{depth} · {result.segments.shape[0]}×{result.segments.shape[1]} cells")
        pictures = st.columns(3)
        shown = display_image.resize((size, size), Image.Resampling.BILINEAR)
        pictures[0].image(shown, caption="input", width="stretch")
        pictures[1].image(segment_overlay(display_image, result.segments, palette, size, opacity=0.45),
                          caption=f"{len(palette)} segments (explanation map, eq. 9)", width="stretch")
        attribution = colorize(result.attribution, signed=False, cmap=DIVERGING)
        pictures[2].image(Image.fromarray(attribution).resize((size, size), Image.Resampling.NEAREST),
                          caption=f"attribution to class {model.class_name(result.target)} (red high, blue low)",
                          width="stretch")
        colours = ["#c0392b" if c == result.predicted else "#9aa5b1" for c in range(len(result.class_counts))]
        bars = go.Figure(go.Bar(x=[model.class_name(c) for c in range(len(result.class_counts))],
                                y=result.class_counts, marker_color=colours))
        bars.update_layout(height=220, margin=dict(l=10, r=10, t=30, b=10), xaxis_type="category",
                           title=f"pixels per class → predicts {model.class_name(result.predicted)} (eq. 10)")
        st.plotly_chart(bars, width="stretch", key=f"counts-{depth}")
        network = selection.top[0][0] if selection.top else None
        if network is not None and network != result.predicted:
            st.info(f"**The network predicts {model.class_name(network)}; the prototypes' majority at {depth} is "
                    f"{model.class_name(result.predicted)}**: "
                    f"{result.class_counts[result.predicted]} of {int(sum(result.class_counts))} cells are nearest "
                    f"to a prototype of {model.class_name(result.predicted)} and "
                    f"{result.class_counts[network]} to one of {model.class_name(network)}. The network weighs "
                    "every cell by its classifier; the prototypes count the cells, one vote each (eq. 10), so where "
                    "the two disagree the network's evidence is not where most of the image is.",
                    icon=":material/compare_arrows:")

        present = list(palette)  # largest segment first
        shown = present[:MAX_PATCHES]
        st.markdown("**Nearest training patch of each segment's prototype**"
                    + (f" — the {len(shown)} largest of {len(present)} segments" if len(present) > len(shown) else ""))
        for start in range(0, len(shown), 4):
            row = st.columns(4)
            for cell, segment in zip(row, shown[start:start + 4]):
                patch = level.patches[segment]
                training_image, training_label = train[patch.image]
                pixels = int((result.segments == segment).sum())
                cell.image(framed_patch(model.transform.geometry(training_image), patch.box, palette[segment]),
                           width=112)
                cell.caption(f"class {model.class_name(int(level.labels[segment]))} · prototype "
                             f"{segment % fitted.per_class + 1} · {pixels} px · train #{patch.image}")
