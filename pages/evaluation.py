"""Evaluation: which map to trust. Faithfulness metrics of the sidebar's methods over a set of images."""
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from explainers import method_info
from explainers.display import evaluation_curves_png as curves_png
from explainers.display import measured_time
from explainers.evaluation import METRICS, EvaluationSettings, suggested_blur
from ui.evaluation_cache import evaluation
from ui.image_set import current_image_key, image_set_control
from ui.progress import progress_bar
from ui.sidebar import current_with_image

st.title("Evaluation")
st.caption("Which map to trust? Each metric changes the image according to a map and watches the network's "
           "probability for the class: a faithful map points at what the network really uses.")

SMALL_INPUT = 128  # ROAD starts on for inputs up to this side (digits: 64), off for photos

selection = current_with_image()
model, block = selection.model, selection.block
if not selection.methods:
    st.info("Choose at least one method in the sidebar.")
    st.stop()

chosen = image_set_control(selection)
with st.expander("Metric settings"):
    columns = st.columns(3)
    steps = columns[0].select_slider("Deletion / insertion steps", [10, 20, 50], value=20, key="eval_steps",
                                     help="Pixels are removed or inserted in this many equal steps (RISE).")
    road_options = ["off", "10–90% (5)", "10–90% (9)"]
    levels = columns[1].radio("ROAD removal levels", road_options, key=f"eval_road_{model.sample_dataset}",
                              index=1 if max(model.input_size) <= SMALL_INPUT else 0, horizontal=True,
                              help="Five levels (10, 30, 50, 70, 90%) or nine (every 10%, as Rong et al.). Each "
                                   "level imputes the removed pixels by solving a sparse linear system: about 2 s "
                                   "per image and method at 224x224, so it starts off for photos.")
    sigma = columns[2].number_input("Insertion blur σ (pixels)", 1.0, 100.0, suggested_blur(model), 1.0,
                                    key=f"eval_blur_{model.sample_dataset}",
                                    help="Insertion starts from the image blurred by a Gaussian of this σ "
                                         "(RISE: σ = 5 on 224-pixel photos; the 64-pixel digits need 20).")
if chosen is None:
    st.stop()
fractions = (0.1, 0.3, 0.5, 0.7, 0.9) if not levels.endswith("(9)") else tuple(round(0.1 * k, 1) for k in range(1, 10))
metrics = tuple(name for name in METRICS if name != "road" or levels != "off")
settings = EvaluationSettings(steps=int(steps), road_fractions=fractions, blur_sigma=float(sigma))
target = selection.target if chosen.kind == "current" else None
key = (selection.model_key, block, tuple(selection.methods), chosen.key, target, settings)

if chosen.kind != "current" and st.session_state.get("eval_requested") != key:
    st.info(f"{chosen.label}, each explained by {len(selection.methods)} methods at {block} and scored by every "
            "metric: this takes a while on a large network. Press *Run* to start; the result is kept.")
    if st.button("Run the evaluation", key="eval_run", type="primary"):
        st.session_state["eval_requested"] = key
        st.rerun()
    st.stop()

with progress_bar():
    found = evaluation(selection.model_key, model, block, tuple(selection.methods), chosen.key,
                       chosen.images(selection), target, settings, metrics, training=selection.train_source)
    if chosen.kind == "current":
        here = found
    else:  # the curves are drawn for the sidebar's image, which need not be in the set
        here = evaluation(selection.model_key, model, block, tuple(selection.methods), current_image_key(selection),
                          [selection.image], selection.target, settings, ("deletion", "insertion"),
                          selection.train_source)

labels = {name: method_info(name).label for name in found.methods}
colours = {name: qualitative.D3[i % len(qualitative.D3)] for i, name in enumerate(found.methods)}  # same in every panel
for name, reason in found.failures.items():
    st.warning(f"**{method_info(name).label}** is not evaluated: {reason}")
if not found.methods:
    st.stop()
st.markdown(f"**{chosen.label}** · {model.name} at **{block}** · maps in {measured_time(found.map_seconds)}; the metrics "
            f"ran {found.inputs_run:,} distinct perturbed inputs ({found.inputs_requested:,} asked for: the shared ones "
            f"ran once) in {measured_time(found.metric_seconds)}.")


def labelled(table):
    return table.assign(method=table["method"].map(labels))


def csv_button(table, name: str, text: str) -> None:
    st.download_button(text, table.to_csv(index=False).encode(), file_name=f"protoscope-{name}.csv",
                       mime="text/csv", key=f"csv_{name}")


st.subheader("Confidence drop and increase (seed 002, Table 1)")
confidence = labelled(found.confidence_table())
st.dataframe(confidence, hide_index=True, width="stretch",
             column_config={"drop": st.column_config.NumberColumn("drop (%)", format="%.2f"),
                            "increase": st.column_config.NumberColumn("increase (%)", format="%.1f")})
st.caption("The image is multiplied by its map scaled to [0, 1] (X ∘ H, on the normalised input: a hidden pixel "
           "becomes the normalisation mean). **Good: a low drop and a high increase** — the map keeps what the "
           "network needs. The drop here is *relative*, as in seed 002's eq. 23: max(0, S(X) − S(X∘H)) / S(X) per "
           "image, averaged. pytorch-grad-cam's confidence change is *absolute* and signed: S(X∘H) − S(X) averaged, "
           "so images whose probability rises cancel those where it falls, and a drop from 0.9 to 0.8 counts like "
           "one from 0.2 to 0.1 (here 11% against 50%).")
csv_button(confidence, "confidence", "Confidence table (CSV)")

