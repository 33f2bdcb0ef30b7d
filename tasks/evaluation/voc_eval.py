"""PASCAL VOC detection AP: the VOC2007 11-point metric and the VOC2010+ area metric.

Follows the devkit: a detection is a true positive when its IoU with a not-yet-matched
ground-truth box of its class is at least 0.5 (boxes in inclusive pixel coordinates,
hence the +1 in widths); detections matched to a ``difficult`` box count neither way,
and difficult boxes are not part of the recall denominator.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO

from tasks.data.formats.voc import VocGroundTruth
from tasks.evaluation.coco_eval import CocoEvaluator, CocoResult


def average_precision(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool) -> float:
    """AP from a precision/recall curve (points in order of decreasing score)."""
    if use_07_metric:  # mean of the best precision at recall >= 0, 0.1, ..., 1
        return float(np.mean([precision[recall >= t].max(initial=0.0) for t in np.linspace(0, 1, 11)]))
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.nonzero(r[1:] != r[:-1])[0]
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


def _iou_inclusive(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]) + 1, 0, None)
    iy = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]) + 1, 0, None)
    inter = ix * iy
    area = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    areas = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    return inter / (area + areas - inter)


def class_pr_curve(
    detections: Sequence[tuple[int, float, np.ndarray]],
    ground_truth: Mapping[int, VocGroundTruth],
    label: int,
    iou_threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Recall and precision after each detection of class ``label``, and the number of positives."""
    gt = {
        image_id: (g.boxes[g.labels == label], g.difficult[g.labels == label]) for image_id, g in ground_truth.items()
    }
    positives = int(sum((~difficult).sum() for _, difficult in gt.values()))
    matched = {image_id: np.zeros(len(boxes), bool) for image_id, (boxes, _) in gt.items()}
    tp, fp = [], []
    for image_id, _score, box in sorted(detections, key=lambda d: -d[1]):
        boxes, difficult = gt.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool)))
        best = -1
        if len(boxes):
            overlaps = _iou_inclusive(np.asarray(box, float), boxes)
            best = int(overlaps.argmax()) if overlaps.max() >= iou_threshold else -1
        if best >= 0 and difficult[best]:
            continue  # ignored: neither true nor false positive
        hit = best >= 0 and not matched[image_id][best]
        if hit:
            matched[image_id][best] = True
        tp.append(hit)
        fp.append(not hit)
    tp_cum, fp_cum = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    recall = tp_cum / max(positives, 1)
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(float).eps)
    return recall, precision, positives


def voc_map(
    detections: Sequence[tuple[int, int, float, np.ndarray]],
    ground_truth: Mapping[int, VocGroundTruth],
    class_names: Sequence[str],
) -> dict[str, float | dict[str, float]]:
    """``detections`` rows are (image_id, class index, score, xyxy box).

    Returns the means (``voc07_map``: 11-point, ``voc_map``: area) over classes that have
    ground truth, and per-class APs. A class without ground truth is left out of the mean
    with a warning instead of producing NaN.
    """
    per_class07, per_class = {}, {}
    for label, name in enumerate(class_names):
        rows = [(image_id, score, box) for image_id, cls, score, box in detections if cls == label]
        recall, precision, positives = class_pr_curve(rows, ground_truth, label)
        if positives == 0:
            warnings.warn(f"class {name!r} has no (non-difficult) ground truth: left out of the VOC mean", stacklevel=2)
            continue
        per_class07[name] = average_precision(recall, precision, use_07_metric=True)
        per_class[name] = average_precision(recall, precision, use_07_metric=False)
    return {
        "voc07_map": float(np.mean(list(per_class07.values()))) if per_class07 else 0.0,
        "voc_map": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "voc07_ap_per_class": per_class07,
        "voc_ap_per_class": per_class,
    }


class VocEvaluator(CocoEvaluator):
    """COCO-style stats plus VOC07 11-point and VOC2010+ area mAP (difficult boxes ignored)."""

    def __init__(
        self,
        ground_truth: COCO | Callable[[], COCO],
        category_ids: Sequence[int],
        voc_ground_truth: Mapping[int, VocGroundTruth],
        class_names: Sequence[str],
        backend: str = "faster_coco_eval",
        iou_types: Sequence[str] = ("bbox",),
        analysis: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(ground_truth, category_ids, backend, class_names, iou_types, analysis)
        self.voc_ground_truth = voc_ground_truth

    def _score(self, per_image: dict[int, list[dict]]) -> CocoResult:
        result = super()._score(per_image)
        index_of = {cid: i for i, cid in enumerate(self.category_ids)}
        detections = [
            (row["image_id"], index_of[row["category_id"]], row["score"], _xywh_to_xyxy(row["bbox"]))
            for rows in per_image.values()
            for row in rows
        ]
        seen = {image_id: self.voc_ground_truth[image_id] for image_id in per_image}
        result.extra = voc_map(detections, seen, self.class_names)
        result.stats.update(voc07_map=result.extra["voc07_map"], voc_map=result.extra["voc_map"])
        return result

    def per_class_table(self) -> dict[str, dict[str, float]]:
        table = super().per_class_table()
        voc = self.last_result.extra if self.last_result is not None else {}
        for name in self.class_names:
            table.setdefault(name, {})["voc07_ap"] = voc.get("voc07_ap_per_class", {}).get(name, float("nan"))
            table[name]["voc_ap"] = voc.get("voc_ap_per_class", {}).get(name, float("nan"))
        return table


def _xywh_to_xyxy(box: Sequence[float]) -> np.ndarray:
    x, y, w, h = box
    # VOC AP counts pixels inclusively: a box covering pixels x1..x2 has width x2 - x1 + 1
    return np.array([x, y, x + w - 1, y + h - 1])
