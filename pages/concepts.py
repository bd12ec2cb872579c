"""Concepts: a sparse ternary decision layer over a few shared features (Q-SENN, seed 003)."""
import numpy as np
import plotly.graph_objects as go
import streamlit as st

from explainers.data import DATASETS
from explainers.display import overlay
from explainers.fitted import QSENN_MODES, feature_order, full_mode_refusal
from ui.cache import get_dataset
from ui.concepts import BLANK, explanation, layer, shown_table, splits, table
from ui.prototype_cache import offer_digits
from ui.sidebar import current

MODE_NAMES = {"post-hoc": "Post-hoc (frozen backbone)", "full": "Full Q-SENN (fine-tunes a copy of the network)"}
ORDERS = {"selection": "order of selection", "classes": "class they count for first", "shared": "most shared first"}
TERNARY = [[0.0, "#2166ac"], [0.333, "#2166ac"], [0.333, "#f7f7f7"], [0.667, "#f7f7f7"], [0.667, "#b2182b"],
           [1.0, "#b2182b"]]

st.title("Concepts")
st.caption("Q-SENN replaces the dense last layer by a sparse, ternary one over a few shared features: each class is "
           "recognised by about five features, each counting +α, 0 or −α (seed 003, eq. 3–5). Which few concepts "
           "does the model use for a class, and where are they in this image?")

selection = current()
model = selection.model
problem = selection.load_failure or ("Choose a model in the sidebar." if model is None else None)
if not problem and selection.train_source is None:
    problem = (f"A Q-SENN layer is fitted on the model's labelled training images, and {model.name} comes without "
               "them. Switch to the built-in digits model, which has its own, or give a folder of labelled images "
               "(one sub-folder per class, named like the model's classes) under *Training images* in the sidebar.")
if problem:
    st.info(problem)
    offer_digits(selection)
    st.stop()

controls = st.columns([3, 1, 1])
mode = controls[0].radio("Mode", QSENN_MODES, key="qsenn_mode", horizontal=True, format_func=MODE_NAMES.get,
                         help="Post-hoc: features of the frozen network, selection, sparse path and quantisation "
                              "(any model with labelled images). Full: seed 003's loop, N rounds of fine-tuning a "
                              "copy of the backbone with the layer fixed (Feature Diversity Loss) and recomputing it.")
n_features = controls[1].number_input("Features n_f*", 5, 200, 50, step=5, key="qsenn_features",
                                      help="Features the layer may use (fewer if the block has fewer channels).")
per_class = controls[2].number_input("Weights per class", 1, 10, 5, key="qsenn_per_class",
                                     help="n_w = this × the number of classes non-zero weights in all.")
if mode == "full" and full_mode_refusal(model):
    st.info(full_mode_refusal(model))
    st.stop()
fitted = layer(model, selection.train_source, {"mode": mode, "n_features": int(n_features),
                                               "weights_per_class": int(per_class)})
available = splits(selection.train_source)
rows = table(selection.model_key, fitted, selection.train_source, tuple(available))

st.subheader(f"Accuracy, sparsity and diversity of each last layer · {model.name}, {mode}")
shown, blank = shown_table(rows)
st.dataframe(shown, hide_index=True, width="stretch")
st.caption(f"Seed 003's Table 1 for this model. n_f* = {fitted.n_features_} features of {fitted.block_} selected "
           "(SLDD-Model), W_sp the lowest-"
           f"regularisation solution of glm-saga's path, quantised to n_w = {fitted.n_w_} weights: ε = "
           f"{fitted.epsilon_:.3f}, α = {fitted.alpha_:.3f}. glm-saga5: the densest solution with at most n_w weights "
           "over every feature. diversity@5 (eq. 6): 20% when a class's five top features light up the same place, "
           "100% when five different places." +
           (f" {BLANK} in {', '.join(blank)}: no image's predicted class has five features with a non-zero weight "
            "in that layer, and diversity@5 compares a class's top five (seed 003 leaves such images out)."
            if blank else ""))

