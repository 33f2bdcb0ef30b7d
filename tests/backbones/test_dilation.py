"""Every backbone can be dilated, so every backbone works with DeepLab's dilated features; on a
ResNet the generic rule is exactly torchvision's; a backbone that cannot be dilated gets a FPN."""

from __future__ import annotations

import logging
from collections import OrderedDict

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn
from torchvision import models

from backbones import ResNetBackbone, TimmBackbone
from backbones.base import Backbone, FeatureSpec, measure_output_shape
from backbones.dilation import dilate, dilation_plan
from heads.deeplab import build_deeplab
from tests.support import BACKBONES, CONF_DIR


def _backbone(name: str, **overrides) -> Backbone:
    return instantiate(OmegaConf.merge(OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml"), overrides))


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_dilates_and_keeps_its_contract(name: str) -> None:
    torch.manual_seed(0)
    backbone = _backbone(name).eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        reference = backbone(x)
    plain = [spec.stride for spec in backbone.output_shape().values()]
    assert backbone.dilate_to(8) == 8
    shapes = backbone.output_shape()
    assert [s.stride for s in shapes.values()] == [min(stride, 8) for stride in plain]
    with torch.no_grad():
        features = backbone(x)
    for level, feature in features.items():
        assert feature.shape[1] == shapes[level].channels
        assert feature.shape[-2:] == (64 // shapes[level].stride, 96 // shapes[level].stride)
    finest = next(iter(features))  # the stride-4 level is untouched by dilation
    torch.testing.assert_close(features[finest], reference[finest])


@pytest.mark.parametrize("output_stride", [8, 16])
def test_generic_rule_is_torchvisions_on_a_bottleneck_resnet(output_stride: int) -> None:
    torch.manual_seed(0)
    ours = ResNetBackbone("resnet50", output_stride=output_stride, norm="bn").eval()
    flags = {8: [False, True, True], 16: [False, False, True]}[output_stride]
    theirs = models.resnet50(replace_stride_with_dilation=flags).eval()
    theirs.load_state_dict(
        {**ours.state_dict(), **{k: v for k, v in theirs.state_dict().items() if k.startswith("fc.")}}
    )
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = theirs.layer4(
            theirs.layer3(theirs.layer2(theirs.layer1(theirs.maxpool(theirs.relu(theirs.bn1(theirs.conv1(x)))))))
        )
        torch.testing.assert_close(ours(x)["c5"], expected)


def test_even_kernels_get_their_extra_pixel_on_the_right() -> None:
    conv = nn.Conv2d(4, 4, 2, stride=2)
    stages = [[nn.Identity()], [nn.Identity()], [nn.Identity()], [nn.Identity()], [conv]]
    dilate(stages, 16)
    x = torch.rand(1, 4, 8, 8)
    y = conv(x)
    assert y.shape[-2:] == (8, 8)  # stride 1, same size
    torch.testing.assert_close(y[..., :7, :7], nn.functional.conv2d(x, conv.weight, conv.bias)[..., :7, :7])
    assert dilation_plan(5, 8) == [(3, 1, 2), (4, 2, 4)]


class _Subsample(nn.Module):
    def forward(self, x):
        return x[..., ::2, ::2]


class _SlicingBackbone(Backbone):
    """Downsamples by slicing in every stage, which no layer attribute shows: it cannot be dilated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(nn.Sequential(_Subsample(), nn.Conv2d(8, 8, 3, padding=1)) for _ in range(4))

    def stages(self) -> list[list[nn.Module]]:
        return [[self.stem], *[[block] for block in self.blocks]]

    def forward(self, x):
        x, outputs = self.stem(x), OrderedDict()
        for i, block in enumerate(self.blocks):
            x = outputs[f"c{i + 2}"] = block(x)
        return outputs

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return measure_output_shape(self)


def test_a_backbone_that_cannot_dilate_gets_a_fpn(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        model = build_deeplab(_SlicingBackbone(), num_classes=3, output_stride=8, channels=16, atrous_rates=[1, 2, 3])
    assert "gives strides [4, 8, 16, 32] once dilated, not [4, 8, 8, 8]" in caplog.text
    assert "ASPP reads a FPN on it instead" in caplog.text and model.high_level == "p4"
    assert model.eval()(torch.rand(1, 3, 64, 64))["out"].shape == (1, 3, 64, 64)


def test_deeplab_dilates_a_basic_block_resnet_itself(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        model = build_deeplab(ResNetBackbone("resnet18"), num_classes=3, output_stride=8, channels=16)
    assert "DeepLab v3 reads resnet18 at output stride 8" in caplog.text
    assert model.backbone.output_shape()["c5"] == FeatureSpec(512, 8)


@pytest.mark.parametrize("name", ["ghostnet_050", "densenet121"])
def test_timm_models_timm_cannot_dilate_are_dilated_here(name: str) -> None:
    # ghostnet: timm says "dilation not supported"; densenet downsamples by average pooling
    backbone = TimmBackbone(name, output_stride=8).eval()
    assert [s.stride for s in backbone.output_shape().values()] == [4, 8, 8, 8]
    with torch.no_grad():
        assert [f.shape[-1] for f in backbone(torch.rand(1, 3, 64, 64)).values()] == [16, 8, 8, 8]
