"""Score-CAM, Ablation-CAM and Cluster-CAM: each fast path against its plain definition, run independently."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import count_passes, digits_model, digits_test_batch, hook_counts, one_thread
from torch import nn

from explainers import MethodUnavailableError, explain, explain_many, load_model, method_info, trace
from explainers.cli import DigitsResNet
from explainers.engine import batching
from explainers.methods import ablation_cam as A
from explainers.methods import cluster_cam as C
from explainers.methods import masking as M
from explainers.methods import score_cam as S
from explainers.runtime.progress import reporting
from explainers.runtime.settings import SettingValueError


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def model():
    return digits_model()


def close(a, b, tol: float = 1e-4) -> bool:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-12)
    return bool(np.allclose(a, b, rtol=0, atol=tol * scale))


@torch.no_grad()
def brute_force_drops(model, image: torch.Tensor, block: str, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent of the library: zero channel k of the block's output with a hook, run the whole model."""
    module = model.blocks[block]
    channels = model.block_shapes[block][0]
    score = model.net(image[None])[0, target]
    drops = torch.zeros(channels)
    for k in range(channels):
        def zero(_m, _i, output, k=k):
            output = output.clone()
            output[:, k] = 0
            return output

        handle = module.register_forward_hook(zero)
        try:
            drops[k] = score - model.net(image[None])[0, target]
        finally:
            handle.remove()
    return drops, score


class ImageCounter:
    """Images pushed through the modules' forwards (a batch of 32 counts 32); a module given twice
    (``model.inference_net`` may be ``model.net`` itself) counts once."""

    def __init__(self, *modules: nn.Module) -> None:
        self.images = 0
        distinct = {id(module): module for module in modules}.values()
        self.handles = [module.register_forward_hook(self.count) for module in distinct]

    def count(self, _module, inputs, _output) -> None:
        self.images += inputs[0].shape[0]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


# --- Ablation-CAM --------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["B3", "B4"])
def test_ablation_fast_path_equals_brute_force(model, block):
    images, _ = digits_test_batch(3)
    batch = trace(model, images, blocks=[block])
    targets = [int(t) for t in batch.targets]
    other = trace(model, images, targets=[(t + 4) % 10 for t in targets], blocks=[block])
    saw_positive_map = False
    for recorded in (batch, other):
        drops, scores, passes = A.ablation_drops(recorded, block, model)
        maps = A.ablation_cam(recorded, block, model).maps
        for i, image in enumerate(images):
            target = int(recorded.targets[i])
            expected, score = brute_force_drops(model, image, block, target)
            assert close(drops[i], expected), (block, i, target)
            assert torch.isclose(scores[i], score, rtol=1e-5, atol=1e-5)
            weights = expected / score
            reference = F.relu((weights[:, None, None] * recorded.activations[block][i]).sum(0))
            assert close(maps[i], reference)
            saw_positive_map |= bool(reference.max() > 0)
    assert saw_positive_map, "every map was zero: the comparison proved nothing"
    channels = model.block_shapes[block][0]
    if block == "B4":
        assert passes == 0, "B4 of a GAP + linear head is closed-form"
    else:
        assert 1 <= passes <= channels + 1


def test_ablation_at_b4_is_exactly_the_head_contribution(model):
    """(S_c - S_c,k) = w_ck * mean(A_k): the closed form, checked against the brute force's drops at 1e-5."""
    image = digits_test_batch(1)[0][0]
    explanation = explain(model, image, "ablationcam", block="B4")
    assert explanation.forwards == 1, "the shared trace only"
    plain, passes = A.ablation_cam_plain(model, image, "B4", explanation.target)
    assert passes == 1 + model.block_shapes["B4"][0]
    assert close(explanation.raw, plain.numpy(), 1e-5)


def test_ablation_counts_tail_passes_and_skips_dead_channels(model, monkeypatch):
    image = digits_test_batch(1)[0][0]
    recorded = trace(model, image[None], blocks=["B3"])
    alive = int(recorded.activations["B3"][0].flatten(1).ne(0).any(1).sum())
    tail = ImageCounter(model.inference_net.layer4)
    try:
        with count_passes(model.net, monkeypatch, model.inference_net) as passes:
            output = A.ablation_cam(recorded, "B3", model)
    finally:
        tail.remove()
    assert passes.forwards == 0, "the tail runs without the layers before B3"
    assert tail.images == alive + 1 == output.forwards


