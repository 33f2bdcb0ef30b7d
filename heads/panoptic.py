"""Panoptic FPN's parts (Kirillov et al., "Panoptic Feature Pyramid Networks", CVPR 2019, as detectron2
builds them): the semantic head on the FPN, and the merge of instances over stuff into one segment map."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from backbones import Backbone
from backbones.base import FeatureSpec, group_norm
from heads.faster_rcnn import FasterRCNN, training_mode
from heads.mask_rcnn import build_mask_rcnn

IGNORE = 255  # void pixels of a semantic target


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


class PanopticFPN(FasterRCNN):
    """Mask R-CNN and a semantic FPN head on one pyramid (Kirillov et al., 2019).

    Labels: things 1..K (the detector's), stuff K+1..K+S. The semantic head predicts S+1 classes:
    0 for every thing, ``s`` for stuff label K+s. Training returns the detector's losses times
    ``instance_loss_weight`` and ``loss_sem_seg`` (cross-entropy over the targets' ``sem_seg``, 255
    ignored) times ``semantic_loss_weight``. Eval returns the detections plus ``panoptic`` (H x W segment
    ids, 0 unlabelled), ``segment_labels`` and ``segment_scores`` (segment ``k`` at position ``k - 1``),
    merged by :func:`merge_panoptic` with ``merge`` (its keyword thresholds)."""

    def __init__(
        self,
        detector: FasterRCNN,
        semantic_head: SemanticFPNHead,
        *,
        semantic_loss_weight: float = 0.5,
        instance_loss_weight: float = 1.0,
        merge: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(
            detector.backbone, detector.rpn, detector.roi_heads, detector.transform, num_classes=detector.num_classes
        )
        self.semantic_head = semantic_head
        self.semantic_loss_weight, self.instance_loss_weight = semantic_loss_weight, instance_loss_weight
        self.merge = dict(merge or {})

    @property
    def num_stuff(self) -> int:
        return self.semantic_head.predictor.out_channels - 1

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None):
        if self.training:
            return self._run(images, targets, losses=True)[0]
        return self._run(images, None, losses=False)[1]

    def losses_and_detections(self, images: list[Tensor], targets: list[dict[str, Tensor]]):
        """Validation in one backbone pass, as :meth:`FasterRCNN.losses_and_detections`, with the panoptic merge."""
        return self._run(images, targets, losses=True, detections=True)

    def _run(self, images, targets, *, losses: bool, detections: bool | None = None):
        detections = not self.training if detections is None else detections
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, resized_targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        semantic = self._semantic_logits(features, batch, original_sizes)
        found, loss_dict = None, {}
        if losses:
            with training_mode(self.rpn, self.roi_heads):
                proposals, rpn_losses = self.rpn(batch, features, resized_targets)
                _, roi_losses = self.roi_heads(features, proposals, batch.image_sizes, resized_targets)
            loss_dict = {k: v * self.instance_loss_weight for k, v in {**roi_losses, **rpn_losses}.items()}
            loss_dict["loss_sem_seg"] = self.semantic_loss_weight * semantic_loss(semantic, targets)
        if detections:
            proposals, _ = self.rpn(batch, features)
            found, _ = self.roi_heads(features, proposals, batch.image_sizes)
            found = self.transform.postprocess(found, batch.image_sizes, original_sizes)
            for detection, logits in zip(found, semantic, strict=True):
                detection.update(self._merge(detection, logits))
        return loss_dict, found

    def _semantic_logits(self, features, batch, original_sizes) -> list[Tensor]:
        """Per image: the head's logits cut to the image inside the padded batch, at its original size."""
        logits = self.semantic_head(features)
        logits = F.interpolate(logits.float(), size=batch.tensors.shape[-2:], mode="bilinear", align_corners=False)
        return [
            F.interpolate(logits[i : i + 1, :, :h, :w], size=size, mode="bilinear", align_corners=False)[0]
            for i, ((h, w), size) in enumerate(zip(batch.image_sizes, original_sizes, strict=True))
        ]

    def _merge(self, detection: dict[str, Tensor], logits: Tensor) -> dict[str, Tensor]:
        things = self.num_classes
        empty = logits.new_zeros((0, *logits.shape[-2:]), dtype=torch.bool)
        masks = detection["masks"][:, 0] > 0.5 if "masks" in detection else empty
        stuff = {s: things + s for s in range(1, self.num_stuff + 1)}
        panoptic, segments = merge_panoptic(
            masks, detection["scores"], detection["labels"], logits.argmax(0), stuff, **self.merge
        )
        return {
            "panoptic": panoptic,
            "segment_labels": torch.tensor([s.category_id for s in segments], dtype=torch.int64, device=logits.device),
            "segment_scores": torch.tensor([s.score for s in segments], dtype=torch.float32, device=logits.device),
        }


def semantic_loss(logits: list[Tensor], targets: list[dict[str, Tensor]]) -> Tensor:
    """Cross-entropy over every labelled pixel of the batch (``sem_seg`` 255: void, left out)."""
    total = sum(
        F.cross_entropy(x[None], t["sem_seg"][None].to(x.device), ignore_index=IGNORE, reduction="sum")
        for x, t in zip(logits, targets, strict=True)
    )
    labelled = sum(int((t["sem_seg"] != IGNORE).sum()) for t in targets)
    return total / max(labelled, 1)


def build_panoptic_fpn(
    backbone: Backbone,
    *,
    num_classes: int,
    stuff_names: Sequence[str] | None = None,
    semantic_channels: int = 128,
    semantic_loss_weight: float = 0.5,
    instance_loss_weight: float = 1.0,
    overlap_threshold: float = 0.5,
    score_threshold: float = 0.5,
    stuff_area_threshold: int = 4096,
    **mask_rcnn: object,
) -> PanopticFPN:
    """Panoptic FPN: ``build_mask_rcnn(backbone, num_classes=..., **mask_rcnn)`` for the ``num_classes``
    things, and a semantic FPN head ``semantic_channels`` wide over the pyramid levels the boxes read,
    for the stuff (``stuff_names``, from the data) plus one class for all things. Losses and merge
    thresholds as detectron2's Panoptic FPN (semantic loss weight 0.5; instances scoring 0.5 or more,
    dropped when over half taken; stuff regions under ``stuff_area_threshold`` pixels left unlabelled)."""
    if not stuff_names:
        raise ValueError("stuff_names is empty: panoptic data declares stuff categories (isthing: 0)")
    detector = build_mask_rcnn(backbone, num_classes=num_classes, **mask_rcnn)
    shapes = detector.backbone.output_shape()
    specs = {level: shapes[level] for level in detector.backbone.levels}
    head = SemanticFPNHead(specs, len(stuff_names) + 1, semantic_channels)
    merge = {
        "overlap_threshold": overlap_threshold,
        "score_threshold": score_threshold,
        "stuff_area_threshold": stuff_area_threshold,
    }
    return PanopticFPN(
        detector,
        head,
        semantic_loss_weight=semantic_loss_weight,
        instance_loss_weight=instance_loss_weight,
        merge=merge,
    )
