"""The detection evaluator for a validation split: COCO stats, plus VOC AP where the data has VOC's
difficult flags."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pycocotools.coco import COCO

from tasks.data.formats.voc import VocGroundTruth
from tasks.evaluation.coco_eval import CocoEvaluator
from tasks.evaluation.voc_eval import VocEvaluator


def detection_evaluator(
    *,
    ground_truth: COCO | Callable[[], COCO],
    category_ids: Sequence[int],
    class_names: Sequence[str],
    voc_ground_truth: Mapping[int, VocGroundTruth] | None = None,
    backend: str = "faster_coco_eval",
    iou_types: Sequence[str] = ("bbox",),
    analysis: Mapping[str, float] | None = None,
) -> CocoEvaluator:
    """COCOeval against ``ground_truth`` (crowd regions included) for ``iou_types`` (``segm`` scores
    masks too), with the 11-point and area VOC AP when ``voc_ground_truth`` is given; ``analysis``: the
    thresholds of the error analysis (``tasks.evaluation.error_analysis``). The data module's
    ``evaluation_inputs()`` supplies every argument but those the task config chooses."""
    options = {"backend": backend, "class_names": class_names, "iou_types": iou_types, "analysis": analysis}
    if voc_ground_truth is not None:
        return VocEvaluator(ground_truth, category_ids, voc_ground_truth, **options)
    return CocoEvaluator(ground_truth, category_ids, **options)
