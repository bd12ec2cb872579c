"""Evaluation: which map to trust. Faithfulness metrics of the sidebar's methods over a set of images.

Every registered metric (``explainers.evaluation.METRICS``) gets its section from its own declaration: its
table with each score's direction, its caption, its curves, its downloads. Nothing is scored until the Run
button is pressed (``ui.on_request``): the first view is the controls and what a run will cost."""
import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from explainers import method_info
from explainers.display import evaluation_curves_png as curves_png
from explainers.display import measured_time
from explainers.evaluation import BLUR_LADDER, METRICS, EvaluationSettings
from ui.evaluation_cache import evaluation, what_will_run
from ui.image_set import current_image_key, image_set_control
from ui.on_request import asked_for, kept
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
    step_options = [10, 20, 50]
    kept("eval_steps", 20, step_options)
    steps = columns[0].select_slider("Deletion / insertion steps", step_options, key="eval_steps",
                                     help="Pixels are removed or inserted in this many equal steps (RISE).")
    road_options = ["off", "10–90% (5)", "10–90% (9)"]
    road_key = f"eval_road_{model.sample_dataset}"
    kept(road_key, road_options[1 if max(model.input_size) <= SMALL_INPUT else 0], road_options)
    levels = columns[1].radio("ROAD removal levels", road_options, key=road_key, horizontal=True,
                              help="Five levels (10, 30, 50, 70, 90%) or nine (every 10%, as Rong et al.). Each "
                                   "level imputes the removed pixels by solving a sparse linear system: about 2 s "
                                   "per image and method at 224x224, so it starts off for photos.")
    blur_options = ["measured", *BLUR_LADDER]
    kept("eval_blur", "measured", blur_options)
    sigma = columns[2].selectbox("Insertion blur σ (pixels)", blur_options, key="eval_blur",
                                 format_func=lambda s: s if isinstance(s, str) else f"{s:g} px",
                                 help="Insertion starts from the image blurred by RISE's kernel of this σ. Measured: "
                                      "the smallest of " + ", ".join(f"{s:g}" for s in BLUR_LADDER) + " px whose "
                                      "blurred copy gets below half of the images' own probability for the class "
                                      "(RISE's σ = 5 is for 224-pixel photos; it leaves a 64-pixel digit readable).")
with st.expander("The metrics' constants and where they come from"):
    st.markdown("\n".join(f"- **{metric.label}** ({metric.reference}):\n"
                           + "\n".join(f"    - {c.describe()}" for c in metric.constants)
                           for metric in METRICS.values() if metric.constants))
if chosen is None:
    st.stop()
fractions = (0.1, 0.3, 0.5, 0.7, 0.9) if not levels.endswith("(9)") else tuple(round(0.1 * k, 1) for k in range(1, 10))
metrics = tuple(name for name in METRICS if name != "road" or levels != "off")
settings = EvaluationSettings(steps=int(steps), road_fractions=fractions,
                              blur_sigma=None if isinstance(sigma, str) else float(sigma))
target = selection.target if chosen.kind == "current" else None
key = (selection.model_key, block, tuple(selection.methods), chosen.key, target, settings)
if not asked_for("evaluation", key, "Run the evaluation", button_key="eval_run", what=lambda: what_will_run(
        selection.model_key, model, tuple(selection.methods), block, chosen.label, chosen.count, metrics, settings,
        curves_of_another_image=chosen.kind != "current")):
    st.stop()

per_image = tuple(name for name in metrics if METRICS[name].curves_per_image)  # curves of the sidebar's image
with progress_bar():
    found = evaluation(selection.model_key, model, block, tuple(selection.methods), chosen.key,
                       chosen.images(selection), target, settings, metrics, training=selection.train_source)
    if chosen.kind == "current" or not per_image:
        here = found
    else:  # the curves are drawn for the sidebar's image, which need not be in the set: with the set's blur
        here = evaluation(selection.model_key, model, block, tuple(selection.methods), current_image_key(selection),
                          [selection.image], selection.target, found.settings, per_image, selection.train_source)
settings = found.settings  # the blur as measured (or chosen), for the captions

shown_methods = list(dict.fromkeys(found.methods + here.methods))
labels = {name: method_info(name).label for name in shown_methods}
colours = {name: qualitative.D3[i % len(qualitative.D3)] for i, name in enumerate(shown_methods)}  # same everywhere
for name, reason in found.failures.items():
    st.warning(f"**{method_info(name).label}** is not evaluated: {reason}")
if not found.methods:
    st.stop()
