"""Overview: the model card and a map of the pages."""
import streamlit as st

from explainers import method_info, methods
from ui.sidebar import current

st.title("Protoscope")
st.markdown("Explore how a convolutional image classifier decides: pick a model, an image and a depth in the "
            "sidebar, then open a page.")

selection = current()
model = selection.model
if model is None:
    st.info("Choose a model in the sidebar.")
    st.stop()

st.header(f"Model: {model.name}")
card = model.card
facts = st.columns(4)
facts[0].metric("Classes", model.num_classes)
colour = "greyscale" if model.transform.mode == "L" else "colour"
facts[1].metric("Input", f"{model.input_size[0]}×{model.input_size[1]} {colour}")
facts[2].metric("Test accuracy", f"{card['test_accuracy']:.1%}" if "test_accuracy" in card else "—")
facts[3].metric("Parameters", f"{sum(p.numel() for p in model.net.parameters()) / 1e6:.2f} M")

left, right = st.columns([3, 2])
with left:
    st.subheader("Blocks")
    shapes = model.block_shapes
    st.dataframe([{"block": b, "module": model.block_paths[b], "channels": shapes[b][0],
                   "resolution": f"{shapes[b][1]}×{shapes[b][2]}"} for b in model.blocks],
                 hide_index=True, width="stretch")
    head = ("global average pooling + linear: the logits are the mean over B4's pixels of h_r · c_j plus the bias "
            "(Theorem 1 of *Post-hoc Self-explanation of CNNs*, checked numerically on load), so CAM applies.")
    st.markdown(f"**Head:** {head}" if model.gap_head else
                "**Head:** more layers sit between B4 and the classifier, so CAM does not apply; "
                "gradient methods do.")
    st.caption(f"Family: {model.family} · classifier: `{model.classifier}`")
with right:
    st.subheader("Model card")
    rows = card or {"weights": "random (untrained)"}
    st.dataframe([{"field": k.replace("_", " "), "value": str(v)} for k, v in rows.items()],
                 hide_index=True, width="stretch", height=36 * (len(rows) + 1) + 3)  # every row, no scrolling
    if len(model.classes) <= 20:
        st.markdown("**Classes:** " + ", ".join(model.classes))

st.header("Pages")
st.markdown("- **Saliency** — maps of where the network looks, side by side, for the chosen class and depth: "
            "the CAM family from one shared forward/backward pass, with each method's cost.\n"
            "- **Cluster-CAM** — the block's channels in k-means clusters, the input masked by each cluster's mean, "
            "and the best (cognition-base, green) and worst (cognition-scissors, red) combined; Q + 1 forward passes.\n"
            "- **Segments** — every pixel at the chosen depth assigned to its nearest k-means prototype (B4, B34, "
            "B234, B1234), the gradient-free attribution, and each segment's nearest training patch (Figure 1 of "
            "*Post-hoc Self-explanation of CNNs*).\n"
            "- **Prototypes** — the classifier's own prototypes (its weight columns) against KMEx prototypes on a UMAP "
            "of the embeddings, with the paper's alignment and accuracy tables (its Figure 2, Tables 1-2).")

st.header("Methods")
st.dataframe([{"id": n, "method": method_info(n).label, "family": method_info(n).family,
               "needs gradients": method_info(n).needs_gradients, "what it computes": method_info(n).description,
               "paper": method_info(n).reference} for n in methods()], hide_index=True, width="stretch")