st.subheader("Deletion and insertion (RISE)")
problem = found.insertion_problem() or here.insertion_problem()
kinds = ["deletion"] + ([] if problem else ["insertion"])
curves = here.curves()
curves = curves[curves["curve"].isin(kinds)]
figure = make_subplots(1, len(kinds), subplot_titles=[f"{k} — current image" for k in kinds], shared_yaxes=True)
for column, kind in enumerate(kinds, start=1):
    for name in here.methods:
        line = curves[(curves["curve"] == kind) & (curves["method"] == name)]
        figure.add_trace(go.Scatter(x=line["fraction"], y=line["probability"], mode="lines+markers", name=labels[name],
                                    legendgroup=name, showlegend=column == 1, marker=dict(size=4),
                                    line=dict(color=colours[name])), 1, column)
figure.update_xaxes(title_text="fraction of pixels", range=[0, 1])
figure.update_yaxes(title_text="probability of the class", range=[0, 1.02], col=1)
figure.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
st.plotly_chart(figure, width="stretch", key="eval_curves")
if problem:
    st.warning(f"Insertion is not shown: {problem}.")
auc = labelled(found.auc_table())[["method", *kinds]]
st.dataframe(auc, hide_index=True, width="stretch",
             column_config={k: st.column_config.NumberColumn(f"{k} AUC", format="%.3f") for k in kinds})
st.caption(f"Pixels are taken in the order of the map, most relevant first, in {settings.steps} steps; the area under "
           "each probability curve is by the trapezoid rule over the fraction of pixels. **Deletion**: pixels are "
           "replaced by a constant, the mean pixel of the model's training data — **good: a low area** (the class "
           f"vanishes fast). **Insertion**: pixels go into a copy blurred by a Gaussian of σ = {settings.blur_sigma:g} "
           "px — **good: a high area** (the class comes back fast). The table averages over the image set; the "
           "curves are the current image's.")
downloads = st.columns(3)
with downloads[0]:
    csv_button(auc, "auc", "AUC table (CSV)")
with downloads[1]:
    csv_button(curves.assign(method=curves["method"].map(labels)), "curves", "Curves of this image (CSV)")
with downloads[2]:
    st.download_button("Curves (PNG)", curves_png(curves, "curve", labels, f"{model.name} at {block}"),
                       file_name="protoscope-deletion-insertion.png", mime="image/png", key="png_curves")

st.subheader("ROAD: remove and debias (Rong et al. 2022)")
if "road" not in metrics:
    st.info("ROAD is off for photos: it solves a sparse system per removal level, about 2 s per image and method "
            "at 224x224. Turn it on under *Metric settings*.", icon=":material/timer:")
else:
    road_table = labelled(found.road_table())
    st.dataframe(road_table, hide_index=True, width="stretch",
                 column_config={"morf": st.column_config.NumberColumn("MoRF", format="%.3f"),
                                "lerf": st.column_config.NumberColumn("LeRF", format="%.3f"),
                                "gap": st.column_config.NumberColumn("gap (LeRF − MoRF)", format="%.3f")})
    st.caption("The most relevant (MoRF) or least relevant (LeRF) pixels are removed and filled in from their "
               "neighbours, with a little noise, so that the shape of the hole tells the network nothing. Mean "
               f"probability over the removal levels ({', '.join(f'{f:.0%}' for f in settings.road_fractions)}) and "
               "images. **Good: a low MoRF, a high LeRF, a large gap** (LeRF − MoRF).")
    road_curves = found.road_curves()
    means = road_curves.groupby(["order", "method", "fraction"], sort=False)["probability"].mean().reset_index()
    road_figure = make_subplots(1, 2, subplot_titles=["MoRF (mean over the images)", "LeRF (mean over the images)"],
                                shared_yaxes=True)
    for column, order in enumerate(("MoRF", "LeRF"), start=1):
        for name in found.methods:
            line = means[(means["order"] == order) & (means["method"] == name)]
            road_figure.add_trace(go.Scatter(x=line["fraction"], y=line["probability"], mode="lines+markers",
                                             name=labels[name], legendgroup=name, showlegend=column == 1,
                                             line=dict(color=colours[name])), 1, column)
    road_figure.update_xaxes(title_text="fraction removed", range=[0, 1])
    road_figure.update_yaxes(range=[0, 1.02])
    road_figure.update_layout(height=320, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.3))
    st.plotly_chart(road_figure, width="stretch", key="eval_road_curves")
    downloads = st.columns(2)
    with downloads[0]:
        csv_button(road_table, "road", "ROAD table (CSV)")
    with downloads[1]:
        st.download_button("ROAD curves (PNG)", curves_png(road_curves, "order", labels, f"{model.name} at {block}"),
                           file_name="protoscope-road.png", mime="image/png", key="png_road")

st.subheader("Cost of each map (seed 002, Table 2)")
timing = labelled(found.timing_table())
st.dataframe(timing, hide_index=True, width="stretch",
             column_config={"seconds": st.column_config.NumberColumn("seconds per image", format="%.4f"),
                            "forwards": st.column_config.NumberColumn("forward passes", format="%.1f"),
                            "backwards": st.column_config.NumberColumn("backward passes", format="%.1f")})
st.caption("Measured on this run, per image: the method's own time plus its share of the one pass all methods "
           "shared (charged in full to each, as each would need it alone). Forward passes are counted in images. "
           "**Good: few passes and little time for the same faithfulness.** Times depend on the machine and on "
           "what other sessions run meanwhile.")
csv_button(timing, "timing", "Cost table (CSV)")
