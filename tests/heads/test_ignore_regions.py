"""Ignore regions: an object a tile cuts to 30% (under ``tile.min_visible``) reaches the detector as an
ignore region, and no head teaches its pixels as background: no negative RPN anchor or RoI proposal over
it, no classification loss from the RetinaNet anchors or FCOS locations on it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from backbones import ResNetBackbone
from heads.faster_rcnn import build_faster_rcnn
from heads.ignore_regions import IGNORE_KEY, IGNORE_SHARE, points_inside, share_inside
from heads.one_stage import build_fcos, build_retinanet
from tasks.data.augment import detection_transforms
from tasks.data.detection_dataset import DetectionDataset
from tasks.data.detection_index import DetectionIndex
from tasks.data.tiling import TiledDataset, TileOptions

CUT = [100.0, 20.0, 140.0, 60.0]  # 40 px wide: a tile ending at x = 112 holds 30% of it
KEPT = [20.0, 20.0, 60.0, 60.0]


def _tiled(tmp_path, augment: str = "none") -> TiledDataset:
    from PIL import Image

    Image.fromarray(np.zeros((128, 240, 3), np.uint8)).save(tmp_path / "a.png")
    index = DetectionIndex.build([1], [128], [240], ["a.png"], [2], np.array([KEPT, CUT]), np.array([1, 2]),
                                 np.zeros(2, bool))  # fmt: skip
    transforms = detection_transforms(augment, train=True)
    dataset = DetectionDataset(index, tmp_path, category_ids=[1, 2], class_names=["a", "b"], ground_truth=lambda: None,
                               transforms=transforms)  # fmt: skip
    return TiledDataset(dataset, TileOptions(size=112, overlap=0.0, min_visible=0.5, keep_empty=1.0))


def test_an_object_cut_to_30_percent_is_an_ignore_region_of_its_tile(tmp_path) -> None:
    tiled = _tiled(tmp_path)
    first = int(np.flatnonzero((tiled.tiles[:, 1:] == [0, 0, 112, 112]).all(1))[0])
    _, target = tiled[first]
    assert target["boxes"].tolist() == [KEPT] and target["labels"].tolist() == [1]
    assert target[IGNORE_KEY].tolist() == [[100, 20, 112, 60]]  # the 30% inside the tile
    flipped = _tiled(tmp_path, "hflip")
    flips = {tuple(flipped[first][1][IGNORE_KEY][0].round().tolist()) for _ in range(20)}  # moved with the image
    assert flips == {(100, 20, 112, 60), (0, 20, 12, 60)}


REGION = [100.0, 20.0, 128.0, 60.0]  # where a tile cut an object, in a 128 px input


def _target(with_region: bool) -> dict[str, torch.Tensor]:
    target = {"boxes": torch.tensor([KEPT]), "labels": torch.tensor([1])}
    return {**target, IGNORE_KEY: torch.tensor([REGION])} if with_region else target


def _faster_rcnn():
    torch.manual_seed(0)
    backbone = ResNetBackbone("resnet18")
    return build_faster_rcnn(backbone, num_classes=2, fpn_channels=32, representation_size=64, min_size=128,
                             max_size=128, anchor_sizes=[8, 16, 32, 64, 128])  # fmt: skip


@pytest.mark.parametrize("with_region", [True, False])
def test_no_negative_anchor_over_an_ignore_region(with_region: bool) -> None:
    model = _faster_rcnn()
    images = ImageList(torch.zeros(1, 3, 128, 128), [(128, 128)])
    features = [torch.zeros(1, 32, 128 // stride, 128 // stride) for stride in (4, 8, 16, 32, 64)]
    anchors = model.rpn.anchor_generator(images, features)
    labels, _ = model.rpn.assign_targets_to_anchors(anchors, [_target(with_region)])
    over = share_inside(anchors[0], torch.tensor([REGION])) >= IGNORE_SHARE
    assert over.sum() > 20
    negatives_over = int(((labels[0] == 0) & over).sum())
    assert (negatives_over == 0) == with_region  # without the region they would be background
    assert (labels[0] == 0).sum() > 1000 and (labels[0] == 1).any()  # elsewhere: background and the object


@pytest.mark.parametrize("with_region", [True, False])
def test_no_background_proposal_sampled_over_an_ignore_region(with_region: bool) -> None:
    heads = _faster_rcnn().roi_heads
    torch.manual_seed(1)
    corners = torch.rand(400, 2) * 100
    proposals = [torch.cat([corners, corners + 8 + torch.rand(400, 2) * 40], dim=1)]
    sampled, _, labels, _ = heads.select_training_samples(proposals, [_target(with_region)])
    over = share_inside(sampled[0], torch.tensor([REGION])) >= IGNORE_SHARE
    assert ((labels[0] == 0) & over).any() != with_region
    assert (labels[0] == 0).sum() > 50


def _dense_losses(builder, with_region: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradient of every loss with respect to the classification logits, and the locations covered
    by the ignore region (RetinaNet: half an anchor's area; FCOS: its point)."""
    torch.manual_seed(0)
    model = builder(ResNetBackbone("resnet18"), num_classes=2, fpn_channels=32, min_size=128, max_size=128)
    stride, size = 8, 16
    centres = torch.stack(torch.meshgrid(torch.arange(4, 128, stride), torch.arange(4, 128, stride), indexing="xy"), -1)
    centres = centres.reshape(-1, 2).float()
    anchors = [torch.cat([centres - size / 2, centres + size / 2], dim=1)]
    target = _target(with_region)
    count = len(anchors[0])
    outputs = {
        "cls_logits": torch.randn(1, count, 3, requires_grad=True),
        "bbox_regression": torch.randn(1, count, 4) * 0.1,
        "bbox_ctrness": torch.randn(1, count, 1),
    }
    if builder is build_retinanet:
        losses = model.compute_loss([target], {k: outputs[k] for k in ("cls_logits", "bbox_regression")}, anchors)
        over = share_inside(anchors[0], torch.tensor([REGION])) >= IGNORE_SHARE
    else:
        losses = model.compute_loss([target], outputs, anchors, [count])
        over = points_inside(anchors[0], torch.tensor([REGION]))
    (gradient,) = torch.autograd.grad(sum(losses.values()), outputs["cls_logits"])
    return gradient[0], over