st.markdown(f"**{chosen.label}** · {model.name} at **{block}** · maps in {measured_time(found.map_seconds)}; the "
            f"metrics ran {found.inputs_run:,} distinct perturbed inputs ({found.inputs_requested:,} asked for: the "
            f"shared ones ran once) in {measured_time(found.metric_seconds)}.")


def labelled(table):
    return table.assign(method=table["method"].map(labels))


def csv_button(table, name: str, text: str) -> None:
    st.download_button(text, table.to_csv(index=False).encode(), file_name=f"protoscope-{name}.csv",
                       mime="text/csv", key=f"csv_{name}")


def score_columns(members) -> dict:
    """Each score's label, format and direction (as the column's help) from its metric's declaration."""
    return {score.column: st.column_config.NumberColumn(score.label, format=score.format,
                                                        help=score.direction.capitalize())
            for metric in members for score in metric.scores}


def caption(members) -> str:
    texts = [m.preamble(settings) for m in members] + [m.caption(settings) for m in members]
    if any(m.curves_per_image for m in members):
        texts.append("The table averages over the image set; the curves are the current image's.")
    return " ".join(dict.fromkeys(text for text in texts if text))


def curves_figure(members, name: str) -> pd.DataFrame:
    """One panel per curve of ``members``: the current image's (``curves_per_image``) or the mean over the
    images; returns the curves drawn, long format."""
    frames, panels = [], []
    for metric in members:
        source = here if metric.curves_per_image else found
        frame = source.curve_table([metric.name])
        frames.append(frame)
        means = frame.groupby(["curve", "method", "fraction"], sort=False)["probability"].mean().reset_index()
        for label in metric.curves.values():
            panels.append((metric, label, means[means["curve"] == label]))
    titles = [f"{label} — current image" if metric.curves_per_image else f"{label} (mean over the images)"
              for metric, label, _ in panels]
    figure = make_subplots(1, len(panels), subplot_titles=titles, shared_yaxes=True)
    for column, (metric, _, means) in enumerate(panels, start=1):
        for method in dict.fromkeys(means["method"]):
            line = means[means["method"] == method]
            figure.add_trace(go.Scatter(x=line["fraction"], y=line["probability"], mode="lines+markers",
                                        name=labels[method], legendgroup=method, showlegend=column == 1,
                                        marker=dict(size=4), line=dict(color=colours[method])), 1, column)
        figure.update_xaxes(title_text=metric.curve_axis, range=[0, 1], row=1, col=column)
    figure.update_yaxes(range=[0, 1.02])
    figure.update_yaxes(title_text="probability of the class", col=1)
    figure.update_layout(height=360, margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.25))
    st.plotly_chart(figure, width="stretch", key=f"eval_{name}_curves")
    return pd.concat(frames, ignore_index=True)


sections: dict[str, list] = {}  # metrics that share a heading are shown together (deletion and insertion)
for metric in METRICS.values():
    sections.setdefault(metric.section, []).append(metric)
for title, members in sections.items():
    st.subheader(title)  # what is measured; where it comes from goes under it
    st.caption("From " + "; ".join(dict.fromkeys(m.reference for m in members)) + ".")
    computed = [m for m in members if m.name in found.metrics]
    if not computed:
        st.info(members[0].off_note or f"{title} is off.", icon=":material/timer:")
        continue
    for finding in dict.fromkeys(m.finding(found) for m in computed if m.finding(found)):
        st.caption(finding)
    withheld = {m.label: reason for m in computed
                if (reason := found.problem(m.name) or (here.problem(m.name) if m.name in here.metrics else None))}
    for label, reason in withheld.items():
        st.warning(f"{label} is not shown: {reason}.")
    members = [m for m in computed if m.label not in withheld]
    if not members:
        continue
    name = members[0].name
    table = labelled(found.table([m.name for m in members]))
    st.dataframe(table, hide_index=True, width="stretch", column_config=score_columns(members))
    st.caption(caption(members))
    curved = [m for m in members if m.curves]
    curves = curves_figure(curved, name) if curved else None
    downloads = st.columns(3)
    with downloads[0]:
        csv_button(table, name, "Table (CSV)")
    if curves is not None:
        with downloads[1]:
            csv_button(curves.assign(method=curves["method"].map(labels)), f"{name}-curves", "Curves (CSV)")
        with downloads[2]:
            st.download_button("Curves (PNG)", curves_png(curves, "curve", labels, f"{model.name} at {block}"),
                               file_name=f"protoscope-{name}-curves.png", mime="image/png", key=f"png_{name}")

st.subheader("Cost of each map")
st.caption("From seed 002, Table 2.")
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
