"""Mask R-CNN: the Faster R-CNN of ``heads.faster_rcnn`` plus torchvision's mask branch.

With a ResNet50 body, 256-wide FPN and ``representation_size=1024`` the state dict is key for key
that of torchvision's ``maskrcnn_resnet50_fpn`` (91 classes with background: ``num_classes=90``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from backbones import Backbone
from heads.detector_weights import load_detector_weights
from heads.faster_rcnn import FasterRCNN, build_faster_rcnn


def build_mask_rcnn(
    backbone: Backbone,
    *,
    num_classes: int,
    mask_roi_output_size: int = 14,
    mask_layers: Sequence[int] = (256, 256, 256, 256),
    mask_dilation: int = 1,
    mask_predictor_channels: int = 256,
    roi_canonical_scale: int = 224,
    weights: str = "none",
    class_names: Sequence[str] | None = None,
    **detector: object,
) -> FasterRCNN:
    """``build_faster_rcnn(backbone, num_classes=..., **detector)`` with a mask branch on the same RoI
    heads: RoIAlign at ``mask_roi_output_size`` from the pyramid levels the boxes read, four 3x3 convs
    (``mask_layers`` wide), a 2x upsampling and one mask logit map per class (background included).
    Detections then carry ``masks`` (N x 1 x H x W probabilities in the input image).

    ``weights``: ``"none"``, ``"coco"`` (torchvision's ``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``) or a
    file; box and mask predictor rows are remapped by name onto ``class_names``, as for detection."""
    model = build_faster_rcnn(backbone, num_classes=num_classes, roi_canonical_scale=roi_canonical_scale, **detector)
    heads, levels = model.roi_heads, model.roi_heads.box_roi_pool.featmap_names
    channels = model.backbone.output_shape()[levels[0]].channels  # every pyramid level has this width
    heads.mask_roi_pool = MultiScaleRoIAlign(
        featmap_names=levels, output_size=mask_roi_output_size, sampling_ratio=2, canonical_scale=roi_canonical_scale
    )
    heads.mask_head = MaskRCNNHeads(channels, list(mask_layers), mask_dilation)
    heads.mask_predictor = MaskRCNNPredictor(mask_layers[-1], mask_predictor_channels, num_classes + 1)
    if weights != "none":
        load_detector_weights(model, weights, class_names, kind="mask_rcnn")
    return model