@pytest.mark.parametrize("builder", [build_retinanet, build_fcos], ids=["retinanet", "fcos"])
def test_dense_heads_learn_nothing_from_locations_on_an_ignore_region(builder) -> None:
    gradient, over = _dense_losses(builder, with_region=True)
    assert over.sum() >= 6
    # nothing but rounding (FCOS takes the focal loss of these locations back out of the head's sum)
    torch.testing.assert_close(gradient[over], torch.zeros_like(gradient[over]), atol=1e-7, rtol=0)
    assert (gradient[~over].abs().sum(1) > 0).sum() > 100
    without, _ = _dense_losses(builder, with_region=False)
    assert (without[over].abs().sum(1) > 1e-4).all()  # the same locations learn background without it
    torch.testing.assert_close(gradient[~over], without[~over])  # the rest of the image learns as before


@pytest.mark.parametrize(
    "builder", [build_faster_rcnn, build_retinanet, build_fcos], ids=["faster_rcnn", "retinanet", "fcos"]
)
def test_ignore_regions_are_resized_with_the_image(builder) -> None:
    model = builder(ResNetBackbone("resnet18"), num_classes=2, fpn_channels=32, min_size=128, max_size=256).train()
    _, (target,) = model.transform([torch.zeros(3, 64, 96)], [_target(with_region=True)])  # brought to 128 x 192
    torch.testing.assert_close(target[IGNORE_KEY], torch.tensor([REGION]) * 2)
    torch.testing.assert_close(target["boxes"], torch.tensor([KEPT]) * 2)
