"""Why a detector misses: a detection confusion matrix (classes plus background) and the kinds of its
false positives, in the spirit of the COCO analysis tool (Hoiem et al.'s error types).

Both look at the detections scoring at least ``score_threshold`` (what a user would keep) and match them
to ground truth as COCOeval does at ``iou_threshold``: each detection, highest score first, takes the free
object of its class it overlaps most; one that takes none but lies inside a crowd region of its class
(intersection over its own area) is ignored, neither right nor wrong. One matching gives every figure:
the true positives are the matrix's diagonal, ``missed`` its rows' other cells, the false positives its
columns' other cells. The precision-recall curves come from COCOeval's own accumulated precision
(``tasks.evaluation.coco_eval``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from pycocotools.coco import COCO
from torchvision.ops import box_iou

from heads.ignore_regions import share_inside

# a false positive overlapping a box by at least this IoU is a poor box (same class) or a confusion
# (another class), not a detection on background; the COCO analysis tool's threshold
NEAR_IOU = 0.1
ERROR_KINDS = ("duplicate", "localisation", "confusion", "background")
UNMATCHED, IGNORED = -1, -2


@dataclass
class ImageBoxes:
    """One image's ground truth (crowd regions apart) and detections (highest score first): boxes (xyxy)
    and class indices (0..K-1), and the IoU of detections and objects, computed once for every count."""

    truth_boxes: torch.Tensor
    truth_labels: torch.Tensor
    found_boxes: torch.Tensor
    found_labels: torch.Tensor
    crowd_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.float64))
    crowd_labels: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __post_init__(self) -> None:
        self.iou = box_iou(self.found_boxes, self.truth_boxes)


def _xyxy(rows: Sequence[dict]) -> torch.Tensor:
    boxes = torch.tensor([row["bbox"] for row in rows], dtype=torch.float64).reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def image_boxes(
    coco_gt: COCO, rows_by_image: dict[int, list[dict]], category_ids: Sequence[int], score_threshold: float
) -> list[ImageBoxes]:
    """Per image: its objects, its crowd regions and its detections over ``score_threshold`` (highest
    score first)."""
    index_of = {int(cid): k for k, cid in enumerate(category_ids)}

    def labels(rows: Sequence[dict]) -> torch.Tensor:
        return torch.tensor([index_of[r["category_id"]] for r in rows], dtype=torch.long)

    images = []
    for image_id, rows in sorted(rows_by_image.items()):
        annotations = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        annotations = [a for a in annotations if a["category_id"] in index_of]
        truth = [a for a in annotations if not a.get("iscrowd", 0)]
        crowd = [a for a in annotations if a.get("iscrowd", 0)]
        kept = sorted((r for r in rows if r["score"] >= score_threshold), key=lambda r: -r["score"])
        images.append(ImageBoxes(_xyxy(truth), labels(truth), _xyxy(kept), labels(kept), _xyxy(crowd), labels(crowd)))
    return images


def match(image: ImageBoxes, iou_threshold: float) -> list[int]:
    """COCOeval's matching: for each detection (highest score first), the object of its class it takes
    (the free one it overlaps most, IoU >= ``iou_threshold``), ``IGNORED`` when it takes none but lies
    inside a crowd region of its class, else ``UNMATCHED``."""
    taken = torch.zeros(len(image.truth_boxes), dtype=torch.bool)
    matches = []
    for d in range(len(image.found_boxes)):
        candidates = image.iou[d].clone()
        candidates[taken | (image.truth_labels != image.found_labels[d])] = -1
        best = int(candidates.argmax()) if len(candidates) else -1
        if best >= 0 and candidates[best] >= iou_threshold:
            taken[best] = True
            matches.append(best)
        elif _in_crowd_of_its_class(image, d, iou_threshold):
            matches.append(IGNORED)
        else:
            matches.append(UNMATCHED)
    return matches


def _in_crowd_of_its_class(image: ImageBoxes, d: int, iou_threshold: float) -> bool:
    """COCOeval's overlap with a crowd region: the share of the detection's area inside it."""
    crowd = image.crowd_boxes[image.crowd_labels == image.found_labels[d]]
    return bool(len(crowd)) and float(share_inside(image.found_boxes[d : d + 1], crowd)[0]) >= iou_threshold


def confusion_matrix(images: list[ImageBoxes], num_classes: int, iou_threshold: float) -> np.ndarray:
    """``matrix[true, predicted]`` over K classes plus background (index K), from ``match``. Each object
    counts once in its row: on the diagonal when a detection of its class took it; else under the class
    of the highest-scored unmatched detection of another class overlapping it by ``iou_threshold`` (a
    confusion), or in the background column. Each unmatched detection not so paired counts in the
    background row; ignored ones (in a crowd) nowhere."""
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for image in images:
        matches = match(image, iou_threshold)
        found = {g for g in matches if g >= 0}
        for g in found:
            label = int(image.truth_labels[g])
            matrix[label, label] += 1
        paired = set()
        for g in range(len(image.truth_boxes)):
            if g in found:
                continue
            others = [d for d, m in enumerate(matches) if m == UNMATCHED and d not in paired]
            others = [d for d in others if image.found_labels[d] != image.truth_labels[g]]
            covering = [d for d in others if image.iou[d, g] >= iou_threshold]  # highest score first
            column = int(image.found_labels[covering[0]]) if covering else num_classes
            paired.update(covering[:1])
            matrix[int(image.truth_labels[g]), column] += 1
        for d, m in enumerate(matches):
            if m == UNMATCHED and d not in paired:
                matrix[num_classes, int(image.found_labels[d])] += 1
    return matrix


def false_positive_kinds(images: list[ImageBoxes], iou_threshold: float) -> dict[str, int]:
    """Counts of detections that are right (``true_positive``), of the four kinds of false positive, and
    of objects no detection of their class took (``missed``), from ``match``. A false positive (it took
    no object and is not in a crowd region of its class) is, in this order: a ``duplicate`` (IoU >= the
    threshold with an object of its class another detection took), a ``localisation`` error (IoU >= 0.1
    with an object of its class), a ``confusion`` (IoU >= 0.1 with an object of another class), else
    ``background``."""
    counts = dict.fromkeys(("true_positive", *ERROR_KINDS, "missed"), 0)
    for image in images:
        matches = match(image, iou_threshold)
        found = sum(g >= 0 for g in matches)
        counts["true_positive"] += found
        counts["missed"] += len(image.truth_boxes) - found
        for d, g in enumerate(matches):
            if g != UNMATCHED:
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
    images = image_boxes(coco_gt, rows_by_image, category_ids, score_threshold)
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
