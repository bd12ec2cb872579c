"""LRP through zennit: LRP-0 = gradient x input, conservation up to the biases' share, signs, and hygiene."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import digits_model, digits_test_batch, hook_counts, one_thread, random_torchvision
from torch import nn

from explainers import explain, explain_batch, explain_many, load_model, method_info
from explainers.methods import lrp as L

TINY = 1e-12  # epsilon -> 0: LRP-epsilon becomes LRP-0
# The identities are checked in float64, so that rounding plays no part. What remains is zennit's
# merged batch norm, which computes x / sqrt(1 + eps_bn) instead of x: ~5e-6 per batch norm.
CANONIZED = 2e-4


@pytest.fixture(autouse=True)
def _single_thread():
    with one_thread():
        yield


def small_sequential(seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-pool-conv-ReLU-linear, with biases, BN statistics that are not the identity."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 3),
    )
    net[1].running_mean.uniform_(-0.5, 0.5)
    net[1].running_var.uniform_(0.5, 2.0)
    net[1].weight.data.uniform_(0.5, 1.5)
    net[1].bias.data.uniform_(-0.3, 0.3)
    return net.eval()


def gradient_times_input_and_bias_share(net: nn.Module, x: torch.Tensor,
                                        target: int) -> tuple[torch.Tensor, float, float]:
    """x * df/dx, and sum over biases of b * df/db (batch norm's shift counted as its bias), computed
    with plain autograd: for a piecewise-affine ReLU network f(x) = x . df/dx + that sum (Euler)."""
    x = x.clone().requires_grad_(True)
    logit = net(x)[0, target]
    biases, values = [], []
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            biases.append(module.bias)
            values.append(module.bias.detach())
        elif isinstance(module, nn.BatchNorm2d):
            biases.append(module.bias)  # d f / d beta = d f / d (effective shift)
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            values.append((module.bias - scale * module.running_mean).detach())
    grads = torch.autograd.grad(logit, [x, *biases])
    share = sum(float((v * g).sum()) for v, g in zip(values, grads[1:]))
    return (grads[0] * x).detach(), share, float(logit.detach())


def digits_double():
    model = digits_model()
    model.net.double()
    return model


@pytest.fixture(scope="module")
def sequential():
    model = load_model(small_sequential(), classes=["a", "b", "c"], input_size=(8, 8))
    model.net.double()
    return model


def test_lrp_epsilon_to_zero_is_gradient_times_input_on_a_small_sequential_network(sequential):
    x = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for target in range(3):
        result = L.relevance(sequential, x, torch.tensor([target]), rule="epsilon", epsilon=TINY, stabilizer=TINY)
        expected, _, _ = gradient_times_input_and_bias_share(sequential.net, x, target)
        assert torch.allclose(result.pixels, expected, rtol=0, atol=CANONIZED * float(expected.abs().max())), target
        assert (expected > 0).any() and (expected < 0).any(), "both signs must occur for the check to mean much"


@pytest.mark.parametrize("which", ["sequential", "digits"])
def test_relevance_is_conserved_up_to_the_biases_share(which, sequential):
    model = sequential if which == "sequential" else digits_double()
    if which == "sequential":
        inputs = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    else:
        inputs = digits_test_batch(3)[0].double()
    for x in inputs:
        target = int(model.net(x[None]).argmax())
        result = L.relevance(model, x[None], torch.tensor([target]), rule="epsilon", epsilon=TINY, stabilizer=TINY)
        _, share, logit = gradient_times_input_and_bias_share(model.net, x[None], target)
        assert float(result.logits[0, target]) == pytest.approx(logit, rel=CANONIZED)
        scale = float(result.pixels.abs().sum()) + abs(share)  # the sum cancels: bound the error by the magnitudes
        assert abs(float(result.pixels.sum()) + share - logit) <= CANONIZED * scale
        assert abs(share) > 0.01 * abs(logit), "the biases' share must be exercised"


def test_lrp_zero_equals_gradient_times_input_on_the_digits_resnet():
    """The canonizers (batch norm merged, residual sums as modules) must not change LRP-0 = gradient x input."""
    model = digits_double()
    x = digits_test_batch(1)[0].double()
    target = int(model.net(x).argmax())
    result = L.relevance(model, x, torch.tensor([target]), rule="epsilon", epsilon=TINY, stabilizer=TINY)
    expected, _, _ = gradient_times_input_and_bias_share(model.net, x, target)
    assert torch.allclose(result.pixels, expected, rtol=0, atol=CANONIZED * float(expected.abs().max()))


def test_torchvision_resnet_canonizer_keeps_lrp_zero_equal_to_gradient_times_input():
    model = random_torchvision("resnet18")
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))  # small input: the test stays fast
    result = L.relevance(model, x, torch.tensor([7]), rule="epsilon", epsilon=1e-9, stabilizer=1e-9)
    expected, _, _ = gradient_times_input_and_bias_share(model.net, x, 7)
    assert torch.allclose(result.pixels, expected, rtol=0, atol=1e-3 * float(expected.abs().max()))  # float32


def test_on_a_linear_model_relevance_is_each_pixels_signed_contribution():
    """f(x) = w . x + b: LRP-epsilon (eps -> 0) gives R_d = w_d x_d, its sign the sign of the contribution."""
    torch.manual_seed(4)
    identity = nn.Conv2d(1, 1, 1, bias=False)  # a spatial stage, so that the model has a block
    identity.weight.data.fill_(1.0)
    net = nn.Sequential(identity, nn.Flatten(), nn.Linear(16, 2)).eval()
    model = load_model(net, classes=["a", "b"], input_size=(4, 4))
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    result = L.relevance(model, x, torch.tensor([1]), rule="epsilon", epsilon=TINY, stabilizer=TINY)
    contribution = (net[2].weight[1] * x.flatten()).detach().reshape(1, 1, 4, 4)
    assert torch.allclose(result.pixels, contribution, atol=1e-6)
    assert torch.equal(torch.sign(result.pixels), torch.sign(contribution))
    assert (contribution > 0).any() and (contribution < 0).any()


def test_gamma_composite_favours_the_explained_class_on_digits():
    model = digits_model()
    images, _ = digits_test_batch(6)
    for x in images:
        logits = model.net(x[None])[0]
        best, worst = int(logits.argmax()), int(logits.argmin())
        pred = L.relevance(model, x[None], torch.tensor([best]), rule="gamma").pixels
        least = L.relevance(model, x[None], torch.tensor([worst]), rule="gamma").pixels
        assert float(pred.sum()) > 0, "the predicted class must get net positive relevance"
        assert float(pred.sum()) > float(least.sum())
        assert float((pred > 0).float().mean()) > 0.5


def test_lrp_methods_are_registered_signed_at_pixel_resolution_with_their_own_pass():
    model = digits_model()
    x = digits_test_batch(1)[0][0]
    maps = explain_many(model, x, ["gradcam", "lrp_epsilon", "lrp_gamma"], block="B3")
    for name in ("lrp_epsilon", "lrp_gamma"):
        info, result = method_info(name), maps[name]
        assert info.family == "propagation" and info.signed and not info.needs_gradients
        assert result.raw.shape == (64, 64) and result.heatmap.shape == (64, 64)
        assert result.forwards == 2 and result.backwards == 1, "the shared trace + LRP's own forward and backward"
        assert result.extras["block_relevance"].shape == model.block_shapes["B3"][1:]
        assert np.isclose(result.extras["relevance_total"], result.raw.sum(), rtol=1e-4)
        assert (result.raw > 0).any() and (result.raw < 0).any()
    assert np.array_equal(explain(model, x, "lrp_gamma", block="B1").raw, maps["lrp_gamma"].raw), \
        "the pixel map does not depend on the block"


def test_each_image_of_a_batch_gets_its_own_extras():
    model = digits_model()
    images, _ = digits_test_batch(3)
    results = explain_batch(model, images, ["lrp_epsilon", "clustercam"], block="B3")
    for result in results:
        lrp, cluster = result["lrp_epsilon"], result["clustercam"]
        assert np.isclose(lrp.extras["relevance_total"], lrp.raw.sum(), rtol=1e-4)
        assert lrp.extras["block_relevance"].shape == model.block_shapes["B3"][1:]
        assert cluster.extras["cluster_cam"].target == cluster.target
        assert np.allclose(cluster.extras["cluster_cam"].raw(), cluster.raw, atol=1e-6)
    totals = [result["lrp_epsilon"].extras["relevance_total"] for result in results]
    assert len(set(totals)) == 3, "three images, three different relevance sums"


def test_lrp_never_touches_the_shared_model_and_removes_its_hooks_on_error():
    model = digits_model()
    weights = {k: v.clone() for k, v in model.net.state_dict().items()}
    hooks = hook_counts(model.net)
    x = digits_test_batch(1)[0]
    made = []
    real_copy = L.structural_copy
    L.structural_copy = lambda net: made.append(real_copy(net)) or made[-1]
    try:
        L.relevance(model, x, torch.tensor([3]), rule="gamma", block="B2")
        with pytest.raises(RuntimeError):
            L.relevance(model, x, torch.tensor([99]), rule="epsilon", block="B2")  # fails inside the composite
    finally:
        L.structural_copy = real_copy
    assert len(made) == 2 and all(twin is not model.net for twin in made), "each call ran on a private copy"
    for twin in made:
        assert all(counts == (0, 0, 0, 0) for counts in hook_counts(twin).values()), "hooks survived on the copy"
        assert all(len(m._forward_hooks) == 0 for m in twin.modules()), "the copy's tap was not removed"
    assert hook_counts(model.net) == hooks
    assert all(torch.equal(weights[k], v) for k, v in model.net.state_dict().items())
    before = float(model.net(x)[0, 3].detach())
    model.net.fc.bias.data[3] += 1.0  # weights changed in place later (a sanity check would do this)
    shifted = L.relevance(model, x, torch.tensor([3]), rule="epsilon")
    assert float(shifted.logits[0, 3]) == pytest.approx(before + 1.0, abs=1e-3), "LRP ran on stale weights"


class MisleadingOrder(nn.Module):
    """A batch norm that follows a second convolution, declared right after the first: zennit's
    sequential merge pairs it with the first (same width, no error) and would silently change the
    function. (Every operation has a rule, so LRP is offered: a residual sum would not be.)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.norm = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
        self.norm.running_mean.fill_(0.5)
        self.norm.running_var.fill_(4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv2(self.conv(x))))


