"""Prototypes: the classifier's own prototypes against KMEx (seed 000, Figure 2 and Tables 1-2)."""
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from explainers.fitted import accuracy_models, alignment_models
from ui.cache import get_dataset
from ui.prototype_cache import (
    classes_present,
    explainer,
    figure2,
    offer_digits,
    per_class_control,
    table1,
    table2,
    unavailable,
)
from ui.sidebar import current

MANY_CLASSES = 20  # above this, one map of every class is the default: a map per choice would refit UMAP each time

st.title("Classifier prototypes vs KMEx")
st.caption("A CNN with a global-average-pooling + linear head is a prototype model whose prototypes are the classifier "
           "columns c_j (Theorem 1). They mark the half-space where a class lives, not where its data is: "
           "k-means prototypes (KMEx) sit among the data and classify as well.")

selection = current()
problem = selection.load_failure or unavailable(selection)
if problem:
    st.info(problem)
    offer_digits(selection)
    st.stop()
model = selection.model

controls = st.columns([3, 1, 1])
present = classes_present(model, selection.train_source)  # a folder may hold some of the model's classes
classes = controls[0].multiselect("Classes to project", list(present), default=list(present[:5]),
                                  format_func=model.class_name, key="proto_classes",
                                  help="The classes with training images (a class without images has nothing to "
                                       "project).")
per_class = per_class_control(controls[1])
one_map = controls[2].toggle(
    "One map of every class", value=model.num_classes > MANY_CLASSES, key="proto_one_map",
    help="Fit UMAP once on every class's images (a minute at CUB's 200 classes, then kept on disk): choosing "
         "classes then only filters that map. Off: each choice of classes gets a map of its own, as seed 000's "
         "Figure 2 (seconds for a few classes).")
if len(classes) < 2:
    st.info("Choose at least two classes.")
    st.stop()

kmex1 = explainer(model, selection.train_source, "pooled", 1)
kmex = kmex1 if per_class == 1 else explainer(model, selection.train_source, "pooled", per_class)
mapped = present if one_map else tuple(sorted(classes))
placed = figure2(selection.model_key, model, selection.train_source, mapped, kmex).only(classes)

palette = qualitative.D3 + qualitative.Set3
figure = make_subplots(1, 2, shared_xaxes=True, shared_yaxes=True, horizontal_spacing=0.03,
                       subplot_titles=("classifier columns: raw (×), rescaled to the class norm (▲)",
                                       f"KMEx prototypes, K/C = {per_class} (■)"))
for position, column in ((0, 1), (1, 2)):
    for index, label in enumerate(placed.classes):
        colour = palette[index % len(palette)]
        name = f"class {model.class_name(int(label))}"
        splits = (("train", placed.train_xy, placed.train_labels, placed.train_index, 0.75),
                  ("test", placed.test_xy, placed.test_labels, placed.test_index, 0.2))
        for split, xy, labels, where, opacity in splits:
            keep = labels == label
            figure.add_trace(go.Scattergl(
                x=xy[keep, 0], y=xy[keep, 1], mode="markers", name=name, legendgroup=name,
                showlegend=position == 0 and split == "train", marker=dict(size=5, color=colour, opacity=opacity),
                customdata=[[split, int(i)] for i in where[keep]],
                hovertemplate=f"{name}, {split} #%{{customdata[1]}}<extra></extra>"), 1, column)
        far = placed.off_manifold
        if column == 1:
            points = ((placed.columns_xy[index], "x", "c_j raw", far["columns"][index]),
                      (placed.rescaled_xy[index], "triangle-up", "c_j rescaled", far["rescaled"][index]))
        else:
            mine = placed.kmex_labels == label
            points = tuple((xy, "square", "KMEx prototype", off)
                           for xy, off in zip(placed.kmex_xy[mine], far["kmex"][mine]))
        for xy, symbol, kind, off in points:
            where_from = "off the data: placed by its true distances" if off else "among the data: placed by UMAP"
            figure.add_trace(go.Scatter(
                x=[xy[0]], y=[xy[1]], mode="markers", showlegend=False, legendgroup=name,
                marker=dict(symbol=symbol, size=12, color=colour, line=dict(width=1.5, color="black")),
                hovertemplate=f"{kind} of {name}<br>{where_from}<extra></extra>"), 1, column)
figure.update_layout(height=560, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.05),
                     dragmode="select")
event = st.plotly_chart(figure, width="stretch", on_select="rerun", selection_mode="points", key="umap")
st.caption(("UMAP of the pooled embeddings z of every class, fitted once, showing the chosen classes"
            if one_map else "UMAP of the pooled embeddings z of the chosen classes") +
           ": train opaque, test faint. Prototypes among the data "
           "are mapped by UMAP; a prototype farther from every image than images are from their 15th neighbour is "
           "placed by least squares on its true distances to the class centres, so it is never drawn inside a class "
           "it is far from. Select points (box or click) to see the images.")

points = [p for p in (event.selection.points if event else []) if p.get("customdata")]
if points:
    shown = st.columns(8)
    for cell, point in zip(shown, points[:8]):
        split, index = point["customdata"]
        image, label = get_dataset(selection.train_source, split)[int(index)]
        cell.image(image, caption=f"{split} #{index}, class {model.class_name(label)}", width=96)

left, right = st.columns(2)
with left:
    st.subheader("Alignment: how close each prototype is to its class")
    st.dataframe(table1(selection.model_key, model, selection.train_source, alignment_models(kmex1, kmex)),
                 hide_index=True, width="stretch")
    st.caption("Mean cosine between each prototype and the training embeddings of its class (class) and of all "
               "other classes (out). Seed 000 (its Table 1) reports about 0.5 for c_j against 0.8–0.9 for KMEx.")
with right:
    st.subheader("Accuracy of the network and of each prototype explainer (%)")
    b4 = explainer(model, selection.train_source, "B4", per_class)
    b234 = explainer(model, selection.train_source, "B234", per_class)
    st.dataframe(table2(selection.model_key, model, selection.train_source, accuracy_models(kmex, b4, b234)),
                 hide_index=True, width="stretch")
    st.caption(f"KMEx: nearest prototype of the pooled embedding. B4, B234: the class owning most pixels (eq. 10); "
               f"all with K/C = {per_class}. Seed 000's Table 2.")
