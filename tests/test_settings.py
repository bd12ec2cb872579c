"""Method settings (issue 11, item 1): declared in the registry entry, passed by ``explain(...,
method_settings=...)`` to the method's own function, checked at the door, drawn as controls, and
keyed by the caches so that a display-only setting (Cluster-CAM's alpha) runs no pass and the
others rerun only their own method on the cached trace."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import streamlit as st
import torch
from helpers import count_passes, digits_model, digits_test_batch, one_thread
from test_app import page

import ui.cache
from explainers import UserInputError, explain, explain_many, method_info, method_names, trace
from explainers.methods import lrp as L
from explainers.methods.base import register_method
from explainers.methods.cluster_cam import cluster_cam
from explainers.methods.explanation import recombine
from explainers.runtime.settings import Setting, SettingValueError, UnknownSettingError


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return digits_model()


# --- the declaration ----------------------------------------------------------------------------

def test_declared_settings_appear_in_method_info():
    declared = {name: {s.name: s for s in method_info(name).settings} for name in method_names()}
    assert list(declared["clustercam"]) == ["q", "alpha", "clustering"]
    q, alpha, clustering = declared["clustercam"].values()
    assert (q.type, q.default, q.low, q.high) == (int, 6, 2, 16)
    assert (alpha.type, alpha.default, alpha.low, alpha.high) == (float, 0.5, 0.0, 1.0) and alpha.display_only
    assert clustering.choices == ("kmeans", "spectral") and clustering.default == "kmeans"
    assert list(declared["lrp_epsilon"]) == ["epsilon"] and declared["lrp_epsilon"]["epsilon"].default == L.EPSILON
    assert list(declared["lrp_gamma"]) == ["gamma", "epsilon"] and declared["lrp_gamma"]["gamma"].default == L.GAMMA
    assert declared["scorecam"]["batch_size"].default is None and declared["scorecam"]["batch_size"].optional
    assert method_info("clustercam").display_only() == ("alpha",)
    assert all(not s.display_only for name in method_names() if name != "clustercam" for s in declared[name].values())
    assert not declared["gradcam"], "the CAM family has no settings of its own"
    for name in method_names():  # one default: the function's keyword default is the declared one
        parameters = inspect.signature(method_info(name).compute).parameters
        for setting in declared[name].values():
            assert parameters[setting.name].default == setting.default, (name, setting.name)
            assert setting.help and len(setting.help.splitlines()) == 1, (name, setting.name)


def test_a_declaration_that_does_not_fit_its_function_is_refused_at_registration():
    setting = Setting("width", int, 3, "a width", low=1, high=9)

    def compute(trace, block, model, *, width=4):
        return trace.activations[block].sum(1)

    with pytest.raises(ValueError, match="declared with default 3 but compute defaults to 4"):
        register_method("bad_default", label="x", family="gradient-free", description="", reference="",
                        settings=(setting,))(compute)
    with pytest.raises(ValueError, match="does not take as a keyword argument"):
        register_method("bad_name", label="x", family="gradient-free", description="", reference="",
                        settings=(Setting("height", int, 3, "h"),))(compute)
    with pytest.raises(ValueError, match="display-only settings \\(width\\) but no recombine"):
        register_method("bad_display", label="x", family="gradient-free", description="", reference="",
                        settings=(Setting("width", int, 4, "w", display_only=True),))(compute)
    assert not {"bad_default", "bad_name", "bad_display"} & set(method_names()), "a refused method stays out"


def test_a_setting_converts_what_means_the_same_and_refuses_the_rest():
    q = Setting("q", int, 6, "clusters", low=2, high=16)
    assert q.check(np.int64(4)) == 4 and type(q.check(np.int64(4))) is int
    assert q.check(4.0) == 4 and type(q.check(4.0)) is int
    for bad in (4.5, True, "4", None, 1, 17, torch.tensor([4])):
        with pytest.raises(SettingValueError, match=r"must be an integer in \[2, 16\]"):
            q.check(bad)
    epsilon = Setting("epsilon", float, 0.25, "eps", low=1e-6, high=10.0)
    assert epsilon.check(1) == 1.0 and epsilon.check(torch.tensor(0.5)) == 0.5
    for bad in (float("nan"), float("inf"), 0.0, False):
        with pytest.raises(SettingValueError):
            epsilon.check(bad)
    batch = Setting("batch_size", int, None, "batch", low=1, high=1024)
    assert batch.check(None) is None and "or None" in batch.accepted()
    with pytest.raises(ValueError, match="declared default"):
        Setting("alpha", float, 1.5, "alpha", low=0.0, high=1.0)


# --- explain with settings ----------------------------------------------------------------------

CASES = [  # method, block, settings that differ from the defaults
    ("clustercam", "B3", {"q": 4, "alpha": 0.3, "clustering": "spectral"}),
    ("lrp_epsilon", "B4", {"epsilon": 0.02}),
    ("lrp_gamma", "B3", {"gamma": 1.0, "epsilon": 0.05}),
    ("scorecam", "B4", {"batch_size": 5}),
    ("ablationcam", "B3", {"batch_size": 7}),
]


@pytest.mark.parametrize("name,block,settings", CASES, ids=[c[0] for c in CASES])
def test_explain_with_settings_equals_the_method_called_with_them(model, name, block, settings):
    image = digits_test_batch(3)[0][1]
    explained = explain(model, image, name, block=block, method_settings={name: settings})
    assert explained.settings == {**method_info(name).resolve(None), **settings}
    recorded = trace(model, image[None], blocks=[block])
    direct = method_info(name).compute(recorded, block, model, **settings)
    assert np.allclose(explained.raw, direct.maps[0].numpy(), rtol=1e-5, atol=1e-6 * float(np.abs(explained.raw).max()))
    default = explain(model, image, name, block=block)
    if name in ("scorecam", "ablationcam"):  # the batch size changes the time, never the map
        # ... beyond float32 rounding: another batch size is another convolution algorithm, and Ablation-CAM's
        # weights (y - y_k) / y difference two close logits (measured: 2e-5 of a map whose maximum is 0.44)
        assert np.allclose(explained.raw, default.raw, rtol=1e-4, atol=1e-4 * float(np.abs(default.raw).max()))
    else:
        assert not np.allclose(explained.raw, default.raw), "the settings did not reach the method"


def test_lrp_epsilon_reaches_zennit(model):
    """Against LRP computed here with zennit's epsilon directly, not through the registry."""
    image = digits_test_batch(2)[0][0]
    explained = explain(model, image, "lrp_epsilon", method_settings={"lrp_epsilon": {"epsilon": 0.01}})
    pixels = L.relevance(model, image[None], torch.tensor([explained.target]), rule="epsilon", epsilon=0.01).pixels
    assert np.allclose(explained.raw, pixels.sum(1)[0].numpy(), atol=1e-6)


