"""Faster R-CNN assembled from torchvision's detection parts on any contract backbone.

``num_classes`` counts object categories only. The box predictor adds the background
class at index 0, so dataset label ``k`` (1-based, contiguous) is predictor row ``k``.
With a ResNet50 body, 256-wide FPN and ``representation_size=1024`` the state dict is
key for key that of torchvision's ``fasterrcnn_resnet50_fpn`` (which counts 91 classes
with background, i.e. ``num_classes=90`` here).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import AnchorGenerator, RegionProposalNetwork, RPNHead
from torchvision.ops import MultiScaleRoIAlign

from backbones import Backbone, FeaturePyramid
from backbones.base import IMAGENET_MEAN, IMAGENET_STD
from backbones.fpn import FPN_NORMS
from heads.detector_weights import load_detector_weights
from heads.ignore_regions import RegionAwareTransform, covered, ignore_regions

BOX_HEADS = ("auto", "mlp", "conv")


class FullPrecisionAnchorGenerator(AnchorGenerator):
    """torchvision's anchor generator, always in float32: it takes the dtype of the feature maps,
    which is bfloat16 or float16 under autocast (anchors near 1000 px off by up to 4 px)."""

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        # only the grid sizes, device and dtype of the maps are read: empty float32 stand-ins suffice
        shapes = [feature.new_empty((0, 0, *feature.shape[-2:]), dtype=torch.float32) for feature in feature_maps]
        return super().forward(image_list, shapes)


class FullPrecisionRPNHead(RPNHead):
    """torchvision's RPN head whose objectness and box-regression layers run in float32 whatever the
    autocast: proposals are decoded from them, and a bfloat16 coordinate near 1000 px is only
    exact to 4 px. The shared 3x3 conv stays in the autocast precision."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = [], []
        for feature in x:
            hidden = self.conv(feature)
            with torch.autocast(hidden.device.type, enabled=False):
                hidden = hidden.float()
                logits.append(self.cls_logits(hidden))
                deltas.append(self.bbox_pred(hidden))
        return logits, deltas


class FullPrecisionPredictor(FastRCNNPredictor):
    """torchvision's box predictor in float32 whatever the autocast, so detections are decoded at
    full precision."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):
            x = x.float().flatten(start_dim=1)
            return self.cls_score(x), self.bbox_pred(x)


class RegionProposals(RegionProposalNetwork):
    """torchvision's RPN whose negative anchors inside an ignore region (``heads.ignore_regions``) are
    neither sampled nor in the losses."""

    def assign_targets_to_anchors(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor]]:
        labels, matched_boxes = super().assign_targets_to_anchors(anchors, targets)
        for image_labels, image_anchors, target in zip(labels, anchors, targets, strict=True):
            regions = ignore_regions(target)
            if regions is not None:  # torchvision's labels: 1 object, 0 background, -1 discarded
                image_labels[(image_labels == 0) & covered(image_anchors, regions)] = -1.0
        return labels, matched_boxes


class BoxHeads(RoIHeads):
    """torchvision's RoI heads whose background proposals inside an ignore region are not sampled."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._regions: list[Tensor | None] = []  # the batch's ignore regions while its samples are chosen

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]] | None):
        self._regions = [ignore_regions(target) for target in targets or []]  # read by the assignment below
        try:
            return super().select_training_samples(proposals, targets)
        finally:
            self._regions = []

    def assign_targets_to_proposals(
        self, proposals: list[Tensor], gt_boxes: list[Tensor], gt_labels: list[Tensor]
    ) -> tuple[list[Tensor], list[Tensor]]:
        matched, labels = super().assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        for image_labels, image_proposals, regions in zip(labels, proposals, self._regions, strict=False):
            if regions is not None:  # the sampler takes labels >= 1 and == 0; -1 is neither
                image_labels[(image_labels == 0) & covered(image_proposals, regions)] = -1
        return matched, labels


def build_box_head(kind: str, norm: str, width: int, roi_size: int, representation_size: int) -> nn.Module:
    """``mlp``: torchvision's two fully connected layers; ``conv``: four 3x3 convs (normalised as the
    FPN is) and one fully connected layer, detectron2's head for GroupNorm models; ``auto``: conv
    when the FPN uses GroupNorm, else mlp."""
    if kind not in BOX_HEADS:
        raise ValueError(f"box_head={kind!r} must be one of {BOX_HEADS}")
    if kind == "mlp" or (kind == "auto" and norm != "gn"):
        return TwoMLPHead(width * roi_size**2, representation_size)
    norm_layer = FPN_NORMS[norm]
    return FastRCNNConvFCHead((width, roi_size, roi_size), [width] * 4, [representation_size], norm_layer=norm_layer)


