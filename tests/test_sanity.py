"""Sanity checks by weight randomisation (Adebayo et al. 2018; ``explainers.evaluation.sanity``).

What must hold: the loaded model is never changed; a map of the image alone (spectral residual)
correlates 1 with itself at every step; Grad-CAM of the trained digits model does not survive full
randomisation; cascading randomises cumulatively and independent exactly one group, with the same
random weights per group in both modes; the layer groups follow each family's blocks; the scores
agree with a plain computation on the kept maps.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import digits_model, digits_test_batch, hook_counts, one_thread, random_torchvision
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity

from explainers import load_dataset, load_model
from explainers.evaluation import GROUPS, layer_groups, randomization_check, randomized_models
from explainers.evaluation.sanity import ORIGINAL, rank_correlation, structural_similarity_of_maps
from explainers.runtime.errors import MethodUnavailableError, UserInputError


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


@functools.lru_cache(maxsize=None)
def lite0():
    return load_model("efficientnet_lite0")


def owners(net: torch.nn.Module) -> list[str]:
    """Module paths that own parameters or buffers."""
    return [path for path, module in net.named_modules()
            if list(module.parameters(recurse=False)) or list(module.buffers(recurse=False))]


def group_state(net: torch.nn.Module, paths: list[str]) -> dict[str, torch.Tensor]:
    """The parameters of the modules at ``paths``, by full name (buffers aside: a reset may leave them equal)."""
    return {f"{path}.{name}": tensor.detach().clone() for path in paths
            for name, tensor in net.get_submodule(path).named_parameters(recurse=False)}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def all_changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(not torch.equal(a[k], b[k]) for k in a)


# --- the groups ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["digits", "efficientnet_lite0", "resnet18", "vgg16_bn"])
def test_every_weight_belongs_to_exactly_one_group_that_follows_the_blocks(case):
    model = {"digits": digits_model, "efficientnet_lite0": lite0}.get(case, lambda: random_torchvision(case))()
    groups = layer_groups(model)
    assert list(groups) == [g for g in GROUPS if g in groups]
    listed = [path for paths in groups.values() for path in paths]
    assert sorted(listed) == sorted(owners(model.net)), "each module with weights in exactly one group"
    for block, path in model.block_paths.items():  # everything inside a block is that block's
        inside = [p for p in owners(model.net) if p == path or p.startswith(path + ".")]
        assert set(inside) <= set(groups[block])
    expected = {  # (stem, first module of B1's group, classifier)
        "digits": (["conv1", "bn1"], "layer1.0.conv1", ["fc"]),
        "resnet18": (["conv1", "bn1"], "layer1.0.conv1", ["fc"]),
        # a stride-2 stem convolution, then stage 0 at its resolution: B1 is blocks.1 alone; B4 closes with the head
        "efficientnet_lite0": (["conv_stem", "bn1", "blocks.0.0.conv_dw", "blocks.0.0.bn1", "blocks.0.0.conv_pw",
                                "blocks.0.0.bn2"], "blocks.1.0.conv_pw", ["classifier"]),
        # B1 is a max pool: the convolutions of its stage (at 112 px, before it) are B1's, the first stage the stem's
        "vgg16_bn": (["features.0", "features.1", "features.3", "features.4"], "features.7",
                     ["classifier.0", "classifier.3", "classifier.6"]),
    }[case]
    assert groups["stem"] == expected[0]
    assert groups["B1"][0] == expected[1]
    assert groups["classifier"] == expected[2]
    if case == "efficientnet_lite0":
        assert groups["B4"][-2:] == ["conv_head", "bn2"] and groups["B3"][0] == "blocks.3.0.conv_pw"


# --- the copies ------------------------------------------------------------------------------------

def test_cascading_randomises_cumulatively_from_the_top_and_independent_exactly_one_group():
    model = digits_model()
    groups = layer_groups(model)
    original = {group: group_state(model.net, paths) for group, paths in groups.items()}
    cascading = list(randomized_models(model, "cascading"))
    independent = dict(randomized_models(model, "independent"))
    assert [step for step, _ in cascading] == list(groups) == list(GROUPS)
    previous = original
    for k, (step, spec) in enumerate(cascading):
        now = {group: group_state(spec.net, paths) for group, paths in groups.items()}
        done, rest = list(groups)[:k + 1], list(groups)[k + 1:]
        assert all(all_changed(now[g], original[g]) for g in done), f"{step}: every group from the top down to it"
        assert all(same(now[g], original[g]) for g in rest), f"{step}: the groups below keep their weights"
        assert all(same(now[g], previous[g]) for g in done[:-1]), "the groups above keep the weights drawn for them"
        assert same(now[step], group_state(independent[step].net, groups[step])), "one draw per group in both modes"
        previous = now
    for step, spec in independent.items():
        now = {group: group_state(spec.net, paths) for group, paths in groups.items()}
        assert all_changed(now[step], original[step])
        assert all(same(now[g], original[g]) for g in groups if g != step), f"{step} alone"


def test_a_randomised_copy_is_a_model_spec_of_its_own_modules_reset_as_pytorch_builds_them():
    model = digits_model()
    step, spec = next(iter(randomized_models(model, "independent")))
    assert step == "classifier"
    *_, (last, full) = randomized_models(model, "cascading")
    assert last == "stem" and spec.block_paths == model.block_paths and full.classes == model.classes
    for name, path in model.block_paths.items():
        assert full.blocks[name] is full.net.get_submodule(path) and full.blocks[name] is not model.blocks[name]
    assert full.classifier is full.net.fc and spec.classifier is not model.classifier
    assert full.fingerprint != model.fingerprint and spec.fingerprint != full.fingerprint
    bn = full.net.layer2[0].bn1  # batch norms: affine to 1 / 0 and running statistics to 0 / 1
    assert torch.equal(bn.weight, torch.ones_like(bn.weight)) and torch.equal(bn.running_var, torch.ones_like(bn.running_var))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias)) and torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    conv = full.net.layer2[0].conv1.weight  # Conv2d.reset_parameters: Kaiming uniform, bound 1 / sqrt(fan_in)
    bound = 1 / np.sqrt(conv[0].numel())
    assert float(conv.abs().max()) <= bound and float(conv.abs().max()) > 0.9 * bound
    kept = dict(randomized_models(model, "cascading", keep_statistics=True))["stem"].net.layer2[0].bn1  # Adebayo's
    assert torch.equal(kept.weight, bn.weight) and torch.equal(kept.running_var, model.net.layer2[0].bn1.running_var)
    again = dict(randomized_models(model, "cascading"))["stem"]  # seeded: the same copies on every run
    assert all(torch.equal(a, b) for a, b in zip(full.net.state_dict().values(), again.net.state_dict().values()))


def test_the_loaded_model_is_never_changed():
    model = digits_model()
    images, _ = digits_test_batch(1)
    state = {k: v.clone() for k, v in model.net.state_dict().items()}
    fingerprint = replace(model, _fingerprint=None).fingerprint  # hashed from the weights now
    flags = [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.net.modules()]
    hooks = hook_counts(model.net)
    randomization_check(model, images, ["gradcam", "scorecam"], mode="cascading")  # the trace, the inference copy
    randomization_check(model, images, ["gradcam", "lrp_epsilon"], mode="independent")  # zennit's canonizers
    assert all(torch.equal(state[k], v) for k, v in model.net.state_dict().items())
    assert replace(model, _fingerprint=None).fingerprint == fingerprint == model.fingerprint
    assert [(m.training, [p.requires_grad for p in m.parameters(recurse=False)]) for m in model.net.modules()] == flags
    assert hook_counts(model.net) == hooks
    assert all(p.grad is None for p in model.net.parameters())


# --- the check -------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def digits_check(mode: str):
    images, _ = digits_test_batch(8)
    return randomization_check(digits_model(), images, ["gradcam", "spectral_residual"], mode=mode, keep=8)


@pytest.mark.parametrize("mode", ["cascading", "independent"])
def test_a_map_of_the_image_alone_correlates_one_at_every_step(mode):
    result = digits_check(mode)
    rows = result.table[result.table.method == "spectral_residual"]
    assert list(rows.step) == [ORIGINAL, *GROUPS]
    assert np.allclose(rows.spearman, 1) and np.allclose(rows.ssim, 1) and np.allclose(rows.spearman_signed, 1)
    flag = result.flags()["spectral_residual"]
    assert "does not depend on the model's weights" in flag and "computed from the image alone" in flag


def test_gradcam_of_the_trained_digits_model_falls_well_below_it_by_full_randomisation():
    result = digits_check("cascading")
    final = result.final("gradcam")
    assert final.step == "stem" and final.randomised == ", ".join(GROUPS)
    assert final.spearman < 0.3 and final.ssim < 0.5, final
    assert result.final("spectral_residual").spearman - final.spearman > 0.7
    assert "gradcam" not in result.flags()
    original = result.table[(result.table.method == "gradcam") & (result.table.step == ORIGINAL)].iloc[0]
    assert original.spearman == pytest.approx(1) and original.ssim == pytest.approx(1)


def test_the_scores_are_those_of_a_plain_computation_on_the_kept_maps():
    result = digits_check("cascading")
    maps = result.maps["gradcam"]
    assert set(maps) == set(result.steps) and maps[ORIGINAL].shape == (8, 64, 64)
    for step in result.steps[1:]:
        rhos, ssims = [], []
        for before, after in zip(maps[ORIGINAL], maps[step]):
            a, b = np.abs(before).astype(np.float64), np.abs(after).astype(np.float64)
            if np.ptp(b) == 0:
                continue
            rhos.append(spearmanr(a.ravel(), b.ravel())[0])
            ssims.append(structural_similarity((a - a.min()) / np.ptp(a), (b - b.min()) / np.ptp(b), data_range=1))
        row = result.table[(result.table.method == "gradcam") & (result.table.step == step)].iloc[0]
        assert row.spearman == pytest.approx(np.mean(rhos), abs=1e-9)
        assert row.images == 8 and row.constant == 8 - len(rhos)
        if row.constant == 0:
            assert row.ssim == pytest.approx(np.mean(ssims), abs=1e-9)


def test_similarity_known_answers():
    ramp = np.arange(64.0).reshape(8, 8)
    assert rank_correlation(ramp, ramp ** 3 + 5) == pytest.approx(1)  # ranks only: any increasing map
    assert rank_correlation(ramp, -ramp) == pytest.approx(-1)
    assert np.isnan(rank_correlation(ramp, np.zeros_like(ramp)))  # a constant map has no ranks
    assert structural_similarity_of_maps(ramp, 3 * ramp + 1) == pytest.approx(1)  # scaled to [0, 1] first
    assert structural_similarity_of_maps(ramp, ramp.T) < 0.99


def test_every_kind_of_method_runs_on_the_copies_with_progress_for_each_step_and_batch():
    model = digits_model()
    images, _ = digits_test_batch(3)
    seen = []
    result = randomization_check(model, images, ["gradcam", "scorecam", "lrp_epsilon", "eigencam", "local_entropy"],
                                 block="B3", mode="independent", batch_size=2,
                                 progress=lambda fraction, text: seen.append((fraction, text)))
    assert len(result.table) == 5 * 7 and result.targets == [int(t) for t in model.net(images).argmax(1)]
    for method in result.methods:  # a value for every step, or the honest reason there is none
        for row in result.table[result.table.method == method].itertuples():
            assert not np.isnan(row.ssim) or (method, row.step) in result.failures
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1
    steps = [text for _, text in seen if text.startswith(("original model:", "randomised"))]
    assert len(steps) == 7 * 2 and steps[-1] == "randomised stem: images 3-3 of 3"  # 7 steps x 2 batches


def test_refusals_say_why():
    model = digits_model()
    images, _ = digits_test_batch(1)
    with pytest.raises(MethodUnavailableError, match="prototypes"):
        randomization_check(model, images, ["kmex_attribution"])
    with pytest.raises(UserInputError, match="mode"):
        randomization_check(model, images, ["gradcam"], mode="sideways")
    with pytest.raises(UserInputError, match="block"):
        randomization_check(model, images, ["gradcam"], block="B7")
    with pytest.raises(UserInputError, match="not among the methods"):
        randomization_check(model, images, ["gradcam"], method_settings={"scorecam": {"batch_size": 4}})
    with pytest.raises(UserInputError, match="Score-CAM"):
        randomization_check(model, images, ["scorecam"], method_settings={"scorecam": {"batch_size": 0}})
    with pytest.raises(MethodUnavailableError, match="last block"):
        randomization_check(model, images, ["cam"], block="B2")


# --- the page --------------------------------------------------------------------------------------

def sanity_page(run: bool = True, **query: str):
    """The page on digits; ``run``: with its Run button pressed (the check runs only when asked, issue 21)."""
    from test_app import page

    app = page("pages/sanity.py", model="digits", **query)
    if run:
        app.button(key="sanity_run").click().run()
        assert not app.exception, app.exception
    return app


def test_the_first_view_runs_no_check_and_says_what_run_will_compute(monkeypatch):
    """The page opens in seconds: the controls and what Run computes, no map; Run checks, a rerun shows the check
    again without running it, and another setting asks for Run again."""
    import ui.sanity

    calls = []
    monkeypatch.setattr(ui.sanity, "randomization_check", lambda *a, **k: calls.append(a) or randomization_check(*a, **k))
    ui.sanity.randomisation.clear()
    app = sanity_page(run=False, methods="gradcam,spectral_residual")
    assert not calls and not app.get("plotly_chart") and not app.image
    what = app.info[0].value
    assert "with 2 methods at **B4**" in what and "up to 14 maps" in what and "classifier, B4, B3, B2, B1, stem" in what
    app.button(key="sanity_run").click().run()
    assert not app.exception and len(calls) == 1 and len(app.get("plotly_chart")) == 1
    app.run()
    assert len(calls) == 1 and len(app.get("plotly_chart")) == 1 and "sanity_run" not in [b.key for b in app.button]
    app.number_input(key="sanity_images").set_value(2).run()
    assert not app.get("plotly_chart") and "and 2 digits images" in app.info[0].value
    assert "have not been run in this session yet" in app.info[0].value


def test_page_shows_a_row_of_maps_per_method_the_curves_the_flags_and_the_downloads():
    import ui.sanity

    ui.sanity.randomisation.clear()
    app = sanity_page(methods="gradcam,spectral_residual,kmex_attribution", sanity_images="7")
    main = " ".join(m.value for m in app.markdown)
    assert "for the current image and 7 digits images" in main and "cascading randomisation" in main
    assert [m.value for m in app.markdown if m.value.startswith("**") and m.value.endswith("**")] == \
        ["**Grad-CAM**", "**Spectral residual**"]
    captions = [c.value for c in app.caption]
    assert any("k-means attribution" in c and "prototypes" in c for c in captions), "the prototype method: why not"
    assert sum(c.startswith(("original ·", "→ ")) for c in captions) == 2 * 7, "one map per method and step"
    assert len(app.warning) == 1, [w.value for w in app.warning]
    assert app.warning[0].value.startswith("Spectral residual does not depend on the model's weights on these 8 images")
    assert "Grad-CAM" in app.success[0].value
    assert len(app.get("plotly_chart")) == 1
    assert [b.proto.label for b in app.get("download_button")] == ["Table (CSV)", "Curves (PNG)", "Maps (PNG)"]
    assert not app.error


def test_page_switches_to_independent_randomisation_and_keeps_the_choice_in_the_url():
    app = sanity_page(methods="gradcam", sanity_mode="independent")
    captions = [c.value for c in app.caption]
    assert sum(c.startswith(("original ·",)) for c in captions) == 1
    assert sum(c.endswith(" only") or " only · " in c for c in captions) == 6, captions
    assert "independent randomisation" in " ".join(m.value for m in app.markdown)
    app.radio(key="sanity_mode").set_value("cascading").run()
    assert not app.exception and app.query_params["sanity_mode"] in ("cascading", ["cascading"])
    app.button(key="sanity_run").click().run()  # another check: run when asked
    reset = [c.value for c in app.caption if c.value.startswith("→ ")]
    assert len(reset) == 6
    app.toggle(key="sanity_keep_statistics").set_value(True).run()  # Adebayo's batch norms: another network
    app.button(key="sanity_run").click().run()
    assert not app.exception and app.query_params["sanity_keep_statistics"] in ("1", ["1"])
    kept = [c.value for c in app.caption if c.value.startswith("→ ")]
    assert len(kept) == 6 and kept[0] == reset[0] and kept[1:] != reset[1:]  # the classifier has no batch norm


def test_page_says_why_nothing_can_be_checked():
    app = sanity_page(run=False, methods="kmex_attribution")
    assert "Choose at least one method" in app.info[0].value and not app.exception


def test_the_real_app_runs_the_page_without_drawing_stray_values():
    """Through app.py's navigation, where Streamlit's magic draws any bare expression of a page script."""
    from streamlit.testing.v1 import AppTest
    from test_app import REPO, TIMEOUT

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params["model"] = "digits"
    app.query_params["methods"] = "gradcam,kmex_attribution"
    app.run()
    app.switch_page("pages/sanity.py").run()
    app.button(key="sanity_run").click().run()
    assert not app.exception, app.exception
    assert app.get("plotly_chart"), "the check did not run"
    assert not [m.value for m in app.markdown if m.value.strip("`") == "None"]
    assert app.title[0].value == "Sanity checks"


def test_on_the_builtin_imagenet_model_every_method_kind_runs_and_the_shared_model_is_untouched():
    model = lite0()
    photo = load_dataset("photos", "train")[0][0]
    state = {k: v.clone() for k, v in model.net.state_dict().items()}
    result = randomization_check(model, [photo], ["gradcam", "lrp_epsilon", "spectral_residual"], mode="independent")
    assert result.steps == [ORIGINAL, *GROUPS]
    assert np.allclose(result.table[result.table.method == "spectral_residual"].spearman, 1)
    gradcam = result.table[(result.table.method == "gradcam") & (result.table.step != ORIGINAL)]
    assert gradcam.spearman.min() < 0.5, "randomising some group changes Grad-CAM's map of the cat"
    assert all(torch.equal(state[k], v) for k, v in model.net.state_dict().items())


def test_a_dataset_subset_is_taken_like_the_faithfulness_metrics_take_it():
    from explainers import load_dataset
    from explainers.evaluation import randomization_check, subset
    from tests.helpers import digits_model

    model = digits_model()
    images = subset(load_dataset("digits", "test"), 3)
    result = randomization_check(model, images, ["spectral_residual"])
    assert set(result.table["images"]) == {3} and (result.table["spearman"] == 1).all()