def test_the_cluster_cam_settings_are_those_of_the_paper(model):
    """Q clusters (eq. 18), base/scissors combined with alpha (eq. 22), by the API's door."""
    image = digits_test_batch(3)[0][2]
    explained = explain(model, image, "clustercam", method_settings={"clustercam": {"q": 3, "alpha": 0.7}})
    parts = explained.extras["cluster_cam"]
    assert parts.q == 3 and explained.forwards == 1 + 3 and parts.alpha == 0.7
    expected = 0.7 * parts.scaled[parts.base] - 0.3 * parts.scaled[parts.scissors]
    assert np.allclose(explained.raw, expected, atol=1e-6)


def test_recombining_alpha_equals_explaining_with_it_and_runs_no_pass(model, monkeypatch):
    image = digits_test_batch(3)[0][0]
    computed = explain(model, image, "clustercam", block="B3", method_settings={"clustercam": {"q": 5}})
    with count_passes(model.net, monkeypatch, model.inference_net) as passes:
        recombined = {alpha: recombine(model, computed, {"alpha": alpha}) for alpha in (0.0, 0.25, 1.0)}
    assert passes.forwards == 0
    for alpha, result in recombined.items():
        direct = explain(model, image, "clustercam", block="B3", method_settings={"clustercam": {"q": 5, "alpha": alpha}})
        assert np.allclose(result.raw, direct.raw, atol=1e-7) and np.allclose(result.heatmap, direct.heatmap, atol=1e-6)
        assert result.settings["alpha"] == alpha and result.extras["cluster_cam"].alpha == alpha
    with pytest.raises(UnknownSettingError, match="only alpha can be changed without recomputing, not q"):
        recombine(model, computed, {"q": 3})


