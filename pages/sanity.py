"""Sanity checks: does a map change when the model's weights are randomised? (Adebayo et al. 2018)

The check runs when the Run button is pressed (``ui.on_request``): the first view is the controls and what
a run computes; once run, the result stays for the session."""
import io

import streamlit as st

from explainers import UserInputError, method_info
from explainers.data import plural
from explainers.display import maps_sheet, step_label, step_pictures
from explainers.display import sanity_curves_png as curves_png
from explainers.evaluation import SANITY_MODES
from ui.image_set import current_image_key
from ui.on_request import asked_for, kept
from ui.progress import progress_bar
from ui.sanity import MAX_IMAGES, curves_figure, randomisation, test_images, what_will_run
from ui.sidebar import current_with_image, runnable_methods

st.title("Sanity checks")
st.caption("A map that explains the *model* must change when the model's weights are destroyed; one that barely "
           "changes explains the image (Adebayo et al. 2018, *Sanity checks for saliency maps*). The weights of a "
           "private copy of the network are re-initialised group by group; the loaded model is never touched.")

selection = current_with_image()
model, block = selection.model, selection.block

controls = st.columns([3, 2, 3, 3])
kept("sanity_mode", SANITY_MODES[0])  # the page's controls keep their values across page switches
kept("sanity_images", 0)
kept("sanity_keep_statistics", False)
mode = controls[0].radio(
    "Randomisation", SANITY_MODES, key="sanity_mode", horizontal=True,
    help="Cascading: from the classifier down, each step adding one group to those already randomised, until no "
         "learned weight is left. Independent: one group at a time, the others keeping their learned weights.")
dataset, split = test_images(model)
source = f"{dataset}'s {split} split" if split == "test" else f"the {dataset}"
count = controls[1].number_input("More images for the curves", 0, MAX_IMAGES, key="sanity_images", step=1,
                                 help=f"The first images of {source} besides the current one; 0: the current image "
                                      "only. The maps shown are the current image's; the curves and the table "
                                      "average over all the images.")

keep_statistics = controls[2].toggle(
    "Keep batch-norm statistics", key="sanity_keep_statistics",
    help="Off: a randomised batch norm is reset entirely, running mean and variance too, so the fully randomised "
         "network is the untrained architecture. On: its running statistics stay, as in Adebayo et al. (who "
         "randomise trainable variables only); they then normalise random activations with the trained ones' "
         "statistics.")



def _reason(name: str) -> str | None:
    info = method_info(name)
    if info.family == "prototype":
        return "its prototypes belong to the trained network; a fair check would fit new ones on every randomised copy"
    return info.available(model, block)


runnable, skipped = runnable_methods(selection.methods, _reason)
if "rollout" in runnable:  # known, not found: say it before the curves do
    st.caption(":orange[Attention rollout ignores the class and the weights of the head: it multiplies the "
               "layers' attention maps only. So it fails the class check and the cascade's first step (the "
               "classifier randomised) by design, and changes only once the attention layers are randomised.]")
if any(method_info(n).family == "perturbation" for n in runnable):
    controls[3].caption(":orange[Perturbation methods run their masked passes again at every step: seven times "
                        "the Saliency page's time per image.]")

for name, reason in skipped:
    st.caption(f"Not checked — {method_info(name).label}: {reason}.")
key = (selection.model_key, current_image_key(selection), int(count), tuple(runnable), block, mode, selection.target,
       keep_statistics)
if not asked_for("sanity", key, "Run the check", button_key="sanity_run",
                 what=lambda: what_will_run(len(runnable), block, mode, int(count), dataset)):
    st.stop()

try:
    with progress_bar():  # one step per randomisation step and batch of images, methods' own progress inside
        result = randomisation(selection.model_key, model, selection.image_data, int(count), tuple(runnable), block,
                               mode, selection.target, keep_statistics)
except UserInputError as error:  # a method or block that does not apply here, says why; anything else is a bug
    st.error(f"The check could not run: {error}")
    st.stop()

