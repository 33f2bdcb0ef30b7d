"""Sliced inference: a detector run on overlapping tiles of a large image (and, optionally, on the
whole image brought to the detector's size, for the large objects), the detections mapped back to
the image's pixels and merged across tiles.

Merging, by name: ``nms`` keeps the best of boxes of one class overlapping by IoU over the
threshold; ``nmm`` (SAHI's greedy non-maximum merging) joins boxes of one class whose
intersection covers the threshold of the smaller one into their union, so that an object cut by
a tile's border, found in halves by two tiles, comes back as one box.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from tasks.data.tiling import tile_windows

MERGES = ("nms", "nmm")


@dataclass(frozen=True)
class Slicing:
    size: int
    overlap: float = 0.2
    full_image: bool = True  # also the whole image, resized by the detector: large objects
    merge: str = "nmm"
    threshold: float = 0.5  # nms: IoU; nmm: intersection over the smaller box
    batch_size: int = 4  # tiles per model call

    def __post_init__(self) -> None:
        if self.merge not in MERGES:
            raise ValueError(f"slicing.merge={self.merge} must be one of {MERGES}")
        if self.size < 32 or not 0 <= self.overlap < 1:
            raise ValueError(f"slicing.size={self.size} must be at least 32 and slicing.overlap in [0, 1)")


def slicing_settings(size: int | None = None, **options) -> Slicing | None:
    """The settings, or None (no slicing) when ``size`` is null or 0."""
    return Slicing(int(size), **options) if size else None


def _intersections(box: Tensor, boxes: Tensor) -> Tensor:
    low, high = torch.maximum(box[:2], boxes[:, :2]), torch.minimum(box[2:], boxes[:, 2:])
    return (high - low).clamp(min=0).prod(dim=1)


def _areas(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def greedy_merge(boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor]:
    """Non-maximum merging: from the best box down, every remaining box of its class whose overlap
    covers ``threshold`` of the smaller of the two joins it (union box, the best score)."""
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    free = torch.ones(len(boxes), dtype=torch.bool)
    kept_boxes, kept = [], []
    areas = _areas(boxes)
    for i in range(len(boxes)):
        if not free[i]:
            continue
        candidates = torch.nonzero(free & (labels == labels[i])).flatten()
        overlap = _intersections(boxes[i], boxes[candidates]) / torch.minimum(areas[i], areas[candidates]).clamp(
            min=1e-9
        )
        members = candidates[overlap >= threshold]
        members = members if i in members.tolist() else torch.cat([members, torch.tensor([i])])
        free[members] = False
        group = boxes[members]
        kept_boxes.append(torch.cat([group[:, :2].min(dim=0).values, group[:, 2:].max(dim=0).values]))
        kept.append(i)
    index = torch.tensor(kept, dtype=torch.long)
    merged = torch.stack(kept_boxes) if kept_boxes else boxes.new_zeros((0, 4))
    return merged, scores[index], labels[index]


def merge_detections(found: dict[str, Tensor], slicing: Slicing, max_detections: int | None) -> dict[str, Tensor]:
    boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
    if slicing.merge == "nms":
        keep = batched_nms(boxes, scores, labels, slicing.threshold)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    else:
        boxes, scores, labels = greedy_merge(boxes, scores, labels, slicing.threshold)
    order = scores.argsort(descending=True)[:max_detections]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


def predict_sliced(
    predict: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    image: Tensor,
    slicing: Slicing,
    max_detections: int | None = None,
) -> dict[str, Tensor]:
    """Detections on ``image`` (C x H x W) in its own pixels: ``predict`` (images -> detections in
    those images' pixels) run on its tiles, plus the whole image where ``full_image``, merged."""
    height, width = image.shape[-2:]
    windows = tile_windows(width, height, slicing.size, slicing.overlap).tolist()
    parts: list[dict[str, Tensor]] = []
    for start in range(0, len(windows), slicing.batch_size):
        chunk = windows[start : start + slicing.batch_size]
        crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk]
        for (x0, y0, _, _), found in zip(chunk, predict(crops), strict=True):
            if "masks" in found:
                raise ValueError("sliced inference merges boxes only: instance masks need slicing.size=0")
            parts.append({**found, "boxes": found["boxes"] + found["boxes"].new_tensor([x0, y0, x0, y0])})
    if slicing.full_image and len(windows) > 1:
        parts += predict([image])
    found = {key: torch.cat([part[key] for part in parts]) for key in ("boxes", "scores", "labels")}
    return merge_detections(found, slicing, max_detections)


def predict_images_sliced(
    predict: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    images: Sequence[Tensor],
    slicing: Slicing,
    max_detections: int | None = None,
) -> list[dict[str, Tensor]]:
    return [predict_sliced(predict, image, slicing, max_detections) for image in images]