BAD = [  # settings, the error class, what its message must say
    ({"clustercam": {"Q": 4}}, UnknownSettingError, "Cluster-CAM has no setting 'Q'; its settings: q, alpha, clustering"),
    ({"clustercam": {"q": 1}}, SettingValueError, r"Cluster-CAM's q must be an integer in \[2, 16\], not 1"),
    ({"clustercam": {"alpha": 1.5}}, SettingValueError, r"Cluster-CAM's alpha must be a number in \[0, 1\], not 1.5"),
    ({"clustercam": {"clustering": "dbscan"}}, SettingValueError, "must be one of 'kmeans', 'spectral', not 'dbscan'"),
    ({"lrp_epsilon": {"epsilon": 0}}, SettingValueError, r"LRP-ε's epsilon must be a number in \[1e-06, 10\], not 0"),
    ({"lrp_epsilon": {"gamma": 0.5}}, UnknownSettingError, "LRP-ε has no setting 'gamma'; its settings: epsilon"),
    ({"scorecam": {"batch_size": 0}}, SettingValueError, r"an integer in \[1, 1024\] or None"),
    ({"gradcam": {"epsilon": 0.1}}, UnknownSettingError, "Grad-CAM has no setting 'epsilon'; its settings: none"),
    ({"lrp_gamma": {"gamma": 0.5}}, UnknownSettingError, "'lrp_gamma', which is not among the methods explained"),
]


@pytest.mark.parametrize("settings,error,message", BAD, ids=[str(b[0]) for b in BAD])
def test_unknown_or_out_of_range_settings_are_refused_before_any_pass(model, monkeypatch, settings, error, message):
    image = digits_test_batch(1)[0][0]
    chosen = ["gradcam", "clustercam", "lrp_epsilon", "scorecam"]
    with count_passes(model.net, monkeypatch, model.inference_net) as passes:
        with pytest.raises(error, match=message) as raised:
            explain_many(model, image, chosen, method_settings=settings)
    assert isinstance(raised.value, UserInputError)
    assert passes.forwards == 0, "refused at the door, before the shared pass"


def test_cluster_cam_called_directly_takes_the_same_settings(model):
    image = digits_test_batch(1)[0][0]
    recorded = trace(model, image[None], blocks=["B4"])
    output = cluster_cam(recorded, "B4", model, q=3, clustering="kmeans", alpha=1.0)
    parts = output.per_image[0]["cluster_cam"]
    assert parts.q == 3 and np.allclose(output.maps[0].numpy(), parts.scaled[parts.base])


# --- the pages: controls from the declaration, caches keyed on the settings -----------------------

class Passes:
    """Images pushed through ``model.net`` (a new trace runs it) and through ``model.inference_net``
    (the masked and ablated passes), counted apart from now on."""

    def __init__(self, app) -> None:
        model = app.session_state["_selection"].model
        assert model.inference_net is not model.net, "the two counts would mix"
        self.net = self.masked = 0
        self.handles = [model.net.register_forward_hook(self._net),
                        model.inference_net.register_forward_hook(self._masked)]

    def _net(self, _module, inputs, _output) -> None:
        self.net += len(inputs[0])

    def _masked(self, _module, inputs, _output) -> None:
        self.masked += len(inputs[0])

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def test_cluster_cam_page_draws_its_controls_from_the_declaration():
    app = page("pages/clustercam.py", model="digits")
    q, alpha = app.slider(key="cc_q"), app.slider(key="cc_alpha")
    declared = {s.name: s for s in method_info("clustercam").settings}
    assert (q.value, q.min, q.max, q.help) == (6, 2, 16, declared["q"].help)
    assert (alpha.value, alpha.min, alpha.max, alpha.step) == (0.5, 0.0, 1.0, 0.05)
    assert app.radio(key="cc_clustering").options == ["k-means", "spectral"]


