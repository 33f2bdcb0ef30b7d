"""Panoptic FPN's parts (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019, as detectron2
builds them): the semantic head on the FPN, and the merge of instances over stuff into one segment map."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones.base import FeatureSpec, group_norm


class SemanticFPNHead(nn.Module):
    """Each pyramid level upsampled to the finest level's stride by 3x3 conv + GroupNorm + ReLU + 2x
    bilinear steps (one step per halving, none at the finest level), the levels summed, then a 1x1 conv
    to the classes: logits at the finest stride (1/4 of the input on P2-P5). Reads only the levels'
    channels and strides (``specs``: the pyramid's ``output_shape()`` entries it uses)."""

    def __init__(self, specs: Mapping[str, FeatureSpec], num_classes: int, channels: int = 128) -> None:
        super().__init__()
        self.levels = list(specs)
        finest = min(spec.stride for spec in specs.values())
        self.stride = finest
        self.scale_heads = nn.ModuleList()
        for spec in specs.values():
            steps = round(math.log2(spec.stride / finest))  # detectron2: one conv (and 2x upsampling) per halving
            layers: list[nn.Module] = []
            for k in range(max(steps, 1)):
                layers += [
                    nn.Conv2d(spec.channels if k == 0 else channels, channels, 3, padding=1, bias=False),
                    group_norm(channels),
                    nn.ReLU(inplace=True),
                ]
                if steps:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        summed = None
        for level, head in zip(self.levels, self.scale_heads, strict=True):
            out = head(features[level])
            if summed is not None and out.shape[-2:] != summed.shape[-2:]:  # odd sizes: align to the finest
                out = F.interpolate(out, size=summed.shape[-2:], mode="bilinear", align_corners=False)
            summed = out if summed is None else summed + out
        return self.predictor(summed)


@dataclass
class PanopticSegment:
    id: int
    category_id: int
    isthing: bool
    score: float = 1.0
    area: int = 0


def merge_panoptic(
    instance_masks: Tensor,
    instance_scores: Tensor,
    instance_categories: Tensor,
    semantic: Tensor,
    stuff_categories: Mapping[int, int],
    *,
    overlap_threshold: float = 0.5,
    score_threshold: float = 0.5,
    stuff_area_threshold: int = 4096,
) -> tuple[Tensor, list[PanopticSegment]]:
    """One segment-id map (0: unlabelled) from instances laid over stuff, detectron2's rule:

    instances scoring at least ``score_threshold``, best first, each takes its mask's pixels still
    free, unless more than ``overlap_threshold`` of its mask is taken already; then each stuff class of
    ``semantic`` (a class-index map; ``stuff_categories``: semantic index -> category id) takes its free
    pixels when there are at least ``stuff_area_threshold`` of them. ``instance_masks`` are boolean
    (N x H x W); ``instance_categories`` the categories' ids."""
    panoptic = torch.zeros(semantic.shape, dtype=torch.int32, device=semantic.device)
    segments: list[PanopticSegment] = []
    for k in torch.argsort(instance_scores, descending=True).tolist():
        score = float(instance_scores[k])
        if score < score_threshold:
            break
        mask = instance_masks[k].bool()
        area = int(mask.sum())
        if area == 0:
            continue
        taken = int((mask & (panoptic > 0)).sum())
        if taken / area > overlap_threshold:
            continue
        free = mask & (panoptic == 0)
        segment = PanopticSegment(len(segments) + 1, int(instance_categories[k]), True, score, int(free.sum()))
        panoptic[free] = segment.id
        segments.append(segment)
    for index, category_id in stuff_categories.items():
        free = (semantic == index) & (panoptic == 0)
        area = int(free.sum())
        if area < stuff_area_threshold:
            continue
        segment = PanopticSegment(len(segments) + 1, int(category_id), False, 1.0, area)
        panoptic[free] = segment.id
        segments.append(segment)
    return panoptic, segments
