"""Heads: TEXTSPAN's layer x head decomposition of the chosen class's logit, each head's map, and CHILI's
object and context weights per head (Gandelsman et al. 2024; seed 001)."""
import numpy as np
import streamlit as st
import torch

from explainers import UserInputError, method_info
from explainers.display import overlay
from explainers.methods import textspan_reason
from explainers.runtime import upsample
from ui.cache import Failure, explanations
from ui.heads import clicked_head, head_grid, head_map, remainder_rows
from ui.progress import progress_bar
from ui.settings import method_controls
from ui.sidebar import current_with_image

st.title("Attention heads")
st.caption("TEXTSPAN writes the representation as a sum of per-layer, per-head, per-token terms (the final "
           "norms linearised with their actual std, so the terms add up exactly) and scores each against the "
           "class's column of the classifier. CHILI weighs each head by how well its map finds the object.")

selection = current_with_image()
model = selection.model
reason = textspan_reason(model)
if reason:
    st.info(f"This page needs a Vision Transformer with global attention: {reason}.")

    def _switch() -> None:
        st.session_state["model"] = "digits_vit"
        st.session_state["model_name"] = ""

    st.button("Switch to digits_vit", on_click=_switch, key="heads_switch")
    st.stop()

with st.expander("CHILI's settings"):
    chili_settings = method_controls("chili", st.columns(4))
try:
    with progress_bar():
        found = explanations(selection.model_key, model, selection.image_data, ("textspan", "chili"),
                             selection.block, selection.target, {"chili": chili_settings},
                             training=selection.train_source)
except UserInputError as error:  # a method that does not apply here, says why
    st.error(f"The heads could not be decomposed: {error}")
    st.stop()

textspan = found["textspan"]
if isinstance(textspan, Failure):
    st.error(f"TEXTSPAN is not shown: {textspan.reason}")
    st.stop()
extras = textspan.extras
scores, maps = np.asarray(extras["head_scores"]), np.asarray(extras["head_maps"])
total = float(extras["logit_minus_bias"]) or 1.0
label = model.class_name(textspan.target)
st.subheader(f"Each head's share of the logit of {label}")
left, right = st.columns([3, 2])
with left:
    event = st.plotly_chart(head_grid(scores / total, "share of logit - bias"), on_select="rerun",
                            selection_mode="points", key="heads_grid", use_container_width=True)
with right:
    st.dataframe(remainder_rows(extras), hide_index=True,
                 column_config={"share": st.column_config.NumberColumn(format="percent")})
    st.caption(f"Completeness checked: terms vs representation {extras['completeness_error']:.1e}, scores vs "
               f"logit {extras['score_error']:.1e} (relative; maps are drawn only below 1e-4).")

layers, heads = scores.shape
cells = [(layer, head) for layer in range(layers) for head in range(heads)]
picked = clicked_head(event, heads)
if picked is not None:
    st.session_state["heads_cell"] = picked
elif st.session_state.get("heads_cell") not in cells:  # first view: the head that contributes most
    strongest = np.unravel_index(int(np.argmax(scores)), scores.shape)
    st.session_state["heads_cell"] = (int(strongest[0]), int(strongest[1]))
chosen = st.selectbox("Head", cells, key="heads_cell", format_func=lambda c: f"layer {c[0]}, head {c[1]}",
                      help="Click a cell of the grid, or choose here.")
layer, head = chosen
picture, cells_view = st.columns(2)
display_image = model.transform.geometry(selection.image)
head_heatmap = upsample(torch.from_numpy(maps[layer, head])[None].float(), model.input_size)[0].numpy()
picture.image(overlay(display_image, head_heatmap, signed=True, size=320),
              caption=f"Layer {layer}, head {head} over the image: {scores[layer, head] / total:.1%} of the logit")
cells_view.plotly_chart(head_map(maps[layer, head], f"Layer {layer}, head {head}: its terms A_(l,h,i) per patch"),
                        key="heads_map")

st.subheader("CHILI: object and context weights per head")
chili = found["chili"]
alpha, kernel, threshold = chili_settings["alpha"], chili_settings["kernel"], chili_settings["threshold"]
if isinstance(chili, Failure):
    st.warning(f"{method_info('chili').label} is not shown: {chili.reason}")
else:
    weights = np.asarray(chili.extras["head_weights"])
    first, second = st.columns(2)
    first.plotly_chart(head_grid(weights, "object weight w", "Greens", None, "{:.2f}"), key="heads_object")
    second.plotly_chart(head_grid(1 - weights, "context weight 1 - w", "Oranges", None, "{:.2f}"),
                        key="heads_context")
    st.caption(f"w = E[1 - exp(-alpha IoU(h_m(f_m(A)), G))] over {chili.extras['probes']} probes of "
               f"{chili.extras['probing']}; alpha = {alpha:g} (w at most {1 - np.exp(-alpha):.3f}), f_m a "
               f"{kernel}x{kernel} median over the patch grid, h_m the filtered map at >= {threshold:g} x its "
               "maximum.")
