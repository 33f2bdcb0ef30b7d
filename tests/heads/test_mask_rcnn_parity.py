"""Our Mask R-CNN on ResNet50-FPN is torchvision's maskrcnn_resnet50_fpn, key for key, output for output."""

from __future__ import annotations

import torch
from torchvision.models.detection import maskrcnn_resnet50_fpn

from backbones import ResNetBackbone
from heads.mask_rcnn import build_mask_rcnn

SIZE = dict(min_size=128, max_size=128, box_score_thresh=0.0, box_detections_per_img=20)


def test_state_dict_loads_and_outputs_match() -> None:
    torch.manual_seed(0)
    theirs = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91, **SIZE).eval()
    ours = build_mask_rcnn(ResNetBackbone("resnet50", norm="bn"), num_classes=90, **SIZE)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    images = [torch.rand(3, 120, 140, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    with torch.no_grad():
        expected, found = theirs(images), ours(images)
    for mine, reference in zip(found, expected, strict=True):
        assert len(reference["boxes"]) > 0 and mine["masks"].shape == reference["masks"].shape
        for key in ("boxes", "labels", "scores", "masks"):
            torch.testing.assert_close(mine[key], reference[key])


def test_training_gives_the_mask_loss() -> None:
    torch.manual_seed(0)
    model = build_mask_rcnn(ResNetBackbone("resnet18"), num_classes=2, fpn_channels=32, representation_size=64,
                            mask_layers=(32, 32), mask_predictor_channels=32, min_size=64, max_size=64)  # fmt: skip
    mask = torch.zeros(64, 64, dtype=torch.uint8)
    mask[10:30, 12:40] = 1
    target = {"boxes": torch.tensor([[12.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([1]), "masks": mask[None]}
    losses = model.train()([torch.rand(3, 64, 64)], [target])
    assert {"loss_mask", "loss_classifier", "loss_box_reg"} <= set(losses)
    sum(losses.values()).backward()
    assert model.roi_heads.mask_predictor.mask_fcn_logits.weight.grad is not None
