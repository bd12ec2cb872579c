"""Cluster-CAM: the block's channels in Q clusters, the input masked by each cluster's mean, and the
best (cognition-base) and worst (cognition-scissors) masks combined (seed 002, eq. 17-22)."""
from ui.entry import through_app

through_app()  # first: a link on a fresh server reaches app.py before the imports below


import streamlit as st
from PIL import Image

from explainers import UserInputError, method_info
from explainers.display import cells, diverging, outlined, overlay
from explainers.methods import masked_pictures
from ui.cache import Failure, explanations
from ui.progress import progress_bar
from ui.settings import method_controls
from ui.sidebar import current_with_image

BASE, SCISSORS = "#2e9d40", "#d62728"  # green and red frames, as in the paper's Figures 3-4
OPACITY = 0.7  # the maps matter more than the input here: it is shown, masked, just above

st.title("Cluster-CAM")
st.caption("The block's feature maps are grouped by k-means into Q clusters; each cluster's mean masks the input, "
           "and the network scores every masked image. Q + 1 forward passes, no gradient "
           "(Feng et al. 2023, *Cluster-CAM*, eq. 17-22).")

selection = current_with_image()
model, block = selection.model, selection.block
channels = model.block_shapes[block][0]

settings = method_controls("clustercam", st.columns([3, 3, 2]), prefix="cc_")  # Q, alpha, clustering
q, alpha = settings["q"], settings["alpha"]
with_scorecam = st.toggle(f"Compare with Score-CAM ({channels} masked passes)", key="cc_scorecam",
                          help="Score-CAM runs one masked pass per channel of the block: seconds to a minute on a "
                               "large network, so it runs when asked. Cluster-CAM and Grad-CAM are shown at once.")
compared = ("clustercam", "gradcam", "scorecam") if with_scorecam else ("clustercam", "gradcam")

try:
    with progress_bar():  # alpha recombines the cached parts: only Q and the clustering run passes
        found = explanations(selection.model_key, model, selection.image_data, compared,
                             block, selection.target, {"clustercam": settings})
except UserInputError as error:  # a model or block the methods cannot run through, says why
    st.error(f"Cluster-CAM could not run on {model.name} at {block}: {error}. Try another depth or model.")
    st.stop()
failed = {name: found.pop(name).reason for name in list(found) if isinstance(found[name], Failure)}
if "clustercam" in failed:  # its own check failed on this input (e.g. non-finite values): nothing honest to draw
    st.error(f"Cluster-CAM is not shown for {model.name} at {block}: {failed['clustercam']}")
    st.stop()
result, others = found["clustercam"], found
parts = result.extras["cluster_cam"]
target = model.class_name(result.target)
size = max(256, model.input_size[0])
thumb = 160
display_image = model.transform.geometry(selection.image)

st.markdown(f"Explaining class **{target}** at **{block}** (`{model.block_paths[block]}`, {channels} channels, "
            f"{parts.q} clusters{' — fewer than asked: the block has fewer distinct maps' if parts.q < q else ''}).")


def frame(picture: Image.Image, index: int) -> Image.Image:
    """Green frame for the base, red for the scissors, a thin grey one for the others."""
    colour = BASE if index == parts.base else SCISSORS if index == parts.scissors else "#dddddd"
    thumbnail = picture.resize((thumb, thumb), Image.Resampling.NEAREST)
    return outlined(thumbnail, colour, border=6 if colour != "#dddddd" else 2)


def role(index: int) -> str:
    return " · **base**" if index == parts.base else " · **scissors**" if index == parts.scissors else ""


st.subheader("The block's channels in clusters: each cluster's mean map")
st.caption("Representative feature maps, Cluster-CAM's eq. 18.")
row = st.columns(parts.q)
for j, column in enumerate(row):
    column.image(frame(cells(parts.representatives[j], cmap="viridis", size=thumb), j), width=thumb)
    column.markdown(f"cluster {j + 1} · {int((parts.labels == j).sum())} ch{role(j)}")

st.subheader(f"The input masked by each cluster's map, and its score for class {target}")
st.caption("Cluster-CAM's eq. 19. What the network saw: the normalised input times the upsampled, [0, 1]-scaled "
           "mean map. A masked-out "
           "pixel becomes the training mean (grey), the zero of the network's input; p is the class's probability.")
pictures = masked_pictures(model, model.transform(selection.image), parts.masks)
row = st.columns(parts.q)
for j, column in enumerate(row):
    column.image(frame(Image.fromarray(pictures[j].squeeze()), j), width=thumb)
    column.markdown(f"p = **{parts.scores[j]:.3g}**{role(j)}")  # 3 digits: an untrained model scores ~0.001

st.info("The **cognition-base** (green) is the cluster whose mask keeps what the network needs most: its masked image "
        "scores highest for the class. The **cognition-scissors** (red) scores lowest: what it keeps argues against "
        "the class, so the final map subtracts it, cutting those regions away.")

st.subheader("Final heatmap beside Grad-CAM" + (" and Score-CAM" if with_scorecam else "") + " of the same block")
heatmap = result.heatmap  # H for this alpha, recombined from the stored parts
colours = ("red: base, blue: cut by the scissors" if diverging(heatmap, True) else
           "nothing negative left to cut, so drawn min to max like the maps beside it")
panels = [("Cluster-CAM", overlay(display_image, heatmap, signed=True, opacity=OPACITY, size=size), result.forwards, 0,
           f"H = {alpha:.2f} x base - {1 - alpha:.2f} x scissors; {colours}")]
for name in compared[1:]:
    if name in failed:
        st.warning(f"{method_info(name).label} is not shown: {failed[name]}")
        continue
    other = others[name]
    panels.append((method_info(name).label, overlay(display_image, other.heatmap, other.signed, opacity=OPACITY,
                                                    size=size),
                   other.forwards, other.backwards, method_info(name).description))
row = st.columns(len(panels))
for column, (label, picture, forwards, backwards, note) in zip(row, panels):
    column.image(picture, width="content")  # its size, or its column's when that is narrower
    column.markdown(f"**{label}** · {forwards} forward{'s' if forwards != 1 else ''}"
                    + (f" + {backwards} backward" if backwards else ""))
    column.caption(note)
st.caption(f"Forward passes counted in images: Cluster-CAM's {result.forwards} = the plain pass + Q = {parts.q} masked "
           + (f"inputs; Score-CAM's = the plain pass + one masked input per distinct channel map ({channels} channels)"
              if with_scorecam else "inputs") + ". Changing alpha recombines the stored maps: no pass at all.")
