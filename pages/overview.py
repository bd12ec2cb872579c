"""Overview: the model card and a map of the pages."""
from ui.entry import through_app

through_app()  # first: a link on a fresh server reaches app.py before the imports below

import streamlit as st

from explainers import method_info, method_names
from explainers.data import MARKED_SPLITS, mark_reliance
from ui.sidebar import current


def _plain(text: str) -> str:
    """Text shown as it is in a table cell that reads Markdown (``*``, ``_``, ``|``, ``$`` are not markup)."""
    for character in "\\*_`|$[]<>~":
        text = text.replace(character, "\\" + character)
    return text


def _value(value) -> str:
    """A model-card value as text: a list as its items (64 × 64), anything else as written."""
    return " × ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else _plain(str(value))


st.title("Protoscope")
st.markdown("Explore how a convolutional image classifier decides: pick a model, an image and a depth in the "
            "sidebar, then open a page.")

selection = current()
model = selection.model
if model is None:
    if selection.load_failure:  # chosen, but it failed: say so instead of asking to choose one
        st.warning(selection.load_failure)
    else:
        st.info("Choose a model in the sidebar.")
    st.stop()

st.header(f"Model: {model.name}")
card = model.card
reliance = mark_reliance(card)  # a model trained on digits_marked: its accuracy with and without the mark
facts = st.columns([2, 3, 3, 3, 2] if reliance else 4)  # five: room for "64×64 greyscale" and the longer labels
facts[0].metric("Classes", model.num_classes)
colour = "greyscale" if model.transform.mode == "L" else "colour"
facts[1].metric("Input", f"{model.input_size[0]}×{model.input_size[1]} {colour}")
if reliance:
    facts[2].metric("Test accuracy, no mark", f"{reliance.clean:.1%}",
                    help=f"test_clean: {MARKED_SPLITS['test_clean']}")
    facts[3].metric("Test accuracy, random marks", f"{reliance.random:.1%}",
                    f"{-100 * reliance.gap:+.1f} points vs no mark", help=f"test: {MARKED_SPLITS['test']}")
else:
    facts[2].metric("Test accuracy", f"{card['test_accuracy']:.1%}" if "test_accuracy" in card else "—")
facts[-1].metric("Parameters", f"{sum(p.numel() for p in model.net.parameters()) / 1e6:.2f} M")
if reliance:
    st.markdown(reliance.summary())

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
    # A static table: every row, and long values (architecture, command) wrapped, not cut off.
    st.table([{"field": k.replace("_", " "), "value": _value(v)} for k, v in rows.items()], hide_index=True)
    if len(model.classes) <= 20:
        st.markdown("**Classes:** " + ", ".join(model.classes))

st.header("Pages")
st.markdown("- **Saliency** — maps of where the network looks, side by side, for the chosen class and depth: "
            "the CAM family from one shared forward/backward pass, with each method's cost; on a vision "
            "transformer also attention rollout, Chefer's relevance, LeGrad, TEXTSPAN and CHILI.\n"
            "- **Heads** — a vision transformer's layer × head grid: each head's share of the class's logit "
            "(TEXTSPAN), its own map, and CHILI's object weights.\n"
            "- **Cluster-CAM** — the block's channels in k-means clusters, the input masked by each cluster's mean, "
            "and the best (cognition-base, green) and worst (cognition-scissors, red) combined; Q + 1 forward passes.\n"
            "- **Segments** — every pixel at the chosen depth assigned to its nearest k-means prototype (B4, B34, "
            "B234, B1234), the gradient-free attribution, and each segment's nearest training patch (Figure 1 of "
            "*Post-hoc Self-explanation of CNNs*).\n"
            "- **Prototypes** — the classifier's own prototypes (its weight columns) against KMEx prototypes on a UMAP "
            "of the embeddings, with the paper's alignment and accuracy tables (its Figure 2, Tables 1-2).\n"
            "- **Concepts** — Q-SENN's sparse ternary last layer: a few shared features per class, each weighted "
            "+α, 0 or −α, their maps for this image and the training images that activate them most.\n"
            "- **Evaluation** — which map to trust: confidence drop and increase, deletion and insertion curves, "
            "ROAD and each method's cost, over this image or many.\n"
            "- **Sanity checks** — does a map change when the network's weights are destroyed? Maps and their "
            "similarity to the original as the layers are randomised (Adebayo et al. 2018).\n"
            "- **Side by side** — a CNN and a vision transformer on the same image (by default the digits ResNet "
            "and the digits ViT), with the methods both take.")

st.header("Methods")
st.table([{"method": f"**{method_info(n).label}**  \n`{n}`", "family": method_info(n).family,
           "needs gradients": "yes" if method_info(n).needs_gradients else "no",
           "what it computes": _plain(method_info(n).description), "paper": _plain(method_info(n).reference)}
          for n in method_names()], hide_index=True)  # every row, the text wrapped: nothing cut off
