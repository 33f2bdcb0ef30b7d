"""The backbone contract shared by every head.

A backbone's ``forward`` returns an ordered dict of named feature maps, and
``output_shape()`` declares, for the same names in the same order, the channels
and stride of each map. Consumers (FPN, detection heads, ASPP) read channels and
strides from it; nothing downstream hard-codes them.

Backbones also list their stages (stem first) so that freezing works the same way for
every family: ``trainable_stages=k`` leaves only the last ``k`` stages trainable.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

NORMS = ("auto", "frozen_bn", "bn")


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of one named feature map: channel count and stride relative to the input."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses implement ``forward`` and ``output_shape`` (and ``stages`` to freeze)."""

    _frozen: list[nn.Module]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def stages(self) -> list[list[nn.Module]]:  # pragma: no cover - abstract
        """The modules of each stage, stem first (5 entries: stem, then strides 4, 8, 16, 32)."""
        raise NotImplementedError

    @property
    def feature_names(self) -> list[str]:
        return list(self.output_shape())

    @property
    def size_divisibility(self) -> int:
        """Input sides should be multiples of this so every level's grid lines up."""
        return max(spec.stride for spec in self.output_shape().values())

    def freeze_stages(self, trainable_stages: int) -> None:
        """Only the last ``trainable_stages`` stages get gradients; frozen ones keep their statistics."""
        stages = self.stages()
        if not 0 <= trainable_stages <= len(stages):
            raise ValueError(f"trainable_stages={trainable_stages} must be between 0 and {len(stages)}")
        self._frozen = [m for stage in stages[: len(stages) - trainable_stages] for m in stage]
        for module in self._frozen:
            module.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self


def resolve_norm(norm: str, *, pretrained: bool) -> str:
    """``auto``: frozen statistics when starting from weights, trainable BatchNorm from scratch."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} must be one of {NORMS}")
    if norm == "auto":
        return "frozen_bn" if pretrained else "bn"
    return norm


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by FrozenBatchNorm2d with the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    for name, child in module.named_children():
        replaced = freeze_batch_norm(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module