class FasterRCNN(GeneralizedRCNN):
    """torchvision's two-stage detector; ``num_classes`` excludes background."""

    def __init__(
        self,
        backbone: Backbone,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        transform: RegionAwareTransform,
        *,
        num_classes: int,
    ) -> None:
        super().__init__(backbone, rpn, roi_heads, transform)
        self.num_classes = num_classes

    # -- heads.protocol.Detector ------------------------------------------------------------------------
    @property
    def detections_per_img(self) -> int:
        return self.roi_heads.detections_per_img

    @detections_per_img.setter
    def detections_per_img(self, cap: int) -> None:
        self.roi_heads.detections_per_img = int(cap)

    @property
    def predicts_masks(self) -> bool:
        return self.roi_heads.has_mask()

    def trunk(self) -> dict[str, nn.Module]:
        """The backbone with its pyramid and the RPN head's 3x3 convolution."""
        return {"backbone": self.backbone, "rpn.head.conv": self.rpn.head.conv}

    def losses_and_detections(
        self, images: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[dict[str, Tensor], list[dict[str, Tensor]]]:
        """Validation in one backbone pass: the training losses and the inference detections.

        The backbone runs in eval mode (running norm statistics); the RPN and box head
        run once as in training (proposal sampling, losses) and once as in inference.
        """
        original_sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch, targets = self.transform(images, targets)
        features = self.backbone(batch.tensors)
        with training_mode(self.rpn, self.roi_heads):
            proposals, rpn_losses = self.rpn(batch, features, targets)
            _, box_losses = self.roi_heads(features, proposals, batch.image_sizes, targets)
        proposals, _ = self.rpn(batch, features)
        detections, _ = self.roi_heads(features, proposals, batch.image_sizes)
        detections = self.transform.postprocess(detections, batch.image_sizes, original_sizes)
        return {**box_losses, **rpn_losses}, detections


@contextmanager
def training_mode(*modules: nn.Module) -> Iterator[None]:
    previous = [m.training for m in modules]
    for module in modules:
        module.train()
    try:
        yield
    finally:
        for module, mode in zip(modules, previous, strict=True):
            module.train(mode)


def build_faster_rcnn(
    backbone: Backbone,
    *,
    num_classes: int,
    fpn_channels: int = 256,
    fpn_norm: str = "auto",
    fpn_levels: Sequence[str] | None = None,
    fpn_extra: str = "maxpool",
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    anchor_sizes: Sequence[int | Sequence[int]] | str = (32, 64, 128, 256, 512),
    anchor_base: int | None = None,
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    rpn_pre_nms_top_n_train: int = 2000,
    rpn_pre_nms_top_n_test: int = 1000,
    rpn_post_nms_top_n_train: int = 2000,
    rpn_post_nms_top_n_test: int = 1000,
    rpn_nms_thresh: float = 0.7,
    rpn_fg_iou_thresh: float = 0.7,
    rpn_bg_iou_thresh: float = 0.3,
    rpn_batch_size_per_image: int = 256,
    rpn_positive_fraction: float = 0.5,
    roi_output_size: int = 7,
    roi_canonical_scale: int = 224,
    representation_size: int = 1024,
    box_head: str = "auto",
    box_fg_iou_thresh: float = 0.5,
    box_bg_iou_thresh: float = 0.5,
    box_batch_size_per_image: int = 512,
    box_positive_fraction: float = 0.25,
    box_score_thresh: float = 0.05,
    box_nms_thresh: float = 0.5,
    box_detections_per_img: int = 100,
    resize_in_training: bool = True,
    weights: str = "none",
    class_names: Sequence[str] | None = None,
) -> FasterRCNN:
    """Build Faster R-CNN; a backbone that is not a pyramid yet gets a FPN ``fpn_channels`` wide over
    the backbone outputs ``fpn_levels`` (default: all), with ``fpn_extra`` levels on top
    (``maxpool``: P6; ``p6p7``; ``none``) and ``fpn_norm`` after its convs (``auto``: GroupNorm
    when the backbone uses GroupNorm, else none). ``box_head`` picks the RoI head (see
    :func:`build_box_head`): with ``backbone.norm=gn`` the whole detector normalises with GroupNorm.

    ``anchor_sizes`` gives one entry per pyramid level (an int or a tuple of sizes in
    input pixels, after the transform's resize); every level shares ``aspect_ratios``.
    ``anchor_sizes="auto"``: ``anchor_base`` on the finest level, doubling on each level above
    (the training command fits ``anchor_base`` to the training boxes).
    ``roi_canonical_scale`` is the box size pooled from the 4th pyramid level (stride 16):
    a box half that size comes from the level below, twice that size from the one above.
    ``resize_in_training=False`` leaves training images at the size the data pipeline chose
    (multi-scale or large-scale-jitter augmentation); evaluation always resizes.
    ``weights``: ``"none"``, ``"coco"`` (torchvision's COCO_V1 Faster R-CNN R50-FPN) or a file;
    a COCO predictor is remapped by name onto ``class_names`` (this model's labels 1..K).
    RPN and box predictor outputs are float32 under mixed precision: boxes are decoded at full
    precision.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must count at least one object category")
    features = backbone if isinstance(backbone, FeaturePyramid) else FeaturePyramid(
        backbone, out_channels=fpn_channels, in_features=fpn_levels, extra_blocks=fpn_extra, norm=fpn_norm
    )  # fmt: skip
    width = _shared_width(features)
    rpn = region_proposal_network(
        features,
        width,
        anchor_sizes=anchor_sizes,
        anchor_base=anchor_base,
        aspect_ratios=aspect_ratios,
        pre_nms_top_n=dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
        post_nms_top_n=dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
        nms_thresh=rpn_nms_thresh,
        fg_iou_thresh=rpn_fg_iou_thresh,
        bg_iou_thresh=rpn_bg_iou_thresh,
        batch_size_per_image=rpn_batch_size_per_image,
        positive_fraction=rpn_positive_fraction,
    )
    roi_heads = BoxHeads(
        MultiScaleRoIAlign(features.levels, roi_output_size, sampling_ratio=2, canonical_scale=roi_canonical_scale),
        build_box_head(box_head, features.norm, width, roi_output_size, representation_size),
        FullPrecisionPredictor(representation_size, num_classes + 1),
        box_fg_iou_thresh,
        box_bg_iou_thresh,
        box_batch_size_per_image,
        box_positive_fraction,
        None,
        box_score_thresh,
        box_nms_thresh,
        box_detections_per_img,
    )
    min_sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    transform = RegionAwareTransform(
        min_sizes, max_size, list(image_mean), list(image_std), _skip_resize=not resize_in_training
    )
    model = FasterRCNN(features, rpn, roi_heads, transform, num_classes=num_classes)
    if weights != "none":
        load_detector_weights(model, weights, class_names)
    return model


def _shared_width(features: FeaturePyramid) -> int:
    """The one channel count of every pyramid level (the RPN head is shared across levels)."""
    shapes = features.output_shape()
    channels = {spec.channels for spec in shapes.values()}
    if len(channels) != 1:
        raise ValueError(f"the RPN head is shared across levels, so all levels need one width; got {shapes}")
    return channels.pop()


def region_proposal_network(
    features: FeaturePyramid,
    width: int,
    *,
    anchor_sizes: Sequence[int | Sequence[int]] | str,
    aspect_ratios: Sequence[float],
    pre_nms_top_n: dict[str, int],
    anchor_base: int | None = None,
    post_nms_top_n: dict[str, int],
    nms_thresh: float,
    fg_iou_thresh: float,
    bg_iou_thresh: float,
    batch_size_per_image: int,
    positive_fraction: float,
) -> RegionProposalNetwork:
    """torchvision's RPN over every pyramid level: one entry of ``anchor_sizes`` per level, every
    level with all ``aspect_ratios``; anchors and the head's outputs in float32."""
    levels = list(features.output_shape())
    if anchor_sizes == "auto":
        if not anchor_base:
            raise ValueError("anchor_sizes=auto needs anchor_base: the training command fits it to the training boxes")
        anchor_sizes = [int(anchor_base) * 2**k for k in range(len(levels))]
    sizes = tuple((s,) if isinstance(s, int) else tuple(s) for s in anchor_sizes)
    if len(sizes) != len(levels):
        raise ValueError(
            f"anchor_sizes has {len(sizes)} entries but the pyramid has {len(levels)} levels "
            f"({levels}): give one size per level"
        )
    anchors = FullPrecisionAnchorGenerator(sizes, (tuple(aspect_ratios),) * len(sizes))
    head = FullPrecisionRPNHead(width, anchors.num_anchors_per_location()[0])
    return RegionProposals(
        anchors,
        head,
        fg_iou_thresh,
        bg_iou_thresh,
        batch_size_per_image,
        positive_fraction,
        pre_nms_top_n,
        post_nms_top_n,
        nms_thresh,
    )
