"""Albumentations pipelines for detection; boxes travel with the image (pascal_voc xyxy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import albumentations as A

DETECTION_PRESETS = ("none", "hflip", "scale_jitter", "multiscale", "lsj")
# Presets that choose the training image size themselves: the detector must not resize again.
RESIZING_PRESETS = ("multiscale", "lsj")


class ShortestEdgeResize(A.SmallestMaxSize):
    """Shorter side to a size drawn from ``sizes``, longer side capped at ``max_size``.

    The resize rule of torchvision's detection transform and detectron2's ResizeShortestEdge.
    """

    def __init__(self, sizes: Sequence[int], max_size: int, p: float = 1.0) -> None:
        super().__init__(max_size=max(sizes), p=p)
        self.sizes = list(sizes)
        self.cap = max_size

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        shortest = self.py_random.choice(self.sizes)
        return {"scale": min(shortest / min(height, width), self.cap / max(height, width))}


class ShrinkLongest(A.LongestMaxSize):
    """Longer side down to ``max_size`` when it is larger; smaller images keep their size.

    albumentations' ``LongestMaxSize`` also enlarges small images, which would decode a 640x480
    COCO image into 1333x1000 on the CPU only for the detector to shrink it again.
    """

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}


def detection_transforms(
    preset: str,
    *,
    train: bool,
    resize_longest: int | None = None,
    multiscale_sizes: Sequence[int] = (480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
    max_size: int = 1333,
    lsj_size: int = 1024,
    lsj_scale: Sequence[float] = (0.1, 2.0),
) -> A.Compose | None:
    """Build the pipeline for ``preset`` (None when there is nothing to do); evaluation only
    applies the optional resize.

    - ``hflip``: horizontal flip.
    - ``scale_jitter``: zoom the content by 0.75-1.25 on a fixed canvas, plus flip.
    - ``multiscale``: shorter side drawn from ``multiscale_sizes`` (longer side at most
      ``max_size``), plus flip.
    - ``lsj``: large-scale jitter: longer side to ``lsj_size`` times a factor in ``lsj_scale``,
      then pad and crop to ``lsj_size`` squared, plus flip.

    ``resize_longest`` bounds the longest side on the data side (cheaper decoding and
    collation of big images); it never enlarges an image. Boxes leaving the image are clipped; boxes that collapse
    below one pixel are dropped together with their labels and ``box_ids`` (which a caller
    passing ``masks`` uses to drop the same masks). Every step moves masks with the image.
    """
    if preset not in DETECTION_PRESETS:
        raise ValueError(f"augmentation preset {preset!r} is unknown; choose one of {DETECTION_PRESETS}")
    steps: list[A.BasicTransform] = []
    if resize_longest:
        steps.append(ShrinkLongest(max_size=resize_longest))
    if train and preset == "scale_jitter":
        steps.append(A.Affine(scale=(0.75, 1.25), keep_ratio=True, p=1.0, border_mode=0))
    if train and preset == "multiscale":
        steps.append(ShortestEdgeResize(multiscale_sizes, max_size))
    if train and preset == "lsj":
        low, high = lsj_scale
        steps += [
            A.LongestMaxSize(max_size=lsj_size),
            A.RandomScale(scale_limit=(low - 1, high - 1), p=1.0),
            A.PadIfNeeded(lsj_size, lsj_size, position="top_left", border_mode=0, fill=0),
            A.RandomCrop(lsj_size, lsj_size),
        ]
    if train and preset != "none":
        steps.append(A.HorizontalFlip(p=0.5))
    if not steps:
        return None
    bbox_params = A.BboxParams(
        format="pascal_voc", label_fields=["labels", "box_ids"], min_width=1.0, min_height=1.0, clip=True
    )
    return A.Compose(steps, bbox_params=bbox_params)
