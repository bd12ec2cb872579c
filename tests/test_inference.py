"""The perturbation methods' inference copy: batch norms folded into convolutions, channels-last,
and the same logits as the network it copies (explainers/inference.py)."""
from __future__ import annotations

import pytest
import torch
from helpers import digits_model, digits_test_batch
from torch import nn

from explainers import load_model
from explainers.models.inference import conv_bn_pairs, fold_batch_norms, inference_copy


def batch_norms(net: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in net.modules())


def test_digits_copy_folds_every_batch_norm_and_keeps_the_logits():
    model = digits_model()
    fast = model.inference_net
    assert fast is not model.net and batch_norms(fast) == 0
    assert batch_norms(model.net) > 0, "the original network is left as it was"
    images, _ = digits_test_batch(8)
    with torch.inference_mode():
        expected = model.net(images)
        found = fast(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(found, expected, rtol=1e-5, atol=1e-5)
    assert (found.argmax(1) == expected.argmax(1)).all()


def test_resnet18_pairs_are_every_conv_with_its_batch_norm():
    net = load_model("resnet18", weights=None).net
    pairs = dict(conv_bn_pairs(net))
    assert pairs["conv1"] == "bn1" and pairs["layer2.0.downsample.0"] == "layer2.0.downsample.1"
    assert len(pairs) == batch_norms(net) == 20
    folded = fold_batch_norms(net)
    assert batch_norms(folded) == 0
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(folded(x), net(x), rtol=1e-4, atol=1e-5)


class Shared(nn.Module):
    """conv1's output feeds a batch norm AND a skip: folding it would change the skip."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.bn2 = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        z = self.bn2(self.conv2(torch.relu(self.bn1(y)))) + y
        return self.fc(z.mean(dim=(2, 3)))


class Branching(Shared):
    """Data-dependent control flow: torch.fx cannot trace it, so nothing is folded."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = -x
        return super().forward(x)


def trained_statistics(net: nn.Module) -> nn.Module:
    """Non-trivial running statistics, so a wrong fold would show in the logits."""
    generator = torch.Generator().manual_seed(1)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.randn(module.num_features, generator=generator))
    return net.eval()


def test_a_conv_whose_output_is_used_twice_is_not_folded():
    net = trained_statistics(Shared())
    assert conv_bn_pairs(net) == [("conv2", "bn2")]
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    copy = inference_copy(net, x)
    assert batch_norms(copy) == 1 and isinstance(copy.bn2, nn.Identity)
    with torch.inference_mode():
        assert torch.allclose(copy(x), net(x), rtol=1e-5, atol=1e-5)


def test_an_untraceable_model_gets_an_unfolded_copy():
    net = trained_statistics(Branching())
    assert conv_bn_pairs(net) == []
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    copy = inference_copy(net, x)
    assert copy is not net and batch_norms(copy) == 2


def test_a_model_whose_hook_changes_its_output_keeps_its_own_network():
    net = trained_statistics(Shared())
    net.fc.register_forward_hook(lambda _m, _i, output: output * 2)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    assert inference_copy(net, x) is net, "a copy without the hook would disagree, so none is used"


@pytest.mark.parametrize("training", [True, False])
def test_making_the_copy_leaves_the_networks_mode_alone(training):
    net = trained_statistics(Shared()).train(training)
    inference_copy(net, torch.randn(2, 3, 8, 8))
    assert net.training is training


def test_the_built_in_imagenet_model_has_every_batch_norm_folded():
    """timm's BatchNormAct2d hides its conv -> norm pairs from torch.fx; the family adapter names them,
    so Lite0's inference copy has no batch norm left, keeps its ReLU6s, and computes the same logits."""
    model = load_model("efficientnet_lite0")
    fast = model.inference_net
    assert fast is not model.net
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in fast.modules()) == sum(isinstance(m, nn.ReLU6) for m in model.net.modules())
    x = model.probe_inputs(3)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), model.net(x),
                                   atol=1e-4, rtol=1e-4)
