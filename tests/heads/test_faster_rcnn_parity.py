"""Our Faster R-CNN on ResNet50-FPN is torchvision's fasterrcnn_resnet50_fpn, key for key."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet50
from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops import FrozenBatchNorm2d

from backbones import ResNetBackbone
from heads import build_faster_rcnn

SIZE = dict(min_size=160, max_size=160, box_score_thresh=0.0)


def _randomise_norm_statistics(model: torch.nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


@pytest.fixture(scope="module")
def random_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's fasterrcnn_resnet50_fpn with random weights (BatchNorm, as built without weights)."""
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **SIZE)
    _randomise_norm_statistics(model)
    return model.state_dict()


def _torchvision_model(norm: str, state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    if norm == "bn":
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **SIZE)
    else:  # how torchvision builds it when loading its COCO weights: frozen statistics
        body = _resnet_fpn_extractor(resnet50(norm_layer=FrozenBatchNorm2d), 3)
        model = FasterRCNN(body, num_classes=91, **SIZE)
    model.load_state_dict(state_dict)
    return model.eval()


@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_state_dict_loads_and_outputs_match(random_state_dict: dict[str, torch.Tensor], norm: str) -> None:
    torchvision_model = _torchvision_model(norm, random_state_dict)
    ours = build_faster_rcnn(ResNetBackbone("resnet50", norm=norm), num_classes=90, **SIZE)
    assert set(ours.state_dict()) == set(torchvision_model.state_dict())
    ours.load_state_dict(random_state_dict, strict=True)
    ours.eval()

    images = [torch.rand(3, 150, 170, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        batch, _ = torchvision_model.transform(images)
        theirs_features = torchvision_model.backbone(batch.tensors)
        ours_features = ours.backbone(batch.tensors)
        theirs_out, ours_out = torchvision_model(images), ours(images)

    assert list(ours_features) == ["p2", "p3", "p4", "p5", "p6"]
    for theirs_map, ours_map in zip(theirs_features.values(), ours_features.values(), strict=True):
        torch.testing.assert_close(ours_map, theirs_map, atol=1e-4, rtol=0)
    for theirs_det, ours_det in zip(theirs_out, ours_out, strict=True):
        assert len(ours_det["boxes"]) == len(theirs_det["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(ours_det[key], theirs_det[key], atol=1e-4, rtol=0)