def test_cluster_cam_page_alpha_runs_no_pass_and_q_runs_only_the_q_masked_passes():
    st.cache_data.clear()  # Q = 4 must not be cached by an earlier test
    app = page("pages/clustercam.py", model="digits")
    passes = Passes(app)
    try:
        app.slider(key="cc_alpha").set_value(0.8).run()
        assert not app.exception and not app.error
        assert (passes.net, passes.masked) == (0, 0), "changing alpha ran the network"
        assert any("H = 0.80 x base - 0.20 x scissors" in c.value for c in app.caption)
        app.slider(key="cc_q").set_value(4).run()
        assert not app.exception
        assert passes.net == 0, "a new Q traced the image again"
        assert passes.masked == 4, "a new Q: its Q masked inputs only (Grad-CAM and Score-CAM cached)"
        assert len([m for m in app.markdown if m.value.startswith("cluster ")]) == 4
        assert any(m.value.startswith("**Cluster-CAM** · 5 forwards") for m in app.markdown), "the trace + Q"
        app.slider(key="cc_alpha").set_value(0.2).run()
        app.slider(key="cc_q").set_value(6).run()  # back to a Q already computed
        assert (passes.net, passes.masked) == (0, 4), "alpha or a Q seen before ran the network"
        assert any("H = 0.20 x base - 0.80 x scissors" in c.value for c in app.caption)
    finally:
        passes.remove()


def test_lrp_epsilon_on_the_saliency_page_reruns_lrp_alone_on_the_cached_trace(monkeypatch):
    st.cache_data.clear()
    app = page("pages/saliency.py", model="digits", methods="gradcam,lrp_epsilon,scorecam")
    epsilon = app.number_input(key="lrp_epsilon.epsilon")
    assert epsilon.value == L.EPSILON and epsilon.help == method_info("lrp_epsilon").setting("epsilon").help
    assert app.number_input(key="scorecam.batch_size").value is None, "empty: measured per network"
    computed, lrp_passes = [], []
    original, relevance = ui.cache.explain_trace, L.relevance
    monkeypatch.setattr(ui.cache, "explain_trace",
                        lambda model, shared, chosen, *a, **k: computed.append(tuple(chosen)) or original(
                            model, shared, chosen, *a, **k))
    monkeypatch.setattr(L, "relevance", lambda *a, **k: lrp_passes.append(k.get("epsilon")) or relevance(*a, **k))
    passes = Passes(app)
    try:
        epsilon.set_value(0.05).run()
        assert not app.exception and not app.error
        assert computed == [("lrp_epsilon",)], "only LRP is computed again"
        assert lrp_passes == [0.05], "LRP's own pass, with the new epsilon"
        assert (passes.net, passes.masked) == (0, 0), "no new trace, and Score-CAM stayed cached"
        app.number_input(key="lrp_epsilon.epsilon").set_value(L.EPSILON).run()
        assert computed == [("lrp_epsilon",)] and lrp_passes == [0.05], "the first epsilon is still cached"
    finally:
        passes.remove()


def test_methods_without_settings_draw_no_settings_controls():
    app = page("pages/saliency.py", model="digits", methods="gradcam,layercam")
    assert not [e for e in app.expander if e.label.startswith("Settings of")]
    assert not [w for w in [*app.slider, *app.number_input, *app.radio] if "." in (w.key or "")]
