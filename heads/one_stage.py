"""One-stage detectors from torchvision's parts on any contract backbone: RetinaNet (dense anchors,
focal loss) and FCOS (anchor-free: one point per location, centre-ness).

Both classify with sigmoids over ``num_classes + 1`` outputs whose index 0 is never a target, as
torchvision's COCO models do (91 outputs): dataset label ``k`` (1..K) is output ``k``, as for Faster
R-CNN. With a ResNet50 body and a 256-wide FPN over c3-c5 plus P6/P7 from P5, the state dicts are key for
key those of torchvision's ``retinanet_resnet50_fpn`` and ``fcos_resnet50_fpn`` (``num_classes=90``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection import fcos, retinanet
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

from backbones import Backbone, FeaturePyramid
from backbones.base import IMAGENET_MEAN, IMAGENET_STD
from heads.detector_weights import load_detector_weights
from heads.faster_rcnn import FullPrecisionAnchorGenerator
from heads.ignore_regions import RegionAwareTransform, covered, ignore_regions, points_inside

ONE_STAGE_LEVELS = ("c3", "c4", "c5")  # P3-P5, and P6/P7 on top: strides 8 to 128
HEAD_NORMS = ("none", "gn")
ONE_STAGE_EXTRAS = ("p6p7", "p6p7_c5")
BOX_LOSSES = ("l1", "smooth_l1", "giou", "diou", "ciou")  # torchvision's RetinaNet regression losses


def head_group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (torchvision's head at 256 channels), fewer where a group would hold one
    channel: on P7's 1x1 map of a single image such a group has one value and no variance."""
    return nn.GroupNorm(math.gcd(32, max(channels // 2, 1)), channels)


def _head_norm(norm: str) -> Callable[[int], nn.Module] | None:
    """GroupNorm after each conv of the dense head, or none (RetinaNet's original head)."""
    if norm not in HEAD_NORMS:
        raise ValueError(f"head_norm={norm!r} must be one of {HEAD_NORMS}")
    return head_group_norm if norm == "gn" else None


class _LossesAndDetections:
    """What the one-stage detectors add to torchvision's for ``heads.protocol.Detector``: validation in
    one backbone and head pass (the training losses and the inference detections), and the trunk."""

    predicts_masks = False

    def trunk(self) -> dict[str, nn.Module]:
        """The backbone with its pyramid and the dense head."""
        return {"backbone": self.backbone, "head": self.head}

    def losses_and_detections(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)
        features = list(self.backbone(batch.tensors).values())
        outputs = self.head(features)
        anchors = self.anchor_generator(batch, features)
        locations = [feature.size(2) * feature.size(3) for feature in features]
        losses = self._losses(targets, outputs, anchors, locations)
        per_level = [count * (outputs["cls_logits"].size(1) // sum(locations)) for count in locations]
        split_outputs = {name: list(value.split(per_level, dim=1)) for name, value in outputs.items()}
        split_anchors = [list(image_anchors.split(per_level)) for image_anchors in anchors]
        detections = self.postprocess_detections(split_outputs, split_anchors, batch.image_sizes)
        return losses, self.transform.postprocess(detections, batch.image_sizes, original_sizes)


class RetinaNet(_LossesAndDetections, retinanet.RetinaNet):
    """torchvision's RetinaNet; ``num_classes`` excludes the unused output 0. Background anchors inside an
    ignore region (``heads.ignore_regions``) are left out of the classification loss, as anchors
    between the IoU thresholds are."""

    def __init__(self, backbone: FeaturePyramid, *, num_classes: int, **options) -> None:
        super().__init__(backbone, num_classes + 1, **options)
        self.transform = RegionAwareTransform.like(self.transform)
        self.num_classes = num_classes

    def _losses(self, targets, outputs, anchors, locations) -> dict[str, Tensor]:
        return self.compute_loss(targets, outputs, anchors)

    def compute_loss(
        self, targets: list[dict[str, Tensor]], head_outputs: dict[str, Tensor], anchors: list[Tensor]
    ) -> dict[str, Tensor]:
        matched_idxs = []
        for image_anchors, target in zip(anchors, targets, strict=True):
            if target["boxes"].numel():
                matched = self.proposal_matcher(box_iou(target["boxes"], image_anchors))
            else:
                matched = torch.full((len(image_anchors),), Matcher.BELOW_LOW_THRESHOLD, device=image_anchors.device)
            regions = ignore_regions(target)
            if regions is not None:
                ignored = (matched == Matcher.BELOW_LOW_THRESHOLD) & covered(image_anchors, regions)
                matched[ignored] = Matcher.BETWEEN_THRESHOLDS
            matched_idxs.append(matched)
        return self.head.compute_loss(targets, head_outputs, anchors, matched_idxs)


class RegionAwareFCOSHead(fcos.FCOSHead):
    """torchvision's FCOS head whose background locations inside an ignore region add nothing to the
    classification loss: their focal loss, computed as the head computed it, is taken back out."""

    def compute_loss(
        self,
        targets: list[dict[str, Tensor]],
        head_outputs: dict[str, Tensor],
        anchors: list[Tensor],
        matched_idxs: list[Tensor],
    ) -> dict[str, Tensor]:
        losses = super().compute_loss(targets, head_outputs, anchors, matched_idxs)
        ignored = [
            (matched < 0) & points_inside(image_anchors, regions)
            if (regions := ignore_regions(target)) is not None
            else torch.zeros_like(matched, dtype=torch.bool)
            for target, image_anchors, matched in zip(targets, anchors, matched_idxs, strict=True)
        ]
        ignored = torch.stack(ignored)
        if ignored.any():
            logits = head_outputs["cls_logits"][ignored]
            taken_back = sigmoid_focal_loss(logits, torch.zeros_like(logits), reduction="sum")
            foreground = sum(int((matched >= 0).sum()) for matched in matched_idxs)
            losses["classification"] = losses["classification"] - taken_back / max(1, foreground)
        return losses


class FCOS(_LossesAndDetections, fcos.FCOS):
    """torchvision's FCOS; ``num_classes`` excludes the unused output 0."""

    def __init__(self, backbone: FeaturePyramid, *, num_classes: int, **options) -> None:
        super().__init__(backbone, num_classes + 1, **options)
        self.transform = RegionAwareTransform.like(self.transform)
        self.num_classes = num_classes

    def _losses(self, targets, outputs, anchors, locations) -> dict[str, Tensor]:
        return self.compute_loss(targets, outputs, anchors, locations)


def _pyramid(
    backbone: Backbone, fpn_channels: int, fpn_levels: Sequence[str] | None, fpn_norm: str, extra: str = "p6p7"
) -> FeaturePyramid:
    if isinstance(backbone, FeaturePyramid):
        return backbone
    if extra not in ONE_STAGE_EXTRAS:
        raise ValueError(f"fpn_extra={extra!r} must be one of {ONE_STAGE_EXTRAS} (P6 and P7 from P5 or from C5)")
    levels = list(fpn_levels or ONE_STAGE_LEVELS)
    return FeaturePyramid(backbone, out_channels=fpn_channels, in_features=levels, extra_blocks=extra, norm=fpn_norm)


def _level_sizes(anchor_sizes: Sequence[int] | str, anchor_base: int | None, levels: int) -> list[int]:
    """One base size per pyramid level; ``auto``: ``anchor_base`` doubling per level."""
    if anchor_sizes == "auto":
        if not anchor_base:
            raise ValueError("anchor_sizes=auto needs anchor_base: the training command fits it to the training boxes")
        return [int(anchor_base) * 2**k for k in range(levels)]
    sizes = [int(size) for size in anchor_sizes]
    if len(sizes) != levels:
        raise ValueError(f"anchor_sizes has {len(sizes)} entries but the pyramid has {levels} levels: one per level")
    return sizes


def _transform_options(
    min_size: int | Sequence[int],
    max_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    resize_in_training: bool,
) -> dict:
    """The arguments torchvision's detectors pass on to their ``GeneralizedRCNNTransform``."""
    min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    return dict(
        min_size=min_sizes,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        _skip_resize=not resize_in_training,
    )


def _with_weights(model: _LossesAndDetections, weights: str, class_names: Sequence[str] | None, kind: str):
    if weights != "none":
        load_detector_weights(model, weights, class_names, kind=kind)
    return model


def build_retinanet(
    backbone: Backbone,
    *,
    num_classes: int,
    fpn_channels: int = 256,
    fpn_norm: str = "auto",
    fpn_levels: Sequence[str] | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    anchor_sizes: Sequence[int] | str = (32, 64, 128, 256, 512),
    anchor_base: int | None = None,
    scales_per_octave: int = 3,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: float = 0.4,
    head_norm: str = "none",
    fpn_extra: str = "p6p7",
    box_loss: str = "l1",
    topk_candidates: int = 1000,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 300,
    resize_in_training: bool = True,
    weights: str = "none",
    class_names: Sequence[str] | None = None,
) -> RetinaNet:
    """RetinaNet over a FPN ``fpn_channels`` wide on ``fpn_levels`` (default c3-c5) with P6/P7: each level
    has ``scales_per_octave`` anchor sizes (``size x 2^(k/n)``, torchvision's 32, 40, 50 on P3) times
    ``aspect_ratios``. ``head_norm``: ``gn`` puts GroupNorm in the classification and box heads (as
    torchvision's v2 head, which trains from scratch much faster); ``none`` is the original head.
    ``fpn_extra``: P6/P7 from P5 (``p6p7``) or from C5 (``p6p7_c5``, v2); ``box_loss``: ``l1`` (the
    original), ``giou`` (v2), ``smooth_l1``, ``diou`` or ``ciou``. With ``head_norm=gn``, ``fpn_extra=p6p7_c5``
    and ``box_loss=giou`` the model is torchvision's ``retinanet_resnet50_fpn_v2``.
    ``weights``: ``none``, ``coco`` (torchvision's ``RetinaNet_ResNet50_FPN_Weights``, or with ``p6p7_c5``
    its ``RetinaNet_ResNet50_FPN_V2_Weights``; classes remapped by name onto ``class_names``) or a file.
    The other arguments are Faster R-CNN's (:func:`heads.faster_rcnn.build_faster_rcnn`)."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must count at least one object category")
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss={box_loss!r} must be one of {BOX_LOSSES}")
    features = _pyramid(backbone, fpn_channels, fpn_levels, fpn_norm, fpn_extra)
    bases = _level_sizes(anchor_sizes, anchor_base, len(features.output_shape()))
    sizes = tuple(tuple(int(base * 2 ** (k / scales_per_octave)) for k in range(scales_per_octave)) for base in bases)
    anchors = FullPrecisionAnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    head = retinanet.RetinaNetHead(
        features.out_channels, anchors.num_anchors_per_location()[0], num_classes + 1, norm_layer=_head_norm(head_norm)
    )
    head.regression_head._loss_type = box_loss  # how torchvision's own v2 builder chooses it
    transform = _transform_options(min_size, max_size, image_mean, image_std, resize_in_training)
    model = RetinaNet(
        features,
        head=head,
        num_classes=num_classes,
        anchor_generator=anchors,
        fg_iou_thresh=fg_iou_thresh,
        bg_iou_thresh=bg_iou_thresh,
        topk_candidates=topk_candidates,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
        **transform,
    )
    return _with_weights(model, weights, class_names, "retinanet_v2" if fpn_extra == "p6p7_c5" else "retinanet")


def build_fcos(
    backbone: Backbone,
    *,
    num_classes: int,
    fpn_channels: int = 256,
    fpn_norm: str = "auto",
    fpn_levels: Sequence[str] | None = None,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    anchor_sizes: Sequence[int] | str = (8, 16, 32, 64, 128),
    anchor_base: int | None = None,
    center_sampling_radius: float = 1.5,
    head_norm: str = "gn",
    topk_candidates: int = 1000,
    box_score_thresh: float = 0.2,
    box_nms_thresh: float = 0.6,
    box_detections_per_img: int = 100,
    resize_in_training: bool = True,
    weights: str = "none",
    class_names: Sequence[str] | None = None,
) -> FCOS:
    """FCOS over the same pyramid as RetinaNet. Its one "anchor" per location is a square of the level's
    ``anchor_sizes`` entry (torchvision's: the strides 8-128), which sets the range of box sizes each
    level learns; ``center_sampling_radius`` (in strides) picks the locations that learn a box. ``head_norm``:
    GroupNorm in the head (``gn``, torchvision's) or none.
    ``weights``: ``none``, ``coco`` (torchvision's ``FCOS_ResNet50_FPN_Weights``) or a file."""
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must count at least one object category")
    features = _pyramid(backbone, fpn_channels, fpn_levels, fpn_norm)
    sizes = _level_sizes(anchor_sizes, anchor_base, len(features.output_shape()))
    anchors = FullPrecisionAnchorGenerator(tuple((size,) for size in sizes), ((1.0,),) * len(sizes))
    head = RegionAwareFCOSHead(features.out_channels, 1, num_classes + 1)  # torchvision's: GroupNorm, 32 groups
    norm_layer = _head_norm(head_norm) or nn.Identity
    if head_norm != "gn" or head_group_norm(features.out_channels).num_groups != 32:  # FCOSHead takes no norm
        width = features.out_channels
        head.classification_head = fcos.FCOSClassificationHead(width, 1, num_classes + 1, norm_layer=norm_layer)
        head.regression_head = fcos.FCOSRegressionHead(width, 1, norm_layer=norm_layer)
    transform = _transform_options(min_size, max_size, image_mean, image_std, resize_in_training)
    model = FCOS(
        features,
        head=head,
        num_classes=num_classes,
        anchor_generator=anchors,
        center_sampling_radius=center_sampling_radius,
        topk_candidates=topk_candidates,
        score_thresh=box_score_thresh,
        nms_thresh=box_nms_thresh,
        detections_per_img=box_detections_per_img,
        **transform,
    )
    return _with_weights(model, weights, class_names, "fcos")
