"""Mixed precision (``trainer.precision=bf16-mixed``, Lightning's autocast on the CPU): boxes and
masks are decoded in float32, so detections at 800 px match float32 ones to well under a pixel."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from lightning.pytorch.plugins import MixedPrecision
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.models.detection.rpn import concat_box_prediction_layers

from backbones import Backbone, FeatureSpec, ResNetBackbone
from heads import build_faster_rcnn
from heads.deeplab import build_deeplab


class TinyBackbone(Backbone):
    """A contract backbone of four strided convs: the heads at 800 px without a ResNet's CPU cost."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(3, 8, 3, 4, 1)] + [nn.Conv2d(8, 8, 3, 2, 1) for _ in range(3)])

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict((f"c{k + 2}", FeatureSpec(8, 4 * 2**k)) for k in range(4))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = OrderedDict()
        for k, conv in enumerate(self.convs):
            x = features[f"c{k + 2}"] = torch.relu(conv(x))
        return features


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    torch.manual_seed(0)
    return build_faster_rcnn(TinyBackbone(), num_classes=4, fpn_channels=16, representation_size=32).eval()


def _image() -> torch.Tensor:
    return torch.rand(3, 600, 800, generator=torch.Generator().manual_seed(1))  # resized to 800x1066


def _bf16():
    return MixedPrecision("bf16-mixed", "cpu").forward_context()  # what trainer.precision=bf16-mixed runs under


def _decoded(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The RPN's box for every anchor, and the box head's boxes for a fixed set of proposals."""
    with torch.no_grad():
        batch, _ = model.transform([image])
        features = model.backbone(batch.tensors)
        levels = list(features.values())
        objectness, deltas = model.rpn.head(levels)
        anchors = model.rpn.anchor_generator(batch, levels)
        _, deltas = concat_box_prediction_layers(objectness, deltas)
        proposals = model.rpn.box_coder.decode(deltas, anchors).view(-1, 4)
        fixed = [torch.tensor([[100.0, 200.0, 900.0, 780.0], [10.0, 20.0, 300.0, 400.0], [700.0, 50.0, 1060.0, 790.0]])]
        pooled = model.roi_heads.box_roi_pool(features, fixed, batch.image_sizes)
        _, regression = model.roi_heads.box_predictor(model.roi_heads.box_head(pooled))
        return proposals, model.roi_heads.box_coder.decode(regression, fixed)


def test_boxes_are_decoded_in_float32(detector: nn.Module) -> None:
    proposals, boxes = _decoded(detector, _image())
    with _bf16():
        low_proposals, low_boxes = _decoded(detector, _image())
    assert low_proposals.dtype == low_boxes.dtype == torch.float32
    assert proposals.abs().max() > 1000  # coordinates where a bfloat16 number is only exact to 8 px
    torch.testing.assert_close(low_proposals, proposals, rtol=0, atol=0.5)
    torch.testing.assert_close(low_boxes, boxes, rtol=0, atol=0.5)


def test_bf16_detections_match_float32_within_half_a_pixel(detector: nn.Module) -> None:
    with torch.no_grad():
        reference = detector([_image()])[0]
        with _bf16():
            low = detector([_image()])[0]
    assert low["boxes"].dtype == torch.float32 and len(low["boxes"]) == len(reference["boxes"]) == 100
    # objectness in bfloat16 may reorder near-tied proposals: pair the detections one to one (each
    # float32 detection with at most one bfloat16 detection of its class, the pairing with the least
    # total distance); all but such swaps must agree to half a pixel
    errors = _paired_distances(reference, low)
    assert len(errors) == 100 and (errors < 0.5).float().mean() >= 0.95, errors


def _paired_distances(reference: dict, other: dict) -> torch.Tensor:
    """L-inf box distances of the one-to-one pairing of two detection sets with the least total
    distance; detections of different classes never pair."""
    distance = torch.cdist(reference["boxes"].double(), other["boxes"].double(), p=float("inf"))
    distance[reference["labels"][:, None] != other["labels"][None, :]] = 1e9
    rows, columns = linear_sum_assignment(distance.numpy())
    return distance[rows, columns]


def test_segmentation_logits_are_float32_under_bf16() -> None:
    model = build_deeplab(ResNetBackbone("resnet18"), num_classes=3, variant="v3plus", channels=16).eval()
    with torch.no_grad(), _bf16():
        out = model(torch.rand(1, 3, 64, 64))
    assert out["out"].dtype == out["aux"].dtype == torch.float32