images = len(result.per_image.image.unique()) if len(result.per_image) else 1
target = model.class_name(result.targets[0])
st.markdown(f"Explaining class **{target}** at **{block}** (`{model.block_paths[block]}`) for the current image"
            + (f" and {images - 1} {dataset} images (each for its own predicted class)" if images > 1 else "")
            + f"; {mode} randomisation of {', '.join(result.steps[1:])}.")
if images == 1:
    cells = model.block_shapes[block][1] * model.block_shapes[block][2]
    st.caption(f"One image: its correlations are noisy (at {block} a map has {cells} cells of the block to rank); add "
               "images for the curves before trusting a flag.")

flags = result.flags()
for name, sentence in flags.items():
    st.warning(sentence)
passed = [method_info(n).label for n in result.methods if n not in flags]
if passed:
    st.success(f"Changed with the weights (mean rank correlation below {result.threshold:g} "
               f"{'with every layer randomised' if mode == 'cascading' else 'after randomising any one group'}): "
               f"{', '.join(passed)}.")
for (name, step), reason in result.failures.items():
    st.caption(f":orange[{method_info(name).label} gave no map after randomising {step}: {reason}]")

st.plotly_chart(curves_figure(result), width="stretch", key="sanity_curves")
st.caption("Similarity of each map with the same method's map of the trained model: Spearman's rank correlation of "
           "the absolute values (1: same ranking of the pixels, 0: unrelated) and SSIM of the maps scaled to [0, 1]. "
           + ("Each step adds a group to those randomised before it, from the classifier down to the stem."
              if mode == "cascading" else "Each step randomises one group alone."))

st.subheader("The maps of the current image at every step")
display_image = model.transform.geometry(selection.image)
own = result.per_image[result.per_image.image == 0].set_index(["method", "step"])
size = 150
for name in result.methods:
    st.markdown(f"**{method_info(name).label}**")
    row = st.columns(len(result.steps))
    for column, (step, picture) in zip(row, step_pictures(result, name, display_image, size)):
        if picture is None:
            column.caption(f"{step_label(result, step)}: no map")
            continue
        column.image(picture, width=size)
        score = own.loc[(name, step)]
        rho = "no ranks (constant)" if score.spearman != score.spearman else f"ρ {score.spearman:.2f}"
        column.caption(f"{step_label(result, step)} · {rho} · SSIM {score.ssim:.2f}")

table = result.table


def sheet_png() -> bytes:
    buffer = io.BytesIO()
    maps_sheet(result, display_image).save(buffer, format="PNG")
    return buffer.getvalue()


downloads = st.columns(3)  # the pictures are drawn when a button is pressed, not on every rerun
downloads[0].download_button("Table (CSV)", table.to_csv(index=False).encode(), key="sanity_csv",
                             file_name=f"protoscope-sanity-{mode}-{block}.csv", mime="text/csv")
downloads[1].download_button("Curves (PNG)", lambda: curves_png(result), key="sanity_curves_png",
                             file_name=f"protoscope-sanity-{mode}-{block}-curves.png", mime="image/png")
downloads[2].download_button("Maps (PNG)", sheet_png, key="sanity_maps_png",
                             file_name=f"protoscope-sanity-{mode}-{block}-maps.png", mime="image/png")

with st.expander("The table, and what was randomised"):
    st.dataframe(table.assign(method=[method_info(n).label for n in table.method]), hide_index=True, width="stretch")
    st.markdown("\n".join(f"- **{group}**: {plural(len(paths), 'module')}, `{paths[0]}` … `{paths[-1]}`"
                          for group, paths in result.groups.items()))
    st.caption("Each module is re-initialised as PyTorch builds it (its own reset_parameters, seeded per group): "
               "Kaiming-uniform convolutions and linear layers; batch norms scale 1 and shift 0, and "
               + ("their running statistics kept, as Adebayo et al. do." if keep_statistics else
                  "running statistics 0 and 1 (they were measured on the trained layers).")
               + f" A method is flagged when its mean rank correlation stays at or above {result.threshold:g}, "
               "halfway between unchanged and unrelated.")
