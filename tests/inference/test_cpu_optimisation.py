"""Folded BatchNorm and channels-last (the CPU engine of predict) leave every backbone's outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from tasks.inference.cpu_optimisation import fold_batchnorm, optimise_for_cpu
from tests.support import BACKBONES, backbone_from_yaml


def _random_statistics(model: nn.Module) -> nn.Module:
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | FrozenBatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    return model.eval()


def _norms(model: nn.Module) -> int:
    return sum(type(m) in (nn.BatchNorm2d, FrozenBatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name", BACKBONES)
def test_optimised_backbone_gives_the_same_features(name: str) -> None:
    backbone = _random_statistics(backbone_from_yaml(name))
    x = torch.rand(1, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = backbone(x)
        before = _norms(backbone)
        got = optimise_for_cpu(backbone)(x)
    assert _norms(backbone) < before or before == 0  # something was folded where there was BatchNorm
    for level, feature in expected.items():
        scale = float(feature.abs().max()) + 1e-6
        assert float((got[level] - feature).abs().max()) <= 1e-4 * scale, level


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_every_resnet_norm_is_folded(norm: str) -> None:
    from backbones import ResNetBackbone

    backbone = _random_statistics(ResNetBackbone("resnet18", norm=norm))
    assert fold_batchnorm(backbone) == 20 and _norms(backbone) == 0  # stem, 16 in blocks, 3 downsampling


def test_fold_refuses_training_mode() -> None:
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train())
