"""Faithfulness metrics (``explainers.evaluation``): constructed cases with known answers, agreement
with a plain loop over images and steps written here, sharing of perturbed inputs, and a 50-image run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import one_thread
from scipy.ndimage import gaussian_filter
from torch import nn

from explainers import explain_many, load_dataset, load_model
from explainers.evaluation import (
    BLUR_LADDER,
    METRICS,
    EvaluationSettings,
    ImputedInput,
    MetricWarning,
    deletion_baseline,
    evaluate,
    evaluate_maps,
    insertion_blur,
    noisy_linear_imputation,
    planned_evaluation,
    rise_blur,
    subset,
    unit_scaled,
)
from explainers.evaluation.imputation import NEIGHBOURS
from explainers.models.inputs import as_batch
from explainers.models.loading import from_module
from explainers.models.preprocess import Preprocess
from explainers.runtime.settings import SettingValueError


@pytest.fixture(scope="module")
def digits():
    return load_model("digits")


@pytest.fixture(scope="module")
def digit_inputs(digits):
    return as_batch(digits, [image for image, _ in subset(load_dataset("digits", "test"), 3)])


# ------------------------------------------------------------------------------- constructed cases

def test_a_map_of_ones_drops_nothing_and_increases_nothing(digits, digit_inputs):
    """X o 1 = X: drop 0 and no increase (seed 002 eq. 23), with no pass beyond the images themselves."""
    ones = np.ones((len(digit_inputs), *digits.input_size), dtype=np.float32)
    with one_thread():
        found = evaluate_maps(digits, digit_inputs, {"ones": ones}, metrics=("confidence",))
    table = found.confidence_table()
    assert table.loc[0, "drop"] == 0.0 and table.loc[0, "increase"] == 0.0
    assert found.inputs_run == len(digit_inputs)


def test_drop_and_increase_follow_equation_23(digits, digit_inputs):
    """drop = mean max(0, S(X) - S(XoH)) / S(X) in %, increase = % of S(XoH) > S(X), from the stored scores."""
    rng = np.random.default_rng(1)
    maps = rng.random((len(digit_inputs), *digits.input_size)).astype(np.float32)
    with one_thread():
        found = evaluate_maps(digits, digit_inputs, {"noise": maps}, metrics=("confidence",))
    original, masked = found.original, found.masked["noise"]
    table = found.confidence_table()
    assert table.loc[0, "drop"] == pytest.approx(100 * np.mean(np.maximum(0, original - masked) / original))
    assert table.loc[0, "increase"] == pytest.approx(100 * np.mean(masked > original))


class LinearModel(nn.Module):
    """logit_1 = <W, x> + b, logit_0 = 0, behind a 1x1 convolution of weight 1 that serves as the block."""

    def __init__(self, weights: torch.Tensor, bias: float) -> None:
        super().__init__()
        self.block = nn.Conv2d(1, 1, 1, bias=False)
        self.fc = nn.Linear(weights.numel(), 2)
        with torch.no_grad():
            self.block.weight.fill_(1.0)
            self.fc.weight.zero_()
            self.fc.weight[1] = weights.reshape(-1)
            self.fc.bias.copy_(torch.tensor([0.0, bias]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).flatten(1))


def test_on_a_linear_model_its_weight_image_beats_its_negation():
    """With logit = <W, x> + b and an image of bright spots where W is high, removing pixels in the order
    of W lowers the class fastest (smaller deletion AUC) and inserting them in that order raises it
    fastest (larger insertion AUC) than in the order of -W."""
    rng = np.random.default_rng(0)
    side = 16
    spots = rng.choice(side * side, size=10, replace=False)
    weights = torch.from_numpy(-0.3 - 0.1 * rng.random(side * side)).float()
    weights[spots] = torch.from_numpy(0.5 + 0.5 * rng.random(10)).float()
    image = torch.zeros(side * side)
    image[spots] = 2.0
    model = from_module(LinearModel(weights.view(side, side), bias=-7.0), "linear", input_size=(side, side),
                        blocks=["block"])
    assert float(deletion_baseline(model).abs().max()) == 0.0  # normalisation mean 0.5 -> model value 0
    weight_map = weights.view(1, side, side).numpy()
    with one_thread():
        found = evaluate_maps(model, image.view(1, 1, side, side), {"weights": weight_map, "negated": -weight_map},
                              targets=1, metrics=("deletion", "insertion"), settings=EvaluationSettings(steps=16))
    deletion, insertion = found.aucs("deletion"), found.aucs("insertion")
    assert deletion["weights"][0] < deletion["negated"][0] - 0.2
    assert insertion["weights"][0] > insertion["negated"][0] + 0.2
    # Both curves end where the other starts: the full image, and the baseline / blurred copy.
    assert found.deletion["weights"][0, 0] == found.insertion["negated"][0, -1]


def test_road_imputation_of_a_constant_image_is_that_constant():
    image = torch.full((3, 20, 24), 0.7)
    removed = torch.from_numpy(np.random.default_rng(0).random((20, 24)) < 0.6)
    exact = noisy_linear_imputation(image, removed, noise=0.0)
    assert torch.allclose(exact, image, atol=1e-6)
    noisy = noisy_linear_imputation(image, removed, noise=0.01, seed=3)
    assert torch.equal(noisy[:, ~removed], image[:, ~removed])  # kept pixels untouched
    assert float((noisy - image)[:, removed].std()) == pytest.approx(0.01, rel=0.1)


def test_road_imputation_solves_its_neighbourhood_equations():
    """Each removed pixel is the weighted mean (1/6 direct, 1/12 diagonal) of its in-image neighbours."""
    rng = np.random.default_rng(2)
    image = torch.from_numpy(rng.random((2, 12, 10))).float()
    removed = rng.random((12, 10)) < 0.5
    filled = noisy_linear_imputation(image, removed, noise=0.0).double().numpy()
    for y, x in zip(*np.nonzero(removed)):
        total, weight = 0.0, 0.0
        for (dy, dx), w in NEIGHBOURS:
            if 0 <= y + dy < 12 and 0 <= x + dx < 10:
                total, weight = total + w * filled[:, y + dy, x + dx], weight + w
        np.testing.assert_allclose(filled[:, y, x], total / weight, atol=1e-9)


def test_signed_maps_are_scaled_min_max_and_settings_are_checked():
    assert unit_scaled(np.array([[-2.0, 0.0], [1.0, 2.0]])).tolist() == [[0.0, 0.5], [0.75, 1.0]]
    with pytest.raises(SettingValueError):
        EvaluationSettings(steps=1)
    with pytest.raises(SettingValueError):
        EvaluationSettings(road_fractions=(0.5, 1.0))


# ------------------------------------------------------------------------------- against a plain loop

def _probability(model, x: torch.Tensor, target: int) -> float:
    with torch.no_grad():
        return float(model.net(x.unsqueeze(0)).softmax(dim=1)[0, target])


def _order(heatmap: np.ndarray, seed: int) -> list[int]:
    values = heatmap.reshape(-1).astype(np.float64)
    tiebreak = np.random.default_rng(seed).permutation(values.size)
    return sorted(range(values.size), key=lambda p: (-values[p], tiebreak[p]))


def _gkern(klen: int, nsig: float, channels: int) -> torch.Tensor:
    """RISE's evaluation.py, gkern, written out again (for ``channels`` rather than 3)."""
    inp = np.zeros((klen, klen))
    inp[klen // 2, klen // 2] = 1
    k = gaussian_filter(inp, nsig)
    kern = np.zeros((channels, channels, klen, klen))
    for c in range(channels):
        kern[c, c] = k
    return torch.from_numpy(kern.astype("float32"))


def _rise_blur(x: torch.Tensor, klen: int, nsig: float) -> torch.Tensor:
    """RISE's ``blur = lambda x: nn.functional.conv2d(x, kern, padding=klen//2)``."""
    return nn.functional.conv2d(x, _gkern(klen, nsig, x.shape[1]), padding=klen // 2)


def _dense_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Noise-free linear imputation by a dense solve, one pixel at a time."""
    channels, height, width = image.shape
    unknown = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {p: i for i, p in enumerate(unknown)}
    system = np.zeros((len(unknown), len(unknown)))
    right = np.zeros((len(unknown), channels))
    for i, (y, x) in enumerate(unknown):
        for (dy, dx), w in NEIGHBOURS:
            if 0 <= y + dy < height and 0 <= x + dx < width:
                system[i, i] += w
                if removed[y + dy, x + dx]:
                    system[i, index[y + dy, x + dx]] -= w
                else:
                    right[i] += w * image[:, y + dy, x + dx]
    filled = image.copy()
    solution = np.linalg.solve(system, right)
    for i, (y, x) in enumerate(unknown):
        filled[:, y, x] = solution[i]
    return filled


def test_every_metric_agrees_with_a_plain_loop_over_images_and_steps(digits, digit_inputs):
    """On the digits model: maps from ``explain_many``, then every perturbed input built and scored one at
    a time on the model itself (not the inference copy), AUCs by the trapezoid rule written out."""
    images = digit_inputs[:2]
    names = ["gradcam", "scorecam"]
    settings = EvaluationSettings(steps=8, road_fractions=(0.2, 0.4), road_noise=0.0, blur_sigma=20.0)
    with one_thread():
        found = evaluate(digits, images, names, block="B3", settings=settings)
        maps = [explain_many(digits, image, names, block="B3") for image in images]
    baseline = deletion_baseline(digits).view(-1, 1, 1)
    blurred = _rise_blur(images, 41, 20.0)
    pixels = 64 * 64
    for i, x in enumerate(images):
        target = int(found.targets[i])
        original = _probability(digits, x, target)
        assert found.original[i] == pytest.approx(original, abs=1e-4)
        for name in names:
            heatmap = maps[i][name].heatmap
            h = (heatmap - heatmap.min()) / (heatmap.max() - heatmap.min())
            assert found.masked[name][i] == pytest.approx(_probability(digits, x * torch.from_numpy(h), target), abs=1e-4)
            order = _order(heatmap, settings.seed)
            deletion, insertion = [], []
            for step in range(settings.steps + 1):
                k = round(step * pixels / settings.steps)
                chosen = torch.zeros(pixels, dtype=torch.bool)
                chosen[order[:k]] = True
                chosen = chosen.view(64, 64)
                deletion.append(_probability(digits, torch.where(chosen, baseline, x), target))
                insertion.append(_probability(digits, torch.where(chosen, x, blurred[i]), target))
            np.testing.assert_allclose(found.deletion[name][i], deletion, atol=1e-4)
            np.testing.assert_allclose(found.insertion[name][i], insertion, atol=1e-4)
            area = sum((deletion[s] + deletion[s + 1]) / 2 / settings.steps for s in range(settings.steps))
            assert found.aucs("deletion")[name][i] == pytest.approx(area, abs=1e-4)
            for column, fraction in enumerate(settings.road_fractions if i == 0 else ()):  # dense solves: one image
                k = round(fraction * pixels)
                for kind, removed_pixels in (("morf", order[:k]), ("lerf", order[pixels - k:])):
                    removed = np.zeros(pixels, dtype=bool)
                    removed[removed_pixels] = True
                    filled = _dense_imputation(x.double().numpy(), removed.reshape(64, 64))
                    expected = _probability(digits, torch.from_numpy(filled).float(), target)
                    assert getattr(found, kind)[name][i, column] == pytest.approx(expected, abs=1e-4)


def test_the_insertion_blur_is_risés_gkern_with_zero_padding():
    """RISE's own blur (gkern(11, 5), conv2d with zero padding klen // 2) on a constructed 3-channel image,
    against rise_blur at sigma 5; the other sigmas extend it with klen = 2 sigma + 1."""
    image = torch.from_numpy(np.random.default_rng(5).normal(size=(2, 3, 30, 26))).float()
    image[:, :, 10:20, 5:9] += 3.0  # a bright block near nothing in particular
    np.testing.assert_allclose(rise_blur(image, 5.0), _rise_blur(image, 11, 5), atol=1e-5)
    np.testing.assert_allclose(rise_blur(image, 10.0), _rise_blur(image, 21, 10), atol=1e-5)
    reflected = rise_blur(image, 5.0, "reflect")
    assert torch.allclose(reflected[..., 8:-8, 8:-8], rise_blur(image, 5.0)[..., 8:-8, 8:-8], atol=1e-5)
    assert not torch.allclose(reflected[..., :3, :3], rise_blur(image, 5.0)[..., :3, :3], atol=1e-2)  # the border


def test_road_imputes_and_adds_its_noise_in_pixels_before_the_normalisation():
    """One removed pixel of a constructed one-channel image, normalised with mean 0.3 and std 0.32 (the digits'):
    in pixels it becomes the weighted mean of its neighbours' pixels plus the seeded draw of N(0, 0.01), then
    normalised; in model units the draw is added to the normalised mean, 1/0.32 times less noise in pixels."""
    transform = Preprocess(input_size=(5, 5), mode="L", mean=(0.3,), std=(0.32,))
    pixels = torch.from_numpy(np.random.default_rng(6).random((1, 1, 5, 5))).float()
    inputs = transform.model_values(pixels)
    mask = np.zeros(25, dtype=bool)
    mask[12] = True  # the centre, with all eight neighbours kept
    weights = {(dy, dx): w for (dy, dx), w in NEIGHBOURS}
    mean_pixel = sum(w * float(pixels[0, 0, 2 + dy, 2 + dx]) for (dy, dx), w in weights.items()) / sum(weights.values())
    found = {}
    for units in ("pixels", "model"):
        case = ImputedInput(0, mask, seed=0)
        case.prepare(inputs, EvaluationSettings(road_noise=0.01, road_units=units), transform)
        found[units] = case.imputed
        draw = float(np.random.default_rng(case.seed).normal(0.0, 0.01, size=(1, 1))[0, 0])
    assert float(found["pixels"][0, 2, 2]) == pytest.approx((mean_pixel + draw - 0.3) / 0.32, abs=1e-6)
    assert float(found["model"][0, 2, 2]) == pytest.approx((mean_pixel - 0.3) / 0.32 + draw, abs=1e-6)
    kept = torch.from_numpy(~mask.reshape(5, 5))
    assert torch.equal(found["pixels"][0][kept], inputs[0, 0][kept])  # kept pixels exactly as they were


def _blurred_probability(model, images: torch.Tensor, sigma: float, targets: torch.Tensor) -> float:
    klen = 2 * int(round(sigma)) + 1
    with torch.no_grad():
        probabilities = model.net(_rise_blur(images, klen, sigma)).softmax(dim=1)
    return float(probabilities.gather(1, targets[:, None]).mean())


@pytest.mark.parametrize("name", ["digits", "digits_marked"])
def test_the_measured_blur_is_the_smallest_that_hides_the_class(name):
    """The rule, checked by recomputing the blurred copies with RISE's code here: the chosen sigma's copy scores
    below half of the images' own probability on average, the next smaller sigma's does not; on digits that is
    not RISE's 5 (a 64-pixel digit stays readable). ``digits_marked`` goes through the same rule (no name)."""
    model = load_model(name)
    images = subset(load_dataset(name, "test"), 20)
    inputs = as_batch(model, [image for image, _ in images])
    with one_thread():
        choice = insertion_blur(model, images)
        with torch.no_grad():
            full_probabilities = model.net(inputs).softmax(dim=1)
    targets = full_probabilities.argmax(dim=1)
    full = float(full_probabilities.max(dim=1).values.mean())
    assert choice.full == pytest.approx(full, abs=1e-4) and choice.meaningful
    assert _blurred_probability(model, inputs, choice.sigma, targets) < 0.5 * full
    smaller = [s for s in BLUR_LADDER if s < choice.sigma]
    if smaller:
        assert _blurred_probability(model, inputs, smaller[-1], targets) >= 0.5 * full
    if name == "digits":
        assert choice.sigma > 5.0
    with one_thread():
        found = evaluate_maps(model, inputs[:4], {"random": np.random.default_rng(0).random((4, *model.input_size))},
                              metrics=("insertion",))
    assert found.blur is not None and found.settings.blur_sigma == found.blur.sigma


class ConstantModel(nn.Module):
    """Logits (0, 1) whatever the input: no blur can hide its class."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Conv2d(1, 1, 1)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([0.0, 1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(x).mean(dim=(1, 2, 3))[:, None])


def test_insertion_is_flagged_in_the_api_when_no_blur_hides_the_class():
    model = from_module(ConstantModel(), "constant", input_size=(16, 16), blocks=["block"])
    images = torch.from_numpy(np.random.default_rng(7).random((2, 1, 16, 16))).float()
    maps = {"random": np.random.default_rng(8).random((2, 16, 16))}
    with one_thread(), pytest.warns(MetricWarning, match="Insertion cannot rank the maps here"):
        found = evaluate_maps(model, images, maps, targets=1, metrics=("deletion", "insertion"))
    assert found.blur is not None and not found.blur.meaningful and found.blur.sigma == max(BLUR_LADDER)
    problem = found.problems()["insertion"]
    assert problem == found.insertion_problem() == found.blur.problem
    assert "even the strongest blur" in problem and "Metric settings" not in problem and "*" not in problem
    assert "deletion" not in found.problems()


def test_every_metric_states_its_constants_and_the_papers():
    for metric in METRICS.values():
        assert metric.constants, metric.name
        for constant in metric.constants:
            assert constant.source and constant.describe().startswith(f"{constant.name} = ")
    named = {metric.name: {c.name: c for c in metric.constants} for metric in METRICS.values()}
    assert {"blur_sigma", "blur kernel", "blur_padding", "ties"} <= set(named["insertion"])
    assert named["insertion"]["blur_padding"].value == EvaluationSettings.parameter("blur_padding").default == "zeros"
    assert named["road"]["road_units"].value == EvaluationSettings().road_units == "pixels"
    assert EvaluationSettings().blur_sigma is None  # measured
    for name in ("blur kernel", "blur_padding", "blur_sigma"):
        assert named["insertion"][name].paper and named["insertion"][name].differs


# ------------------------------------------------------------------------------- sharing and the full run

def test_inputs_shared_by_metrics_and_methods_run_once(digits, digit_inputs):
    """Two methods with the same maps cost no more passes than one; the plain image, the blurred copy and
    the all-deleted image run once per image whatever the number of methods and metrics."""
    rng = np.random.default_rng(4)
    maps = rng.random((len(digit_inputs), *digits.input_size)).astype(np.float32)
    settings = EvaluationSettings(steps=5, road_fractions=(0.5,))
    with one_thread():
        one = evaluate_maps(digits, digit_inputs, {"a": maps}, settings=settings)
        two = evaluate_maps(digits, digit_inputs, {"a": maps, "b": maps.copy()}, settings=settings)
    per_image = 1 + 2 + 1 + (5 - 1) * 2 + 2  # X, blurred and baseline, XoH, inner steps, MoRF and LeRF
    assert one.inputs_run == two.inputs_run == per_image * len(digit_inputs)
    assert two.inputs_requested == 2 * one.inputs_requested - len(digit_inputs)  # the plain images once
    for kind in ("masked", "deletion", "insertion", "morf", "lerf"):
        np.testing.assert_array_equal(getattr(two, kind)["a"], getattr(two, kind)["b"])


def test_a_planned_evaluation_counts_the_inputs_a_run_makes(digits, digit_inputs):
    """planned_evaluation counts, without running, what evaluate runs: with maps that share no step (random
    ones) exactly the distinct inputs of the run, ROAD's imputed ones among them, and the blur's passes when the
    blur is measured; with real maps at most as many (two maps that order the pixels alike share their steps)."""
    settings = EvaluationSettings(steps=5, road_fractions=(0.3, 0.6))
    rng = np.random.default_rng(5)
    maps = {name: rng.random((len(digit_inputs), *digits.input_size)).astype(np.float32) for name in ("a", "b")}
    with one_thread():
        random = evaluate_maps(digits, digit_inputs, maps, settings=settings)
        real = evaluate(digits, digit_inputs, ["gradcam", "cam", "eigencam"], settings=settings)
    two = planned_evaluation(digits, ["gradcam", "cam"], images=len(digit_inputs), settings=settings)
    assert two.inputs == random.inputs_run
    assert two.imputed == 2 * 2 * 2 * len(digit_inputs)  # MoRF and LeRF at two levels, per method and image
    assert two.blur_passes == (1 + len(BLUR_LADDER)) * len(digit_inputs)  # the blur is measured (None)
    assert two.seconds == two.passes * two.seconds_per_input > 0
    three = planned_evaluation(digits, ["gradcam", "cam", "eigencam"], images=len(digit_inputs), settings=settings)
    assert real.inputs_run <= three.inputs
    fixed = planned_evaluation(digits, ["gradcam", "cam", "eigencam"], images=len(digit_inputs),
                               metrics=("confidence", "insertion"), settings=EvaluationSettings(blur_sigma=20.0))
    assert fixed.blur_passes == 0 and fixed.imputed == 0
    assert planned_evaluation(digits, ["cam", "gradcam"], block="B2").methods == 1  # CAM is for the last block


def test_fifty_test_digits_finish_with_progress_and_table_2(digits):
    images = subset(load_dataset("digits", "test"), 50)
    assert len(images) == 50 and len(set(images.labels.tolist())) == 10
    fractions = []
    with one_thread():
        found = evaluate(digits, images, ["gradcam", "clustercam"],
                         settings=EvaluationSettings(steps=10, road_fractions=(0.2, 0.5, 0.8), blur_sigma=20.0),
                         progress=lambda fraction, text: fractions.append(fraction))
    assert found.images == 50 and not found.failures
    assert fractions[-1] == pytest.approx(1.0) and fractions == sorted(fractions)
    assert list(found.confidence_table()["method"]) == ["gradcam", "clustercam"]
    assert found.insertion_problem() is None
    timing = found.timing_table().set_index("method")
    assert timing.loc["gradcam", "forwards"] == 1 and timing.loc["gradcam", "backwards"] == 1
    assert timing.loc["clustercam", "forwards"] == 7  # the shared pass + Q = 6 masked inputs (seed 002, Table 2)
    assert (timing["seconds"] > 0).all()
    auc = found.auc_table().set_index("method")
    assert (auc["deletion"] < auc["insertion"]).all()  # both maps find what the network reads
    road_table = found.road_table().set_index("method")
    assert (road_table["gap"] > 0).all()


def test_a_method_that_does_not_apply_is_named_not_scored(digits, digit_inputs):
    with one_thread():
        found = evaluate(digits, digit_inputs[:1], ["cam", "gradcam"], block="B2", metrics=("confidence",))
    assert found.methods == ["gradcam"] and "cam" in found.failures


# ------------------------------------------------------------------------------- the page

@pytest.fixture
def evaluations(monkeypatch):
    """The page's evaluations, counted: ``evaluate`` as ``ui.evaluation_cache`` calls it, its cache emptied."""
    import ui.evaluation_cache

    calls = []

    def counted(*args, **kwargs):
        calls.append(args)
        return evaluate(*args, **kwargs)

    ui.evaluation_cache.evaluation.clear()
    monkeypatch.setattr(ui.evaluation_cache, "evaluate", counted)
    return calls


def test_the_first_view_scores_nothing_and_says_what_run_will_cost(evaluations):
    """Issue 21: the page opens in seconds. Its first view is the controls, the constants and what Run will
    compute (methods × metrics × images, the passes counted from the metrics' plans and the measured time per
    pass); nothing is scored until Run, then the tables stay on every rerun without asking again."""
    from test_app import page

    app = page("pages/evaluation.py", model="digits", methods="gradcam,scorecam,cam")
    assert not app.error, [e.value for e in app.error]
    assert app.title[0].value == "Evaluation"
    assert not evaluations and not app.dataframe
    assert [b.key for b in app.button] == ["eval_run"] and app.button(key="eval_run").label == "Run the evaluation"
    what = app.info[0].value
    plan = planned_evaluation(load_model("digits"), ["gradcam", "scorecam", "cam"],
                              settings=EvaluationSettings(road_fractions=(0.1, 0.3, 0.5, 0.7, 0.9)))
    assert "3 methods × 4 metrics" in what and "× 1 image (digits test #0" in what and "at **B4**" in what
    assert f"at most {plan.passes:,} passes through digits" in what and "per input measured here" in what
    assert f"ROAD first fills in {plan.imputed:,} inputs" in what
    constants = " ".join(m.value for m in app.markdown)  # the constants are there before any run
    assert "blur_padding = zeros" in constants and "road_units = pixels" in constants and "**differs**" in constants

    app.button(key="eval_run").click().run()
    assert not app.exception, app.exception
    assert len(evaluations) == 1 and len(app.dataframe) == 4
    app.run()  # any rerun (a widget elsewhere, the sidebar): shown again, from the session's cache
    assert len(evaluations) == 1 and len(app.dataframe) == 4
    assert "eval_run" not in [b.key for b in app.button]  # asked for: no button, the result

    app.selectbox(key="eval_blur").set_value(10.0).run()  # another key: not run yet, and said so
    assert not app.dataframe and "have not been run in this session yet" in app.info[0].value
    app.selectbox(key="eval_blur").set_value("measured").run()  # the earlier run comes back, unasked
    assert len(evaluations) == 1 and len(app.dataframe) == 4


def test_coming_back_to_the_page_shows_the_run_with_its_settings(evaluations):
    """Through app.py's navigation: a set of test images run, another page opened, and back: the page's
    controls kept their values (Streamlit drops a widget's value while its page is not drawn) and the result
    is shown without pressing Run again."""
    from streamlit.testing.v1 import AppTest
    from test_app import REPO, TIMEOUT

    app = AppTest.from_file(str(REPO / "app.py"), default_timeout=TIMEOUT)
    app.query_params["model"] = "digits"
    app.query_params["methods"] = "gradcam"
    app.run()
    app.switch_page("pages/evaluation.py").run()
    app.radio(key="eval_images").set_value("dataset").run()
    app.number_input(key="eval_count").set_value(3).run()
    app.select_slider(key="eval_steps").set_value(10).run()
    assert not app.dataframe and not evaluations
    app.button(key="eval_run").click().run()
    assert not app.exception, app.exception
    assert len(evaluations) == 2 and app.dataframe  # the set, and the curves of the sidebar's image
    app.switch_page("pages/overview.py").run()
    app.switch_page("pages/evaluation.py").run()
    assert not app.exception, app.exception
    assert app.radio(key="eval_images").value == "dataset" and app.number_input(key="eval_count").value == 3
    assert app.select_slider(key="eval_steps").value == 10
    assert len(evaluations) == 2 and app.dataframe and any("3 test images of digits" in m.value for m in app.markdown)


def test_the_evaluation_page_scores_the_current_image():
    from test_app import page  # the sidebar and the page, as app.py draws them

    app = page("pages/evaluation.py", model="digits", methods="gradcam,scorecam,cam")
    app.button(key="eval_run").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    confidence, auc, road_table, timing = (frame.value for frame in app.dataframe)
    assert list(confidence["method"]) == ["Grad-CAM", "Score-CAM", "CAM"]
    assert ((confidence["drop"] >= 0) & (confidence["drop"] <= 100)).all()
    assert list(auc.columns) == ["method", "deletion", "insertion"]  # sigma 20 on digits: insertion is shown
    assert (road_table["gap"] == road_table["lerf"] - road_table["morf"]).all()
    assert timing.set_index("method").loc["Score-CAM", "forwards"] > 1
    assert any("distinct perturbed inputs" in m.value for m in app.markdown)
    assert any("Insertion's blur is measured" in c.value and "chosen: the smallest σ = 20 px" in c.value
               for c in app.caption)


def test_on_a_photo_road_starts_off_and_says_how_to_turn_it_on():
    from test_app import page

    app = page("pages/evaluation.py", methods="gradcam")  # the built-in ImageNet model and the cat
    assert "× 3 metrics (Confidence drop and increase; Deletion; Insertion)" in app.info[0].value  # no ROAD
    app.button(key="eval_run").click().run()
    assert not app.exception, app.exception
    assert not app.error, [e.value for e in app.error]
    assert len(app.dataframe) == 3  # confidence, AUC, cost: no ROAD table
    assert any("ROAD is off for photos" in info.value for info in app.info)


def test_the_evaluation_page_runs_a_dataset_set_on_request_and_withholds_a_blind_insertion():
    from test_app import page

    app = page("pages/evaluation.py", model="digits", methods="gradcam")
    app.radio(key="eval_images").set_value("dataset").run()
    app.number_input(key="eval_count").set_value(4).run()
    assert not app.dataframe, "a set of several images runs only when asked"
    assert "× 4 images (4 test images of digits)" in app.info[0].value
    app.selectbox(key="eval_blur").set_value(5.0).run()  # RISE's sigma leaves a 64-px digit readable
    app.button(key="eval_run").click().run()
    assert not app.exception, app.exception
    assert any("4 test images of digits" in m.value for m in app.markdown)
    model = load_model("digits")
    with one_thread(), pytest.warns(MetricWarning):  # the API says it in the same words
        api = evaluate(model, subset(load_dataset("digits", "test"), 4), ["gradcam"], "B4",
                       metrics=("deletion", "insertion"), settings=EvaluationSettings(blur_sigma=5.0))
    assert any(w.value == f"Insertion is not shown: {api.insertion_problem()}." for w in app.warning)
    assert list(app.dataframe[1].value.columns) == ["method", "deletion"]
