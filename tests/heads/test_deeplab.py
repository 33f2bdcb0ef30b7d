"""DeepLab heads: torchvision parity, shapes for output strides 8/16 and FPN input, clear errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.segmentation import deeplabv3_resnet50

from backbones import ResNetBackbone
from heads.deeplab import build_deeplab

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def test_torchvision_deeplabv3_resnet50_parity() -> None:
    torch.manual_seed(0)
    theirs = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=21, aux_loss=True)
    for module in theirs.modules():  # non-trivial running statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    ours = build_deeplab(ResNetBackbone("resnet50", norm="bn", output_stride=8), num_classes=21)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    images = torch.rand(2, 3, 96, 80)
    with torch.no_grad():
        expected, got = theirs.eval()((images - MEAN) / STD), ours.eval()(images)
    for key in ("out", "aux"):
        assert got[key].shape == (2, 21, 96, 80)
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("variant", "features", "output_stride", "levels"),
    [
        ("v3", "dilated", 8, ("c5", None, 8)),
        ("v3", "dilated", 16, ("c5", None, 16)),
        ("v3plus", "dilated", 8, ("c5", "c2", 8)),
        ("v3plus", "dilated", 16, ("c5", "c2", 16)),
        ("v3", "fpn", 32, ("p4", None, 16)),
        ("v3plus", "fpn", 32, ("p4", "p2", 16)),
    ],
)
def test_head_shapes(variant: str, features: str, output_stride: int, levels) -> None:
    backbone = ResNetBackbone("resnet50", output_stride=output_stride)
    model = build_deeplab(backbone, num_classes=5, variant=variant, features=features, channels=64).eval()
    high, low, high_stride = levels
    assert (model.high_level, model.low_level) == (high, low)
    shapes = model.backbone.output_shape()
    assert shapes[high].stride == high_stride
    captured = {}
    head = model.classifier.aspp if variant == "v3plus" else model.classifier[0]
    head.register_forward_hook(lambda m, i, o: captured.update(aspp_in=i[0], aspp_out=o))
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    assert out["out"].shape == (2, 5, 64, 96) and out["aux"].shape == (2, 5, 64, 96)
    assert captured["aspp_in"].shape == (2, shapes[high].channels, 64 // high_stride, 96 // high_stride)
    assert captured["aspp_out"].shape == (2, 64, 64 // high_stride, 96 // high_stride)


def test_no_aux_head_when_disabled() -> None:
    model = build_deeplab(ResNetBackbone("resnet50", output_stride=16), num_classes=3, aux_level=None).eval()
    with torch.no_grad():
        assert set(model(torch.rand(2, 3, 64, 64))) == {"out"}


def test_dilated_fpn_is_explained() -> None:
    with pytest.raises(ValueError, match="features=fpn needs an undilated backbone"):
        build_deeplab(ResNetBackbone("resnet50", output_stride=16), num_classes=3, features="fpn")
