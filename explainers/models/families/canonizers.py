"""The LRP canonizers the family adapters add to zennit's: forward rewrites that make residual sums and a
functional head modules zennit's rules see (``TimmResNetCanonizer``, ``TimmResidualCanonizer``,
``DenseNetHeadCanonizer``, on one base, ``ForwardRewrite``), and batch-norm merges whose merged batch
norm is an exact identity (``ExactMergeBatchNorm``, ``ExactSequentialMergeBatchNorm``). Each leaves
the network's function unchanged."""
from __future__ import annotations

import torch
from torch import nn
from torchvision.models import DenseNet
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm
from zennit.layer import Sum

from .timm_support import timm_block_types

__all__ = ["DenseNetHeadCanonizer", "ExactMergeBatchNorm", "ExactSequentialMergeBatchNorm", "ForwardRewrite",
           "TimmResNetCanonizer", "TimmResidualCanonizer"]


class ForwardRewrite(AttributeCanonizer):
    """A zennit ``AttributeCanonizer`` whose subclass only says, in ``_attribute_map``, which modules it
    rewrites and with what (a new ``forward`` and the modules it calls), as zennit's own canonizers do."""

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    def copy(self) -> "ForwardRewrite":
        return type(self)()

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        raise NotImplementedError


class TimmResNetCanonizer(ForwardRewrite):
    """timm's ResNet blocks add their shortcut in ``forward`` (``x += shortcut``), where no LRP rule sees the
    sum and the gradient would give both terms the whole relevance. This rewrites the forward of each
    BasicBlock and Bottleneck so that the sum is zennit's ``Sum`` module (its norm rule shares the relevance
    in proportion to each term), as zennit's ``ResNetCanonizer`` does for torchvision's blocks. The function
    is unchanged (``lrp_output`` checks the logits against the model's)."""

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        from timm.models.resnet import BasicBlock as TimmBasic
        from timm.models.resnet import Bottleneck as TimmBottleneck

        if isinstance(module, (TimmBasic, TimmBottleneck)):
            body = cls.bottleneck if isinstance(module, TimmBottleneck) else cls.basic
            return {"forward": body.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def _joined(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        if self.se is not None:
            x = self.se(x)
        if self.drop_path is not None:
            x = self.drop_path(x)
        if self.downsample is not None:
            shortcut = self.downsample(shortcut)
        return self.canonizer_sum(torch.stack([shortcut, x], dim=-1))

    @staticmethod
    def basic(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        y = self.bn2(self.conv2(y))
        return self.act2(TimmResNetCanonizer._joined(self, y, x))

    @staticmethod
    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(y)))))
        y = self.bn3(self.conv3(y))
        return self.act3(TimmResNetCanonizer._joined(self, y, x))


class DenseNetHeadCanonizer(ForwardRewrite):
    """torchvision's DenseNet applies its last ReLU and the global average pooling as functions, which no
    LRP rule sees: the pooling's gradient spreads each feature's relevance evenly over all its pixels,
    also over those the ReLU zeroes, where it is lost (5-20% of the logit on random DenseNets). This
    canonizer gives both a module, as ResNet has them: the ReLU passes relevance on, the pooling
    shares it in proportion to each pixel's activation (zennit's norm rule). The function is unchanged."""

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        if isinstance(module, DenseNet):
            return {"forward": cls.forward.__get__(module), "canonizer_relu": nn.ReLU(),
                    "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        return None

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.canonizer_pool(self.canonizer_relu(self.features(x)))
        return self.classifier(torch.flatten(out, 1))


class _ExactIdentity:
    """For zennit's batch-norm merges: the merged batch norm an exact identity. zennit leaves its ``eps``, so
    it computes x / sqrt(1 + eps). That is 5e-6 per batch norm for PyTorch's eps = 1e-5 (1.3e-4 of the logits
    after ResNet-50d's 55), but 5e-4 for the TensorFlow eps = 1e-3 of timm's ``tf_`` models, 2% on Lite0's
    logits after its 50 batch norms, where the canonized network would no longer be the model. Here eps is
    0 while merged."""

    def register(self, linears: list, batch_norm: nn.Module) -> None:
        super().register(linears, batch_norm)  # type: ignore[misc]
        self.batch_norm_eps = batch_norm.eps
        setattr(batch_norm, "eps", 0.0)  # a float attribute of the module, not a submodule or tensor

    def remove(self) -> None:
        super().remove()  # type: ignore[misc]
        self.batch_norm.eps = self.batch_norm_eps  # type: ignore[attr-defined]


class ExactMergeBatchNorm(_ExactIdentity, NamedMergeBatchNorm):
    """zennit's named merge (conv, batch norm pairs given by name), the merged batch norm an exact identity."""


class ExactSequentialMergeBatchNorm(_ExactIdentity, SequentialMergeBatchNorm):
    """zennit's sequential merge (a batch norm right after a convolution in module order), the merged batch norm
    an exact identity."""


class TimmResidualCanonizer(ForwardRewrite):
    """timm's EfficientNet blocks add their input back in ``forward`` (``x = drop_path(x) + shortcut``),
    where no LRP rule sees the sum and the gradient would give both terms the whole relevance. This
    rewrites the forward of each block with a skip so that the sum is zennit's ``Sum`` module (its norm
    rule shares the relevance in proportion to each term), as ``ResNetCanonizer`` does for torchvision's
    blocks. The function is unchanged (``lrp_output`` checks the logits)."""

    @classmethod
    def _attribute_map(cls, name: str, module: nn.Module) -> dict | None:
        separable, inverted = timm_block_types()
        if isinstance(module, (separable, inverted)) and module.has_skip:
            body = cls.separable if isinstance(module, separable) else cls.inverted
            return {"forward": body.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def separable(self, x: torch.Tensor) -> torch.Tensor:
        y = self.se(self.aa(self.bn1(self.conv_dw(x))))
        y = self.bn2(self.conv_pw(y))
        return self.canonizer_sum(torch.stack([x, self.drop_path(y)], dim=-1))

    @staticmethod
    def inverted(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.conv_pw(x))
        y = self.se(self.aa(self.bn2(self.conv_dw(y))))
        y = self.bn3(self.conv_pwl(y))
        return self.canonizer_sum(torch.stack([x, self.drop_path(y)], dim=-1))