class DoubledDigits(DigitsResNet):
    """A model whose forward is NOT the plain stage sequence: the ResNet tail would give wrong logits."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * super().forward(x)


def test_ablation_falls_back_to_a_substituted_forward_when_the_tail_does_not_fit(model):
    net = DoubledDigits()
    net.load_state_dict(model.net.state_dict())
    doubled = load_model(net, classes=[str(d) for d in range(10)], input_size=(64, 64))
    doubled.transform = model.transform
    assert A.tail_after(doubled, "B3") is not None, "the layout looks like a ResNet, so the check must catch it"
    image = digits_test_batch(1)[0][0]
    recorded = trace(doubled, image[None], blocks=["B3"])
    before = hook_counts(doubled.net)
    drops, scores, _ = A.ablation_drops(recorded, "B3", doubled)
    expected, score = brute_force_drops(doubled, image, "B3", int(recorded.targets[0]))
    assert close(drops[0], expected) and torch.isclose(scores[0], score, rtol=1e-5)
    assert hook_counts(doubled.net) == before, "the substitution hook was left behind"


class TinyVGG(nn.Module):
    """VGG's layout (features with max pools, avgpool, classifier) at toy size."""

    def __init__(self) -> None:
        super().__init__()
        widths, layers, previous = (8, 8, 16, 16, 16), [], 1
        for width in widths:
            layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            previous = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Linear(64, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.mark.parametrize("block", ["B3", "B4"])
def test_ablation_on_a_vgg_layout_runs_only_the_layers_after_the_block(block, monkeypatch):
    torch.manual_seed(3)
    vgg = load_model(TinyVGG().eval(), classes=["a", "b", "c"], input_size=(64, 64))
    assert vgg.family == "vgg" and not vgg.gap_head and A.tail_after(vgg, block) is not None
    image = torch.randn(1, 64, 64, generator=torch.Generator().manual_seed(4))
    recorded = trace(vgg, image[None], blocks=[block])
    batching.timings(vgg)  # the batch-size measurement runs once per network, before any count
    with count_passes(vgg.net, monkeypatch, vgg.inference_net) as passes:
        drops, scores, _ = A.ablation_drops(recorded, block, vgg)
    assert passes.forwards == 0
    expected, score = brute_force_drops(vgg, image, block, int(recorded.targets[0]))
    assert close(drops[0], expected) and torch.isclose(scores[0], score, rtol=1e-5)
    assert float(expected.abs().max()) > 0


# --- Score-CAM -----------------------------------------------------------------------------------

@pytest.mark.parametrize("block", ["B4", "B3"])
def test_score_cam_fast_path_equals_the_plain_definition(model, block):
    images, _ = digits_test_batch(2)
    for image in images:
        fast = explain(model, image, "scorecam", block=block)
        plain, plain_passes = S.score_cam_plain(model, image, block, fast.target)
        assert float(plain.max()) > 0
        assert close(fast.raw, plain.numpy(), 1e-4)
        assert fast.forwards <= plain_passes


def test_score_cam_masks_are_scaled_upsampled_maps_and_duplicates_share_one():
    maps = torch.rand(5, 4, 4)
    maps[1] = 3.0  # constant: no mask
    maps[3] = 4 * maps[0]  # a scaled copy of channel 0 (exactly, in floating point): the same mask
    channels, group = M.distinct_maps(maps)
    assert channels.tolist() == [0, 2, 3, 4]
    assert group[0] == group[2] and len(set(group.tolist())) == 3
    masks, scaled = M.scaled_masks(maps, (16, 16))
    upsampled = F.interpolate(maps[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    expected = (upsampled[0] - upsampled[0].min()) / (upsampled[0].max() - upsampled[0].min())
    assert torch.allclose(masks[0], expected, atol=1e-6) and torch.allclose(masks[3], expected, atol=1e-6)
    assert float(masks[1].abs().max()) == 0
    assert torch.allclose(F.interpolate(scaled[:, None], size=(16, 16), mode="bilinear",
                                        align_corners=False)[:, 0], masks, atol=1e-6)


def test_score_cam_reports_its_masked_passes(model, monkeypatch):
    image = digits_test_batch(1)[0][0]
    recorded = trace(model, image[None], blocks=["B4"])
    distinct = int(M.distinct_maps(recorded.activations["B4"][0])[1].max()) + 1
    with count_passes(model.net, monkeypatch, model.inference_net):
        counter = ImageCounter(model.net, model.inference_net)
        try:
            explanation = explain(model, image, "scorecam")
        finally:
            counter.remove()
    assert counter.images == 1 + distinct == explanation.forwards
    assert explanation.backwards == 0


# --- Cluster-CAM ---------------------------------------------------------------------------------

def cluster_cam(model, image, block="B4", **settings):
    """Cluster-CAM through the API's settings door (Q, alpha, clustering)."""
    return explain(model, image, "clustercam", block=block, method_settings={"clustercam": settings})


def test_cluster_cam_alpha_one_is_the_base_clusters_mean_map(model):
    image = digits_test_batch(4)[0][2]
    explanation = cluster_cam(model, image, block="B4", alpha=1.0)
    parts = explanation.extras["cluster_cam"]
    activations = trace(model, image[None], blocks=["B4"]).activations["B4"][0]
    mean = activations[torch.from_numpy(parts.labels == parts.base)].mean(0)  # eq. 18, computed here
    upsampled = F.interpolate(mean[None, None], size=(64, 64), mode="bilinear", align_corners=False)[0, 0]
    expected = (upsampled - upsampled.min()) / (upsampled.max() - upsampled.min())
    assert close(explanation.heatmap, expected.numpy(), 1e-5)
    assert close(parts.masks[parts.base], expected.numpy(), 1e-5)
    assert close(explanation.raw, parts.scaled[parts.base], 1e-6)


def test_cluster_cam_base_scores_highest_and_scissors_lowest(model):
    images, _ = digits_test_batch(3)
    for image in images:
        parts = cluster_cam(model, image, block="B3").extras["cluster_cam"]
        with torch.no_grad():  # the masked scores, one plain forward each
            scores = [model.net((image * torch.from_numpy(m))[None]).softmax(1)[0, parts.target].item()
                      for m in parts.masks]
        assert np.allclose(scores, parts.scores, atol=1e-5)
        assert parts.base == int(np.argmax(scores)) and parts.scissors == int(np.argmin(scores))
        assert parts.scores[parts.base] > parts.scores[parts.scissors]


@pytest.mark.parametrize("q", [6, 3])
def test_cluster_cam_uses_exactly_q_plus_one_forward_passes(model, q, monkeypatch):
    image = digits_test_batch(1)[0][0]
    counter = ImageCounter(model.net, model.inference_net)
    try:
        with count_passes(model.net, monkeypatch, model.inference_net) as passes:
            explanation = cluster_cam(model, image, q=q) if q != 6 else explain(model, image, "clustercam")
    finally:
        counter.remove()
    assert counter.images == q + 1 == explanation.forwards
    assert passes.forwards == 2, "the trace, then all Q masked inputs in one batch"
    assert passes.backwards == 0 and explanation.backwards == 0


def test_changing_alpha_recombines_without_any_pass(model, monkeypatch):
    image = digits_test_batch(1)[0][0]
    parts = cluster_cam(model, image).extras["cluster_cam"]
    with count_passes(model.net, monkeypatch, model.inference_net) as passes:
        for alpha in (0.0, 0.3, 0.5, 1.0):
            expected = alpha * parts.masks[parts.base] - (1 - alpha) * parts.masks[parts.scissors]  # eq. 22
            assert close(parts.heatmap(alpha), expected, 1e-5)
    assert passes.forwards == 0
    assert float(parts.heatmap(0.0).max()) <= 1e-6, "alpha = 0 keeps only the (negated) scissors"
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        parts.heatmap(1.5)


def test_cluster_cam_is_reproducible_and_offers_spectral_clustering(model):
    image = digits_test_batch(1)[0][0]
    first = cluster_cam(model, image, block="B3").extras["cluster_cam"]
    again = cluster_cam(model, image, block="B3").extras["cluster_cam"]
    assert np.array_equal(first.labels, again.labels) and np.array_equal(first.scores, again.scores)
    spectral = cluster_cam(model, image, block="B3", clustering="spectral").extras["cluster_cam"]
    assert spectral.clustering == "spectral" and spectral.q == 6
    assert sorted(np.unique(spectral.labels)) == list(range(6))
    with pytest.raises(SettingValueError, match="clustering must be one of 'kmeans', 'spectral', not 'dbscan'"):
        cluster_cam(model, image, clustering="dbscan")
    with pytest.raises(SettingValueError, match=r"q must be an integer in \[2, 16\], not 0"):
        cluster_cam(model, image, q=0)
    with pytest.raises(ValueError, match="clustering must be one of"):  # the helper itself, called directly
        C.cluster_channels(torch.rand(8, 2, 2), 3, "dbscan")


def test_cluster_cam_with_more_clusters_than_distinct_maps_uses_what_there_is():
    maps = torch.zeros(8, 2, 2)
    maps[:4, 0, 0] = 1.0  # only two distinct maps
    labels = C.cluster_channels(maps, 6)
    assert sorted(set(labels.tolist())) == [0, 1]


# --- registry, progress --------------------------------------------------------------------------

def test_the_perturbation_methods_are_registered_and_report_progress(model):
    for name in ("scorecam", "ablationcam", "clustercam"):
        info = method_info(name)
        assert info.family == "perturbation" and not info.needs_gradients
    assert method_info("clustercam").signed
    reports: list[tuple[float, str]] = []
    image = digits_test_batch(1)[0][0]
    with reporting(lambda fraction, text: reports.append((fraction, text))):
        maps = explain_many(model, image, ["scorecam", "ablationcam", "clustercam"], block="B3")
    for method in ("Score-CAM", "Ablation-CAM", "Cluster-CAM"):
        fractions = [f for f, text in reports if text.startswith(method)]
        assert fractions and fractions == sorted(fractions) and fractions[-1] == 1.0, method
    assert all(e.forwards > 1 for e in maps.values())


# --- batch size ----------------------------------------------------------------------------------

def test_the_batch_size_is_the_smallest_within_ten_percent_of_the_fastest_per_image():
    assert batching.choose({1: 10.0, 2: 6.0, 4: 5.6, 8: 5.0, 16: 5.2, 32: 7.0}) == 8
    assert batching.choose({1: 10.0, 2: 6.0, 4: 5.4, 8: 5.0, 16: 5.2, 32: 7.0}) == 4
    assert batching.choose({1: 1.0, 2: 1.2}) == 1
    model = digits_model()
    measured = batching.timings(model)
    assert list(measured) == list(batching.CANDIDATES[:len(measured)]) and all(t > 0 for t in measured.values())
    assert batching.batch_size(model) == batching.choose(measured)
    assert batching.timings(model) == measured, "measured once per network, then remembered"


OUT_OF_MEMORY = {  # what each backend raises when an allocation fails
    "cuda": lambda n: torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {n} MiB (simulated)"),
    "mps": lambda n: RuntimeError(f"MPS backend out of memory (MPS allocated: {n} MB, simulated)"),
}


def _memory_limited(model, largest: int, backend: str = "cuda") -> list[int]:
    """Make ``model``'s inference copy run out of memory, as a GPU does, for batches above ``largest``;
    returns the batch sizes refused so far (filled as they are)."""
    refused: list[int] = []

    def allocate(_module, args):
        if args[0].shape[0] > largest:
            refused.append(args[0].shape[0])
            raise OUT_OF_MEMORY[backend](args[0].shape[0])
    model.inference_net.register_forward_pre_hook(allocate)
    return refused


@pytest.mark.parametrize("backend", list(OUT_OF_MEMORY))
def test_a_device_out_of_memory_ends_the_batch_size_search_at_the_sizes_that_fit(backend):
    model = digits_model()
    refused = _memory_limited(model, 1, backend)  # size 2 is always tried after 1, and does not fit
    measured = batching.timings(model)
    assert refused == [2] and list(measured) == [1] and batching.batch_size(model) == 1
    with one_thread():
        image = digits_test_batch(1)[0][0]
        automatic = explain(model, image, "scorecam", block="B3")  # batches of the size that fits
        fixed = explain(model, image, "scorecam", block="B3", method_settings={"scorecam": {"batch_size": 1}})
    assert refused == [2] and close(automatic.raw, fixed.raw)


@pytest.mark.parametrize("backend", list(OUT_OF_MEMORY))
def test_a_method_out_of_memory_is_refused_with_what_to_do_and_the_others_still_drawn(backend):
    model = digits_model()
    _memory_limited(model, 4, backend)
    with one_thread():
        image = digits_test_batch(1)[0][0]
        with pytest.raises(MethodUnavailableError, match="ran out of memory.*lower its batch size"):
            explain(model, image, "scorecam", block="B3", method_settings={"scorecam": {"batch_size": 16}})
        after = explain(model, image, "gradcam", block="B3")  # the model is left as it was
        assert close(after.raw, explain(digits_model(), image, "gradcam", block="B3").raw)
    plain = digits_model()
    _memory_limited(plain, 0, backend)  # not even one image fits
    with one_thread(), pytest.raises(MethodUnavailableError, match="ran out of memory"):
        explain(plain, digits_test_batch(1)[0][0], "scorecam", block="B3")


@pytest.mark.parametrize("backend", list(OUT_OF_MEMORY))
def test_any_pass_out_of_memory_reaches_the_page_as_a_message_not_a_traceback(backend):
    """A job of the compute thread (a trace, a fit's pass, an evaluation batch) that runs out of memory raises
    DeviceOutOfMemoryError, a UserInputError the pages show; the backend's error stays in __cause__."""
    from explainers import UserInputError
    from explainers.runtime import compute
    from explainers.runtime.errors import DeviceOutOfMemoryError

    def job():
        raise OUT_OF_MEMORY[backend](512)

    with pytest.raises(DeviceOutOfMemoryError, match="ran out of memory.*PROTOSCOPE_DEVICE=cpu") as caught:
        compute.run(job)
    assert isinstance(caught.value, UserInputError) and type(caught.value.__cause__).__name__ in (
        "OutOfMemoryError", "RuntimeError")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # any other error is left as it is
        compute.run(lambda: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
