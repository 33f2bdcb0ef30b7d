"""Every image augmentation and data-side resize of the suite, and the one module that imports
albumentations (its MIT line, 2.0.x; ``docs/data.md`` lists the transforms used).

A pipeline is called with named numpy arrays and returns the same names: ``image`` (HxWx3 uint8),
``bboxes`` (pascal_voc xyxy) with their ``labels`` and ``box_ids``, ``masks`` (one per box) and ``mask``
(a class per pixel). Datasets hold pipelines, call them so, and seed them through ``seed_pipeline``;
nothing else of the library leaves this module, so that a move (e.g. to torchvision's v2 transforms)
rewrites this file only.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import numpy as np

Pipeline = A.Compose  # pipeline(image=..., bboxes=..., ...) -> {"image": ..., "bboxes": ..., ...}
Resize = Callable[[np.ndarray], np.ndarray]

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
) -> Pipeline | None:
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


def segmentation_transforms(
    *, train: bool, crop_size: int, scale_range: Sequence[float], color_jitter: bool, fill_mask: int
) -> Pipeline | None:
    """Training: random scale, pad (image 0, mask ``fill_mask``) and random crop to ``crop_size``, flip,
    colour jitter. Evaluation: none (the image is resized separately when ``eval_size`` is set)."""
    if not train:
        return None
    low, high = scale_range
    steps: list[A.BasicTransform] = [
        A.RandomScale(scale_limit=(low - 1, high - 1), p=1.0),
        A.PadIfNeeded(crop_size, crop_size, position="top_left", border_mode=0, fill=0, fill_mask=fill_mask),
        A.RandomCrop(crop_size, crop_size),
        A.HorizontalFlip(p=0.5),
    ]
    if color_jitter:
        steps.append(A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05, p=0.5))
    return A.Compose(steps)


def classification_transforms(
    *,
    train: bool,
    crop_size: int,
    val_resize: int,
    val_crop_size: int | None = None,
    scale_range: Sequence[float] = (0.08, 1.0),
    hflip: bool = True,
) -> Pipeline:
    """Training: random resized crop (scale ``scale_range`` of the area, aspect 3/4-4/3) and flip.
    Evaluation: shorter side to ``val_resize``, centre crop ``val_crop_size`` (None: ``crop_size``), as
    torchvision's references."""
    if not train:
        return _shorter_side_crop_pipeline(val_resize, val_crop_size or crop_size)
    steps: list[A.BasicTransform] = [A.RandomResizedCrop(size=(crop_size, crop_size), scale=tuple(scale_range))]
    if hflip:
        steps.append(A.HorizontalFlip(p=0.5))
    return A.Compose(steps)


def longest_side_resize(max_size: int | None, *, upscale: bool) -> Resize | None:
    """A function bringing an image's longer side to ``max_size`` (None: no resize); smaller images are
    enlarged only with ``upscale``."""
    if not max_size:
        return None
    transform = A.LongestMaxSize(max_size=max_size) if upscale else ShrinkLongest(max_size=max_size)
    return lambda image: transform(image=image)["image"]


def _shorter_side_crop_pipeline(shorter: int, crop: int | None) -> Pipeline:
    steps = [A.SmallestMaxSize(max_size=shorter)] + ([A.CenterCrop(crop, crop)] if crop else [])
    return A.Compose(steps)


def shorter_side_crop(shorter: int, crop: int | None) -> Resize:
    """Classification's evaluation sizing (``classification_transforms(train=False)``): the shorter side
    to ``shorter``, then the centre ``crop``."""
    transform = _shorter_side_crop_pipeline(shorter, crop)
    return lambda image: transform(image=image)["image"]


def seed_pipeline(pipeline: Pipeline, seed: int) -> None:
    """The pipeline's next draws from ``seed`` alone (the training loader seeds each sample)."""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))


def pipeline_seed(pipeline: Pipeline) -> int:
    """A seed drawn from the pipeline's generator, for randomness outside it (torch-side transforms)
    that must follow the sample's seed too."""
    return int(pipeline.random_generator.integers(2**62))
