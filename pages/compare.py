"""Compare: a CNN and a transformer (any two models of the same input kind) side by side on one image, with the
methods they share, each panel captioned with the model, the block, the method's passes and its time."""
import streamlit as st

from explainers import UserInputError, method_info
from explainers.display import SEQUENTIAL, measured_time, overlay
from ui.cache import Failure, explanations, top_classes
from ui.compare import compared_image, load_side, model_options, same_input_kind, shared_methods
from ui.sidebar import current

st.title("Side by side")
st.caption("Two networks, one image: where does each look? By default the digits ResNet (a CNN) and the digits ViT "
           "(a transformer), each explaining its own predicted class at the same depth name, which is each model's "
           "own module (the table under each model says which).")

selection = current()
options = model_options(selection)
picks = st.columns(2)
chosen = []
for column, key, default in ((picks[0], "compare_left", "digits"), (picks[1], "compare_right", "digits_vit")):
    if st.session_state.get(key) not in options:
        st.session_state[key] = default if default in options else options[0]
    chosen.append(column.selectbox("Left model" if key.endswith("left") else "Right model", options, key=key))
try:
    left, right = (load_side(name, selection) for name in chosen)
    same_input_kind(left.model, right.model)
except UserInputError as error:  # a model that cannot load, or two of different input kinds
    st.error(str(error))
    st.stop()

image, data, caption = compared_image(selection, left.model.sample_dataset)
common = [b for b in left.model.blocks if b in right.model.blocks]
controls = st.columns([2, 2, 2])
block = controls[0].radio("Depth", common, index=common.index(selection.block) if selection.block in common
                          else len(common) - 1, horizontal=True, key="compare_block")
opacity = controls[1].slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="compare_opacity")
cmap = controls[2].selectbox("Colour map", SEQUENTIAL, key="compare_cmap")
shared, left_out = shared_methods(left.model, right.model, block, selection.train_source)
chosen_methods = st.multiselect("Methods both models take", shared, default=shared, key="compare_methods",
                                format_func=lambda m: method_info(m).label)
for name, reason in left_out:
    st.caption(f"Not offered — {method_info(name).label}: {reason}.")
if not chosen_methods:
    st.info("Choose at least one method both models take.")
    st.stop()

st.image(image.resize((160, round(160 * image.height / image.width))))
st.caption(f"Image: {caption}")
sides = []
for side in (left, right):
    top = top_classes(side.key, side.model, data, image=image)
    try:
        maps = explanations(side.key, side.model, data, tuple(chosen_methods), block, None)
    except UserInputError as error:
        st.error(f"{side.name}: the maps could not be computed: {error}")
        st.stop()
    sides.append((side, top, maps))

size = 224
header = st.columns(2)
for column, (side, top, maps) in zip(header, sides):
    model = side.model
    predicted, probability = top[0]
    shape = model.block_shapes[block]
    first = next(iter(maps.values()))
    column.markdown(f"#### {side.name} ({model.family})")
    column.markdown(f"Predicts **{model.class_name(predicted)}** ({probability:.1%}); {block} = "
                    f"`{model.block_paths[block]}`, {shape[1]}×{shape[2]} cells of {shape[0]} channels"
                    + ("" if model.transformer is None else " (patch tokens on their grid)") + ".")
    if not isinstance(first, Failure):
        column.caption(f"Shared pass: {measured_time(first.trace_seconds)}, 1 forward + 1 backward.")

for name in chosen_methods:
    row = st.columns(2)
    for column, (side, top, maps) in zip(row, sides):
        result = maps[name]
        label = f"**{method_info(name).label}** · {side.name} · {block}"
        if isinstance(result, Failure):
            column.markdown(label)
            column.warning(result.reason)
            continue
        display = side.model.transform.geometry(image)
        column.image(overlay(display, result.heatmap, result.signed, cmap, opacity, size), width="content")
        column.markdown(label + (" · signed" if result.signed else ""))
        explained = side.model.class_name(int(result.target))
        column.caption(f"explains {explained} · {result.forwards} fwd / {result.backwards} bwd · "
                       f"{measured_time(result.seconds)}"
                       + (" · zero everywhere at this depth" if not result.raw.any() else ""))