def test_a_canonizer_that_does_not_fit_is_detected_and_lrp_runs_without_it():
    torch.manual_seed(6)
    model = load_model(MisleadingOrder().eval(), classes=["a", "b"], input_size=(16, 16))
    x = torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(7))
    result = explain(model, x, "lrp_epsilon", block=list(model.blocks)[-1])
    assert result.extras["canonized"] is False
    assert result.forwards == 1 + 2 and result.backwards == 2, "the misfit pass and the plain one are both counted"
    assert np.isclose(result.extras["logit"], float(model.net(x[None])[0, result.target].detach()), rtol=1e-5)


def test_densenet_batch_norms_are_merged_only_where_a_convolution_feeds_them():
    from torchvision.models import DenseNet

    torch.manual_seed(8)
    net = DenseNet(growth_rate=4, block_config=(2, 2, 2, 2), num_init_features=8, bn_size=2, num_classes=3).eval()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    model = load_model(net, classes=["a", "b", "c"], input_size=(64, 64))
    assert model.family == "densenet"
    canonizer, head = L.canonizers_for(model)
    assert len(canonizer.name_map) == 1 + 8, "conv0/norm0 and conv1/norm2 of each of the 8 dense layers"
    assert type(head).__name__ == "DenseNetHeadCanonizer", "the functional ReLU and pooling of the head as modules"
    x = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(9))
    for name in ("lrp_epsilon", "lrp_gamma"):
        result = explain(model, x, name)
        assert result.extras["canonized"] is True and result.forwards == 2, name
        assert np.isfinite(result.raw).all() and np.abs(result.raw).max() > 0
