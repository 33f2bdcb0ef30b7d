"""Panoptic FPN: Mask R-CNN's own losses and detections plus the semantic head's, weighted; the merged
map from those detections; the semantic loss against cross-entropy by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from backbones import ResNetBackbone
from heads.mask_rcnn import build_mask_rcnn
from heads.panoptic import IGNORE, PanopticFPN, build_panoptic_fpn, merge_panoptic, semantic_loss

OPTIONS = dict(
    min_size=64,
    max_size=64,
    anchor_sizes=[8, 16, 32, 64, 128],
    fpn_channels=32,
    representation_size=64,
    rpn_post_nms_top_n_train=50,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=16,
    box_score_thresh=0.0,
    mask_layers=[16],
    mask_predictor_channels=16,
)
MERGE = dict(score_threshold=0.0, stuff_area_threshold=4)


def _model() -> PanopticFPN:
    torch.manual_seed(0)
    return build_panoptic_fpn(
        ResNetBackbone("resnet18"), num_classes=3, stuff_names=["sky", "ground"], semantic_channels=16,
        overlap_threshold=0.5, **MERGE, **OPTIONS,
    )  # fmt: skip


def _batch() -> tuple[list[torch.Tensor], list[dict]]:
    torch.manual_seed(1)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = []
    for image in images:
        h, w = image.shape[-2:]
        masks = torch.zeros(2, h, w, dtype=torch.uint8)
        masks[0, 5:20, 5:25] = 1
        masks[1, 25:40, 30:60] = 1
        semantic = torch.randint(0, 3, (h, w))
        semantic[:2] = IGNORE
        targets.append(
            {
                "boxes": torch.tensor([[5.0, 5, 25, 20], [30, 25, 60, 40]]),
                "labels": torch.tensor([1, 3]),
                "masks": masks,
                "sem_seg": semantic,
            }
        )
    return images, targets


def test_semantic_loss_is_cross_entropy_over_the_labelled_pixels() -> None:
    logits = [torch.randn(3, 4, 5), torch.randn(3, 2, 2)]
    targets = [{"sem_seg": torch.randint(0, 3, (4, 5))}, {"sem_seg": torch.full((2, 2), IGNORE)}]
    targets[0]["sem_seg"][0, 0] = IGNORE
    pixels = logits[0].permute(1, 2, 0).reshape(-1, 3)
    labels = targets[0]["sem_seg"].reshape(-1)
    expected = F.cross_entropy(pixels[labels != IGNORE], labels[labels != IGNORE])
    assert semantic_loss(logits, targets).item() == pytest.approx(expected.item(), rel=1e-6)


def test_training_adds_the_weighted_semantic_loss_to_mask_rcnns_losses() -> None:
    model = _model().train()
    images, targets = _batch()
    torch.manual_seed(2)
    losses = model(images, targets)
    torch.manual_seed(2)
    mask_rcnn = GeneralizedRCNN.forward(model, images, targets)  # the same modules as plain Mask R-CNN
    assert set(losses) == {*mask_rcnn, "loss_sem_seg"}
    for name, value in mask_rcnn.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
    features = model.backbone(model.transform(images)[0].tensors)
    assert model.semantic_head.predictor.out_channels == 3  # things + 2 stuff classes
    batch = model.transform(images)[0]
    logits = model._semantic_logits(features, batch, [tuple(i.shape[-2:]) for i in images])
    assert [tuple(x.shape) for x in logits] == [(3, 64, 64), (3, 48, 64)]
    assert losses["loss_sem_seg"].item() == pytest.approx(0.5 * semantic_loss(logits, targets).item(), rel=1e-5)


def test_inference_merges_mask_rcnns_detections_over_the_semantic_stuff() -> None:
    model = _model().eval()
    images, targets = _batch()
    with torch.no_grad():
        found = model(images)
        plain = GeneralizedRCNN.forward(model, images)
        batch = model.transform(images)[0]
        logits = model._semantic_logits(model.backbone(batch.tensors), batch, [tuple(i.shape[-2:]) for i in images])
        losses, validated = model.losses_and_detections(images, targets)
    assert set(losses) >= {"loss_sem_seg", "loss_mask", "loss_classifier"}
    for output, detections, semantic, checked in zip(found, plain, logits, validated, strict=True):
        assert torch.equal(output["boxes"], detections["boxes"]) and torch.equal(output["masks"], detections["masks"])
        panoptic, segments = merge_panoptic(
            detections["masks"][:, 0] > 0.5, detections["scores"], detections["labels"], semantic.argmax(0),
            {1: 4, 2: 5}, overlap_threshold=0.5, **MERGE,
        )  # fmt: skip
        assert torch.equal(output["panoptic"], panoptic) and output["panoptic"].shape == semantic.shape[-2:]
        assert output["segment_labels"].tolist() == [s.category_id for s in segments]
        assert torch.equal(checked["panoptic"], panoptic)
    assert any(label > 3 for o in found for label in o["segment_labels"].tolist())  # stuff labels follow the things'


def test_state_dict_is_mask_rcnns_plus_the_semantic_head() -> None:
    model = _model()
    torch.manual_seed(0)
    mask_rcnn = build_mask_rcnn(ResNetBackbone("resnet18"), num_classes=3, **OPTIONS)
    keys = set(model.state_dict())
    assert {k for k in keys if not k.startswith("semantic_head.")} == set(mask_rcnn.state_dict())
    assert any(k.startswith("semantic_head.") for k in keys)


def test_no_stuff_is_refused() -> None:
    with pytest.raises(ValueError, match="stuff_names is empty"):
        build_panoptic_fpn(ResNetBackbone("resnet18"), num_classes=3, stuff_names=[], **OPTIONS)
