"""Sliced inference: a detector run on overlapping tiles of a large image (and, optionally, on the
whole image brought to the detector's size, for the large objects), the detections mapped back to
the image's pixels and merged across tiles.

Merging, by name: ``nms`` keeps the best of boxes of one class overlapping by IoU over the
threshold; ``nmm`` (SAHI's greedy non-maximum merging) joins boxes of one class into their union:
boxes overlapping by IoU over the threshold, and a box cut by a tile's inner border with any box
whose intersection covers the threshold of the smaller one, so that an object found in pieces by
two tiles comes back as one box. Only cut boxes merge by that looser rule: a large box from the
whole image would otherwise swallow every small object of its class inside it.
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


def greedy_merge(
    boxes: Tensor, scores: Tensor, labels: Tensor, threshold: float, cut: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Non-maximum merging: from the best box down, every remaining box of its class joins it
    (union box, the best score) when their IoU reaches ``threshold``, or, where either is ``cut`` by
    a tile border, when their intersection covers ``threshold`` of the smaller one."""
    order = scores.argsort(descending=True)
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    cut = torch.zeros(len(boxes), dtype=torch.bool) if cut is None else cut[order]
    free = torch.ones(len(boxes), dtype=torch.bool)
    kept_boxes, kept = [], []
    areas = _areas(boxes)
    for i in range(len(boxes)):
        if not free[i]:
            continue
        candidates = torch.nonzero(free & (labels == labels[i])).flatten()
        inter = _intersections(boxes[i], boxes[candidates])
        iou = inter / (areas[i] + areas[candidates] - inter).clamp(min=1e-9)
        ios = inter / torch.minimum(areas[i], areas[candidates]).clamp(min=1e-9)
        joins = (iou >= threshold) | ((ios >= threshold) & (cut[i] | cut[candidates]))
        members = candidates[joins]
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
        boxes, scores, labels = greedy_merge(boxes, scores, labels, slicing.threshold, found.get("cut"))
    order = scores.argsort(descending=True)[:max_detections]
    return {"boxes": boxes[order], "scores": scores[order], "labels": labels[order]}


def cut_by_border(boxes: Tensor, window: Sequence[int], width: int, height: int, margin: float = 1.0) -> Tensor:
    """Which boxes (image pixels) reach an inner border of their tile ``window``: the object may go on
    in the next tile (a tile's side on the image's own border cuts nothing)."""
    x0, y0, x1, y1 = window
    return (
        ((boxes[:, 0] <= x0 + margin) & (x0 > 0))
        | ((boxes[:, 1] <= y0 + margin) & (y0 > 0))
        | ((boxes[:, 2] >= x1 - margin) & (x1 < width))
        | ((boxes[:, 3] >= y1 - margin) & (y1 < height))
    )


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
        for window, found in zip(chunk, predict(crops), strict=True):
            if "masks" in found:
                raise ValueError("sliced inference merges boxes only: instance masks need slicing.size=0")
            boxes = found["boxes"] + found["boxes"].new_tensor(window[:2] * 2)
            parts.append({**found, "boxes": boxes, "cut": cut_by_border(boxes, window, width, height)})
    if slicing.full_image and len(windows) > 1:
        whole = predict([image])[0]
        parts.append({**whole, "cut": torch.zeros(len(whole["boxes"]), dtype=torch.bool)})
    found = {key: torch.cat([part[key] for part in parts]) for key in ("boxes", "scores", "labels", "cut")}
    return merge_detections(found, slicing, max_detections)


def predict_images_sliced(
    predict: Callable[[list[Tensor]], list[dict[str, Tensor]]],
    images: Sequence[Tensor],
    slicing: Slicing,
    max_detections: int | None = None,
) -> list[dict[str, Tensor]]:
    return [predict_sliced(predict, image, slicing, max_detections) for image in images]
