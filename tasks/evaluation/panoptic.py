"""Panoptic quality (Kirillov et al., "Panoptic Segmentation", CVPR 2019) as the COCO panoptic evaluation
computes it: PQ, SQ and RQ per class, overall and for things and stuff.

Per image, each ground-truth segment is matched to the predicted segment of its class that overlaps it
with IoU > 0.5 (unique at that threshold). Void pixels (segment id 0 in the ground truth) count in no
union: a prediction's IoU leaves out its pixels on void. Crowd segments are never matched nor missed; a
prediction that is mostly (over half) void or crowd of its own class is no false positive. Per class:
``PQ = sum(IoU of matches) / (TP + FP/2 + FN/2)``, ``SQ = sum(IoU) / TP``, ``RQ = TP / (TP + FP/2 + FN/2)``;
the overall figures average the classes that occur (TP + FP + FN > 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

VOID = 0
MATCH_IOU = 0.5


@dataclass
class ClassCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou: float = 0.0

    def add(self, other: ClassCounts) -> None:
        self.tp, self.fp, self.fn, self.iou = (
            self.tp + other.tp,
            self.fp + other.fp,
            self.fn + other.fn,
            self.iou + other.iou,
        )


@dataclass
class Segment:
    category_id: int
    iscrowd: bool = False


@dataclass
class PanopticCounts:
    per_class: dict[int, ClassCounts] = field(default_factory=dict)

    def count(self, category_id: int) -> ClassCounts:
        return self.per_class.setdefault(int(category_id), ClassCounts())

    def add(self, other: PanopticCounts) -> None:
        for category_id, counts in other.per_class.items():
            self.count(category_id).add(counts)


def image_counts(
    truth: np.ndarray,
    truth_segments: Mapping[int, Segment],
    predicted: np.ndarray,
    predicted_segments: Mapping[int, Segment],
) -> PanopticCounts:
    """One image's matches, false positives and misses: ``truth`` and ``predicted`` are segment-id maps
    of the same shape (0: void in the truth, unlabelled in the prediction), the segments their ids'."""
    if truth.shape != predicted.shape:
        raise ValueError(f"panoptic maps differ in shape: truth {truth.shape}, prediction {predicted.shape}")
    offset = int(max(predicted.max(initial=0), max(predicted_segments, default=0))) + 1
    pairs, overlaps = np.unique(truth.astype(np.int64) * offset + predicted.astype(np.int64), return_counts=True)
    overlap = {(int(p) // offset, int(p) % offset): int(n) for p, n in zip(pairs, overlaps, strict=True)}
    truth_area = _areas(truth)
    predicted_area = _areas(predicted)
    counts = PanopticCounts()
    matched_truth, matched_prediction = set(), set()
    for (truth_id, predicted_id), intersection in overlap.items():
        gt, pred = truth_segments.get(truth_id), predicted_segments.get(predicted_id)
        if gt is None or pred is None or gt.iscrowd or gt.category_id != pred.category_id:
            continue
        on_void = overlap.get((VOID, predicted_id), 0)
        union = predicted_area[predicted_id] + truth_area[truth_id] - intersection - on_void
        iou = intersection / union
        if iou > MATCH_IOU:
            counts.count(gt.category_id).tp += 1
            counts.count(gt.category_id).iou += iou
            matched_truth.add(truth_id)
            matched_prediction.add(predicted_id)
    crowd_of_class = {}
    for truth_id, gt in truth_segments.items():
        if truth_id in matched_truth or truth_area.get(truth_id, 0) == 0:
            continue
        if gt.iscrowd:
            crowd_of_class[gt.category_id] = truth_id
        else:
            counts.count(gt.category_id).fn += 1
    for predicted_id, pred in predicted_segments.items():
        area = predicted_area.get(predicted_id, 0)
        if predicted_id in matched_prediction or area == 0:
            continue
        ignored = overlap.get((VOID, predicted_id), 0)
        if pred.category_id in crowd_of_class:
            ignored += overlap.get((crowd_of_class[pred.category_id], predicted_id), 0)
        if ignored / area > MATCH_IOU:
            continue
        counts.count(pred.category_id).fp += 1
    return counts


def _areas(ids: np.ndarray) -> dict[int, int]:
    values, counts = np.unique(ids, return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts, strict=True)}


def panoptic_quality(
    counts: PanopticCounts, is_thing: Mapping[int, bool], class_names: Mapping[int, str] | None = None
) -> dict:
    """``pq``, ``sq``, ``rq`` over every class that occurs, ``*_things`` and ``*_stuff`` over each kind,
    and ``per_class`` (class name -> pq, sq, rq)."""
    per_class = {}
    for category_id, c in sorted(counts.per_class.items()):
        denominator = c.tp + 0.5 * c.fp + 0.5 * c.fn
        if denominator == 0:
            continue
        per_class[category_id] = {
            "pq": c.iou / denominator,
            "sq": c.iou / c.tp if c.tp else 0.0,
            "rq": c.tp / denominator,
        }
    result: dict = {}
    for suffix, keep in (
        ("", lambda k: True),
        ("_things", lambda k: is_thing[k]),
        ("_stuff", lambda k: not is_thing[k]),
    ):
        chosen = [values for k, values in per_class.items() if keep(k)]
        for metric in ("pq", "sq", "rq"):
            result[f"{metric}{suffix}"] = float(np.mean([v[metric] for v in chosen])) if chosen else 0.0
    names = class_names or {}
    result["per_class"] = {names.get(k, str(k)): values for k, values in per_class.items()}
    return result


def total_counts(per_image: Sequence[PanopticCounts]) -> PanopticCounts:
    total = PanopticCounts()
    for counts in per_image:
        total.add(counts)
    return total
