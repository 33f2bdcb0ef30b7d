"""Why a detector misses: a detection confusion matrix (classes plus background) and the kinds of its
false positives, in the spirit of the COCO analysis tool (Hoiem et al.'s error types).

Both look at the detections scoring at least ``score_threshold`` (what a user would keep) and match
them to ground truth at ``iou_threshold``; crowd regions are left out (a detection mostly inside one is
neither right nor wrong, as COCOeval ignores it). The precision-recall curves come from COCOeval's own
accumulated precision instead (``tasks.evaluation.coco_eval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_area, box_iou

# a false positive overlapping a box by at least this IoU is a poor box (same class) or a confusion
# (another class), not a detection on background; the COCO analysis tool's threshold
NEAR_IOU = 0.1
ERROR_KINDS = ("duplicate", "localisation", "confusion", "background")


@dataclass
class ImageBoxes:
    """One image's ground truth and detections (highest score first): boxes (xyxy) and class indices
    (0..K-1) of each, and their IoU (detections x ground truth), computed once for every count."""

    truth_boxes: torch.Tensor
    truth_labels: torch.Tensor
    found_boxes: torch.Tensor
    found_labels: torch.Tensor

    def __post_init__(self) -> None:
        self.iou = box_iou(self.found_boxes, self.truth_boxes)


def _xyxy(rows: Sequence[dict]) -> torch.Tensor:
    boxes = torch.tensor([row["bbox"] for row in rows], dtype=torch.float64).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def _in_crowd(detections: torch.Tensor, crowd: torch.Tensor, threshold: float) -> torch.Tensor:
    """Detections whose area lies at least ``threshold`` inside a crowd region (COCOeval's crowd IoU)."""
    if not len(crowd) or not len(detections):
        return torch.zeros(len(detections), dtype=torch.bool)
    top_left = torch.maximum(detections[:, None, :2], crowd[None, :, :2])
    bottom_right = torch.minimum(detections[:, None, 2:], crowd[None, :, 2:])
    inside = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return (inside / box_area(detections).clamp(min=1e-9)[:, None] >= threshold).any(dim=1)


def image_boxes(
    coco_gt: COCO,
    rows_by_image: dict[int, list[dict]],
    category_ids: Sequence[int],
    score_threshold: float,
    iou_threshold: float,
) -> list[ImageBoxes]:
    """Per image: its ground truth without crowd regions, and its detections over ``score_threshold``
    (highest score first) without those inside a crowd region."""
    index_of = {int(cid): k for k, cid in enumerate(category_ids)}
    images = []
    for image_id, rows in sorted(rows_by_image.items()):
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        annotations = [a for a in annotations if a["category_id"] in index_of]
        truth = [a for a in annotations if not a.get("iscrowd", 0)]
        crowd = _xyxy([a for a in annotations if a.get("iscrowd", 0)])
        kept = sorted((r for r in rows if r["score"] >= score_threshold), key=lambda r: -r["score"])
        boxes = _xyxy(kept)
        outside = ~_in_crowd(boxes, crowd, iou_threshold)
        kept = [row for row, keep in zip(kept, outside.tolist(), strict=True) if keep]
        images.append(
            ImageBoxes(
                _xyxy(truth),
                torch.tensor([index_of[a["category_id"]] for a in truth], dtype=torch.long),
                boxes[outside],
                torch.tensor([index_of[r["category_id"]] for r in kept], dtype=torch.long),
            )
        )
    return images


def greedy_match(image: ImageBoxes, iou_threshold: float, same_class: bool) -> list[int]:
    """For each detection (highest score first): the index of the ground-truth box it takes, or -1.

    A detection takes the free ground-truth box it overlaps most with IoU >= ``iou_threshold`` (of its
    own class where ``same_class``, COCOeval's rule; of any class otherwise, so class mix-ups show)."""
    if not len(image.truth_boxes):
        return [-1] * len(image.found_boxes)
    taken = torch.zeros(len(image.truth_boxes), dtype=torch.bool)
    matches = []
    for d in range(len(image.found_boxes)):
        candidates = image.iou[d].clone()
        candidates[taken] = -1
        if same_class:
            candidates[image.truth_labels != image.found_labels[d]] = -1
        best = int(candidates.argmax())
        if candidates[best] >= iou_threshold:
            taken[best] = True
            matches.append(best)
        else:
            matches.append(-1)
    return matches


def confusion_matrix(images: list[ImageBoxes], num_classes: int, iou_threshold: float) -> np.ndarray:
    """``matrix[true, predicted]`` over K classes plus background (index K): a matched pair counts in
    its two classes, a missed object in (its class, background), a detection on nothing in
    (background, its class)."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image in images:
        matches = greedy_match(image, iou_threshold, same_class=False)
        matched = set()
        for d, g in enumerate(matches):
            predicted = int(image.found_labels[d])
            if g < 0:
                matrix[num_classes, predicted] += 1
            else:
                matrix[int(image.truth_labels[g]), predicted] += 1
                matched.add(g)
        for g in range(len(image.truth_boxes)):
            if g not in matched:
                matrix[int(image.truth_labels[g]), num_classes] += 1
    return matrix


def false_positive_kinds(images: list[ImageBoxes], iou_threshold: float) -> dict[str, int]:
    """Counts of detections that are right (``true_positive``), of the four kinds of false positive, and
    of objects no detection of their class found (``missed``). A false positive (no free box of its
    class at ``iou_threshold``, COCOeval's rule) is, in this order: a ``duplicate`` (IoU >= the
    threshold with a box of its class already found), a ``localisation`` error (IoU >= 0.1 with a box
    of its class), a ``confusion`` (IoU >= 0.1 with a box of another class), else ``background``."""
    counts = dict.fromkeys(("true_positive", *ERROR_KINDS, "missed"), 0)
    for image in images:
        matches = greedy_match(image, iou_threshold, same_class=True)
        counts["true_positive"] += sum(g >= 0 for g in matches)
        counts["missed"] += len(image.truth_boxes) - sum(g >= 0 for g in matches)
        for d, g in enumerate(matches):
            if g >= 0:
                continue
            own = image.truth_labels == image.found_labels[d]
            own_best = float(image.iou[d][own].max()) if own.any() else 0.0
            other_best = float(image.iou[d][~own].max()) if (~own).any() else 0.0
            if own_best >= iou_threshold:
                counts["duplicate"] += 1
            elif own_best >= NEAR_IOU:
                counts["localisation"] += 1
            elif other_best >= NEAR_IOU:
                counts["confusion"] += 1
            else:
                counts["background"] += 1
    return counts


def error_analysis(
    coco_gt: COCO,
    rows_by_image: dict[int, list[dict]],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.25,
) -> tuple[dict[str, float], dict]:
    """The scalars (``fp_<kind>``: each kind's share of the false positives; ``false_positives``,
    ``missed``) and the confusion matrix content (``plots/confusion_matrix.json``)."""
    images = image_boxes(coco_gt, rows_by_image, category_ids, score_threshold, iou_threshold)
    counts = false_positive_kinds(images, iou_threshold)
    total = sum(counts[kind] for kind in ERROR_KINDS)
    scalars = {f"fp_{kind}": counts[kind] / total if total else 0.0 for kind in ERROR_KINDS}
    scalars.update(false_positives=float(total), missed=float(counts["missed"]))
    matrix = confusion_matrix(images, len(category_ids), iou_threshold)
    content = {
        "classes": [*class_names, "background"],
        "rows": "true class",
        "columns": "predicted class",
        "iou_threshold": iou_threshold,
        "score_threshold": score_threshold,
        "matrix": matrix.tolist(),
        "false_positive_kinds": counts,
    }
    return scalars, content
