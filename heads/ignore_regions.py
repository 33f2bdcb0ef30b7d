"""Ignore regions in detection training: boxes (``target["ignore_boxes"]``, xyxy like ``boxes``) where
the detector learns neither an object nor background. An object that a training tile cuts below
``dataset.tile.min_visible`` is one: too little of it is in the tile to be a training box, but its
pixels are, and teaching them as background would teach the detector to miss such objects.

What would be a negative is left out of the sampling and the losses instead: RPN and RetinaNet anchors
and RoI-head proposals with at least ``IGNORE_SHARE`` of their area inside one region (mmdetection's
``ignore_iof_thr``), FCOS locations whose point lies inside one (FCOS assigns its positives by points).
A positive (matched to a training box) stays a positive.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import box_area

IGNORE_KEY = "ignore_boxes"
IGNORE_SHARE = 0.5


def ignore_regions(target: dict[str, Tensor]) -> Tensor | None:
    """The target's ignore regions, or None where it has none."""
    regions = target.get(IGNORE_KEY)
    return regions if regions is not None and len(regions) else None


def share_inside(boxes: Tensor, regions: Tensor) -> Tensor:
    """(N,) the largest share of each box's area that lies inside one of ``regions`` (COCOeval's crowd
    overlap: intersection over the box's own area)."""
    if not len(boxes) or not len(regions):
        return boxes.new_zeros(len(boxes))
    top_left = torch.maximum(boxes[:, None, :2], regions[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], regions[None, :, 2:])
    inside = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return (inside / box_area(boxes).clamp(min=1e-9)[:, None]).amax(dim=1)


def covered(boxes: Tensor, regions: Tensor) -> Tensor:
    """(N,) bool: at least ``IGNORE_SHARE`` of the box lies inside one region."""
    return share_inside(boxes, regions.to(boxes.dtype)) >= IGNORE_SHARE


def points_inside(boxes: Tensor, regions: Tensor) -> Tensor:
    """(N,) bool: the centre of each box lies inside one region."""
    centres = (boxes[:, None, :2] + boxes[:, None, 2:]) / 2
    regions = regions.to(boxes.dtype)[None]
    return ((centres >= regions[..., :2]) & (centres < regions[..., 2:])).all(dim=2).any(dim=1)


class RegionAwareTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform that also resizes ``ignore_boxes`` with the image."""

    @classmethod
    def like(cls, transform: GeneralizedRCNNTransform) -> RegionAwareTransform:
        """The same settings as ``transform`` (the one torchvision's one-stage detectors build themselves)."""
        return cls(
            transform.min_size, transform.max_size, transform.image_mean, transform.image_std,
            transform.size_divisible, transform.fixed_size, _skip_resize=transform._skip_resize,
        )  # fmt: skip

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        size = image.shape[-2:]
        image, target = super().resize(image, target)
        if target is not None and IGNORE_KEY in target:
            target[IGNORE_KEY] = resize_boxes(target[IGNORE_KEY], list(size), list(image.shape[-2:]))
        return image, target
