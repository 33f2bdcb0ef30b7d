"""Panoptic FPN's semantic head (detectron2's design, from channels and strides alone) and the merge of
instances over stuff, against a hand-drawn map."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from backbones import FeatureSpec, ResNetBackbone
from backbones.fpn import FeaturePyramid
from heads.panoptic import SemanticFPNHead, merge_panoptic


def test_semantic_head_upsamples_each_level_to_the_finest_and_predicts_there() -> None:
    pyramid = FeaturePyramid(ResNetBackbone("resnet18"), out_channels=32, extra_blocks="none")
    specs = pyramid.output_shape()
    assert [spec.stride for spec in specs.values()] == [4, 8, 16, 32]
    head = SemanticFPNHead(specs, num_classes=5, channels=16)
    convs = [sum(isinstance(m, nn.Conv2d) for m in level.modules()) for level in head.scale_heads]
    assert convs == [1, 1, 2, 3]  # one conv per halving, at least one
    logits = head(pyramid(torch.rand(2, 3, 96, 128)))
    assert logits.shape == (2, 5, 24, 32)  # 1/4 of the input


def test_semantic_head_reads_any_channels_and_strides() -> None:
    specs = OrderedDict(a=FeatureSpec(24, 8), b=FeatureSpec(40, 16))
    head = SemanticFPNHead(specs, num_classes=3, channels=8)
    logits = head({"a": torch.rand(1, 24, 10, 12), "b": torch.rand(1, 40, 5, 6)})
    assert logits.shape == (1, 3, 10, 12)


def test_instances_go_over_stuff_best_first() -> None:
    semantic = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])  # sky over ground
    masks = torch.zeros(4, 4, 4, dtype=torch.bool)
    masks[0, 1:3, 0:2] = True  # a thing, score 0.9
    masks[1, 1:3, 0:2] = True  # the same place, score 0.8: covered
    masks[1, 1, 2] = True  # (3 of its 5 pixels taken: 0.6 > 0.5, left out)
    masks[2, 0, 3] = True  # score 0.3: under the threshold
    masks[3, 2:4, 2] = True  # score 0.7: a second thing
    panoptic, segments = merge_panoptic(
        masks, torch.tensor([0.9, 0.8, 0.3, 0.7]), torch.tensor([11, 11, 12, 13]), semantic, {1: 21, 2: 22},
        stuff_area_threshold=5,
    )  # fmt: skip
    expected = torch.tensor([[3, 3, 3, 3], [1, 1, 3, 3], [1, 1, 2, 0], [0, 0, 2, 0]], dtype=torch.int32)
    # sky keeps 6 free pixels (>= 5); ground only 4 of its 8: left unlabelled
    assert torch.equal(panoptic, expected)
    assert [(s.id, s.category_id, s.isthing, s.area) for s in segments] == [
        (1, 11, True, 4), (2, 13, True, 2), (3, 21, False, 6)
    ]  # fmt: skip