dense = next((r for r in rows if r["layer"].startswith("Dense")), None)
ternary = rows[-1]
held_out = [split for split in available if split != "train"]
if dense and held_out:
    st.subheader("Dense vs Q-SENN away from the training set")
    description = DATASETS.description(selection.train_source) if selection.train_source in DATASETS else ""
    cells = st.columns(2 * len(held_out))
    for i, split in enumerate(held_out):
        key = f"{split} accuracy (%)"
        cells[2 * i].metric(f"Dense, {split}", f"{dense[key]:.1f}%")
        cells[2 * i + 1].metric(f"Q-SENN, {split}", f"{ternary[key]:.1f}%", f"{ternary[key] - dense[key]:+.1f} points")
    st.caption((f"{selection.train_source}: {description}. " if description else "") +
               "Seed 003 reports that its ternary layer holds up far better than the dense one when the test images "
               "break a spurious correlation of the training images (TravelingBirds: 39.4% dense, 67.3% Q-SENN). "
               "Where a test split is drawn like the training split, this is plain generalisation.")

st.subheader("Class × feature assignments")
order_by = st.radio("Order the features by", list(ORDERS), key="qsenn_order", horizontal=True, format_func=ORDERS.get)
order = feature_order(fitted.weights_, order_by)
signs = np.sign(fitted.weights_[:, order])
matrix = go.Figure(go.Heatmap(
    z=signs, x=[f"#{fitted.features_[j]}" for j in order], y=[model.class_name(c) for c in range(model.num_classes)],
    zmin=-1, zmax=1, colorscale=TERNARY, xgap=1, ygap=1,
    colorbar=dict(tickvals=[-1, 0, 1], ticktext=["−α", "0", "+α"], len=0.6),
    hovertemplate="class %{y} · feature %{x}: %{z}<extra></extra>"))
matrix.update_layout(height=max(240, 22 * model.num_classes + 90), margin=dict(l=10, r=10, t=10, b=10),
                     xaxis=dict(type="category", title=f"channel of {fitted.block_}"),
                     yaxis=dict(type="category", autorange="reversed", title="class"))
st.plotly_chart(matrix, width="stretch", key="qsenn_matrix")

if selection.image is None:
    st.info("Choose an image in the sidebar to see its concepts.")
    st.stop()
result = explanation(selection.model_key, fitted, selection.image_data, selection.image, selection.target)
st.subheader(f"This image · Q-SENN predicts {model.class_name(result.predicted)}"
             + ("" if result.target == result.predicted else f" · explaining {model.class_name(result.target)}"))
bars = go.Figure(go.Bar(
    x=[f"#{f.channel}" for f in result.features] + ["bias"],
    y=[f.contribution for f in result.features] + [result.bias],
    marker_color=["#b2182b" if f.sign > 0 else "#2166ac" for f in result.features] + ["#9aa5b1"]))
bars.update_layout(height=240, margin=dict(l=10, r=10, t=30, b=10), xaxis_type="category",
                   title=f"logit of {model.class_name(result.target)} = {result.logits[result.target]:.2f}: "
                         "α·W₁[c, j]·f*_j per feature, plus the bias")
st.plotly_chart(bars, width="stretch", key="qsenn_contributions")

display = model.transform.geometry(selection.image)
train = get_dataset(selection.train_source, "train")
SHOWN = 6
for title, group in (("Features counting for it (+α)", result.positive), ("Features counting against it (−α)",
                                                                          result.negative)):
    st.markdown(f"**{title}**" + ("" if group else ": none"))
    for evidence in group:
        cells = st.columns([2, 2] + [1] * SHOWN)
        cells[0].image(overlay(display, fitted.feature_map(evidence), opacity=0.55, size=160), width="stretch")
        cells[1].markdown(f"**feature #{evidence.channel}**  \nf = {evidence.activation:.3f}, "
                          f"f* = {evidence.standardised:+.2f}  \ncontribution {evidence.contribution:+.2f}  \n"
                          f"**{100 * evidence.share:+.0f}%** of the logit's evidence")
        for cell, index in zip(cells[2:], fitted.gallery_[evidence.feature][:SHOWN]):
            image, label = train[int(index)]
            cell.image(model.transform.geometry(image), caption=f"#{index}, {train.classes[label]}", width="stretch")
st.caption("Left: the feature's map over the image (its localisation). Right: the training images that activate the "
           "feature most (its concept gallery). Share: the contribution over the sum of |contributions| of the class's "
           "features; f* is the feature standardised on the training set, so a feature weaker than usual counts with "
           "the opposite sign.")
