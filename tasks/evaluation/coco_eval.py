"""COCO box and mask mAP with faster_coco_eval (the default: the same 12 stats, several times faster) or
pycocotools' COCOeval (the reference the tests compare with), computed once on rank 0 under DDP."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.data.formats.masks import encode_mask
from tasks.evaluation.error_analysis import error_analysis
from tasks.evaluation.evaluation import Evaluation
from tasks.evaluation.gather import from_rank_zero, gather_by_image_id

COCO_STAT_NAMES = (
    "map",
    "map_50",
    "map_75",
    "map_small",
    "map_medium",
    "map_large",
    "mar_1",
    "mar_10",
    "mar_100",
    "mar_small",
    "mar_medium",
    "mar_large",
)
BACKENDS = ("pycocotools", "faster_coco_eval")
IOU_TYPES = ("bbox", "segm")
MASK_PREFIX = "mask_"  # segm stats are reported as mask_map, mask_map_50, ...


@dataclass
class CocoResult:
    stats: dict[str, float]
    ap_per_class: dict[int, float] = field(default_factory=dict)  # category id -> AP@[.5:.95], if it has gt
    extra: dict = field(default_factory=dict)  # what an evaluator adds (e.g. VOC AP per class)
    # category id -> ap_50 and ap_small/medium/large (AP@[.5:.95] per area range), where it has gt there
    ap_detail: dict[int, dict[str, float]] = field(default_factory=dict)
    # COCOeval's interpolated precision at IoU 0.5 (all areas, the largest maxDets) at each of its recall
    # thresholds: {"recall": [...], "precision": {category id: [...]}} (-1 where the class has no gt)
    pr_50: dict = field(default_factory=dict)


def _quiet(*args: object, **kwargs: object) -> None:
    """Print function for faster_coco_eval: its progress lines are not wanted."""


def _run_cocoeval(coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None, backend: str, iou_type: str):
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FastCOCO
        from faster_coco_eval import COCOeval_faster

        fast_gt = FastCOCO(coco_gt.dataset, print_function=_quiet)
        evaluation = COCOeval_faster(fast_gt, fast_gt.loadRes(copy.deepcopy(results)), iou_type, print_function=_quiet)
    else:
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), iouType=iou_type)
    if image_ids is not None:
        evaluation.params.imgIds = sorted(image_ids)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return evaluation


def coco_evaluate(
    coco_gt: COCO,
    results: list[dict],
    image_ids: Sequence[int] | None = None,
    backend: str = "faster_coco_eval",
    iou_type: str = "bbox",
) -> CocoResult:
    """The 12 numbers of ``COCOeval.summarize()`` for ``results`` (COCO results format; ``iou_type``
    ``bbox`` scores their boxes, ``segm`` their RLE ``segmentation``), and AP per category.

    ``image_ids`` restricts evaluation to the images that were predicted on. pycocotools
    reports -1 for an area range without ground truth; that convention is kept. With no
    results at all (where pycocotools itself fails) every stat is 0, with a warning.
    """
    if backend not in BACKENDS:
        raise ValueError(f"COCO evaluation backend {backend!r} must be one of {BACKENDS}")
    if iou_type not in IOU_TYPES:
        raise ValueError(f"COCO evaluation iou_type {iou_type!r} must be one of {IOU_TYPES}")
    if not results:
        warnings.warn("no detections to evaluate: every COCO stat is reported as 0", stacklevel=2)
        return CocoResult(dict.fromkeys(COCO_STAT_NAMES, 0.0))
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = _run_cocoeval(coco_gt, results, image_ids, backend, iou_type)
    stats = {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluation.stats[:12], strict=True)}
    per_class, detail, pr_50 = _per_class(evaluation)
    absent = sorted(set(map(int, evaluation.params.catIds)) - set(per_class))
    if absent:
        warnings.warn(f"categories {absent} have no ground truth in the evaluated images: no AP for them", stacklevel=2)
    return CocoResult(stats, per_class, ap_detail=detail, pr_50=pr_50)


def _mean_valid(precision: np.ndarray) -> float | None:
    """COCOeval's mean over the entries it filled (-1: no ground truth there)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def _per_class(evaluation) -> tuple[dict[int, float], dict[int, dict[str, float]], dict]:
    """From COCOeval's accumulated precision (IoUs x recalls x classes x areas x maxDets): AP per class,
    its AP at IoU 0.5 and per area range, and the precision-recall curve at IoU 0.5."""
    precision = np.asarray(evaluation.eval["precision"])
    at_50 = int(np.argmin(np.abs(np.asarray(evaluation.params.iouThrs) - 0.5)))
    per_class, detail, curves = {}, {}, {}
    for k, category_id in enumerate(map(int, evaluation.params.catIds)):
        ap = _mean_valid(precision[:, :, k, 0, -1])
        if ap is None:
            continue
        per_class[category_id] = ap
        values = {"ap_50": _mean_valid(precision[at_50, :, k, 0, -1])}
        for a, area in enumerate(("small", "medium", "large"), start=1):
            values[f"ap_{area}"] = _mean_valid(precision[:, :, k, a, -1])
        detail[category_id] = {name: value for name, value in values.items() if value is not None}
        curves[category_id] = precision[at_50, :, k, 0, -1].tolist()
    return per_class, detail, {"recall": np.asarray(evaluation.params.recThrs).tolist(), "precision": curves}


def coco_stats(
    coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None, backend: str = "faster_coco_eval"
):
    """Only the 12 summary stats of :func:`coco_evaluate`."""
    return coco_evaluate(coco_gt, results, image_ids, backend).stats


def to_coco_results(detections: dict[str, torch.Tensor], image_id: int, category_ids: Sequence[int]) -> list[dict]:
    """One image's detections (xyxy boxes, labels 1..K) as COCO result rows (xywh, json category ids)."""
    boxes = detections["boxes"].detach().float().cpu()
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
    labels = detections["labels"].tolist()
    scores = detections["scores"].detach().float().cpu().tolist()
    return [
        {"image_id": int(image_id), "category_id": int(category_ids[label - 1]), "bbox": box, "score": score}
        for box, label, score in zip(xywh, labels, scores, strict=True)
    ]


def to_segmentation_results(
    detections: dict[str, torch.Tensor], image_id: int, category_ids: Sequence[int], threshold: float = 0.5
) -> list[dict]:
    """One image's mask probabilities (N x 1 x H x W), cut at ``threshold``, as COCO segm result rows (RLE)."""
    masks = (detections["masks"].detach().float().cpu()[:, 0] >= threshold).numpy()
    labels = detections["labels"].tolist()
    scores = detections["scores"].detach().float().cpu().tolist()
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_ids[label - 1]),
            "segmentation": encode_mask(m),
            "score": s,
        }
        for m, label, s in zip(masks, labels, scores, strict=True)
    ]


class CocoEvaluator:
    """Accumulates detections per image, then scores them once against the ground truth.

    Under DDP every process's detections are gathered on rank 0 (images that the distributed
    sampler repeated count once), rank 0 alone loads the ground truth (``ground_truth``: a
    COCO object or a function that builds one) and runs COCOeval, and every process receives
    its stats. ``last_predictions`` is filled on rank 0 only. ``iou_types`` with ``segm`` also
    scores the detections' ``masks`` (stats prefixed ``mask_``, rows in ``segmentations.json``).
    """

    def __init__(
        self,
        ground_truth: COCO | Callable[[], COCO],
        category_ids: Sequence[int],
        backend: str = "faster_coco_eval",
        class_names: Sequence[str] | None = None,
        iou_types: Sequence[str] = ("bbox",),
        analysis: Mapping[str, float] | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"COCO evaluation backend {backend!r} must be one of {BACKENDS}")
        if not set(iou_types) <= set(IOU_TYPES) or "bbox" not in iou_types:
            raise ValueError(f"task.evaluator.iou_types={list(iou_types)}: choose bbox, or bbox and segm")
        self.with_masks = "segm" in iou_types
        self._ground_truth = ground_truth
        self.category_ids = list(category_ids)
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in self.category_ids]
        self.backend = backend
        self.analysis = dict(analysis or {})  # error_analysis's iou_threshold and score_threshold
        self.last_analysis: tuple[dict[str, float], dict] = ({}, {})  # scalars, and plot contents
        self.last_result: CocoResult | None = None
        self.last_mask_result: CocoResult | None = None
        self.last_predictions: list[dict] = []  # gathered rows of the last compute, original ids (rank 0)
        self.last_segmentations: list[dict] = []  # the same for masks
        self._results: dict[int, dict[str, list[dict]]] = {}  # image id -> iou type -> result rows

    @cached_property
    def coco_gt(self) -> COCO:
        return self._ground_truth if isinstance(self._ground_truth, COCO) else self._ground_truth()

    def reset(self) -> None:
        self._results = {}

    def update(self, detections: Sequence[dict[str, torch.Tensor]], targets: Sequence[Mapping]) -> None:
        """One batch's detections (boxes in the original image's pixels) and their targets."""
        for image_detections, target in zip(detections, targets, strict=True):
            image_id = int(target["image_id"])
            rows = {"bbox": to_coco_results(image_detections, image_id, self.category_ids)}
            if self.with_masks:
                rows["segm"] = to_segmentation_results(image_detections, image_id, self.category_ids)
            self._results[image_id] = rows

    def _evaluate(self, per_image: dict[int, list[dict]], iou_type: str) -> tuple[CocoResult, list[dict]]:
        """COCOeval of the gathered rows of one kind, and those rows in image order."""
        rows = [row for _, image_rows in sorted(per_image.items()) for row in image_rows]
        result = coco_evaluate(self.coco_gt, rows, image_ids=list(per_image), backend=self.backend, iou_type=iou_type)
        return result, rows

    def _score(self, per_image: dict[int, list[dict]]) -> CocoResult:
        """Rank 0's work on the boxes (``VocEvaluator`` adds VOC AP here)."""
        result, self.last_predictions = self._evaluate(per_image, "bbox")
        return result

    def _score_all(self, per_image: dict[int, dict[str, list[dict]]]) -> tuple:
        """Rank 0's work: boxes (with their error analysis), and masks when asked for."""
        box_rows = {image_id: rows["bbox"] for image_id, rows in per_image.items()}
        boxes = self._score(box_rows)
        analysis = self._analyse(box_rows, boxes)
        if not self.with_masks:
            return boxes, None, analysis
        masks, self.last_segmentations = self._evaluate(
            {image_id: rows["segm"] for image_id, rows in per_image.items()}, "segm"
        )
        return boxes, masks, analysis

    def _analyse(self, box_rows: dict[int, list[dict]], result: CocoResult) -> tuple[dict[str, float], dict]:
        """The error analysis's scalars, and the confusion matrix and precision-recall curves to draw."""
        scalars, matrix = error_analysis(self.coco_gt, box_rows, self.category_ids, self.class_names, **self.analysis)
        names = dict(zip(self.category_ids, self.class_names, strict=True))
        curves = {
            "iou_threshold": 0.5,
            "recall": result.pr_50.get("recall", []),
            "precision": {names[cid]: values for cid, values in result.pr_50.get("precision", {}).items()},
            "ap_50": {names[cid]: detail["ap_50"] for cid, detail in result.ap_detail.items()},
        }
        return scalars, {"confusion_matrix": matrix, "pr_curves": curves}

    def compute(self) -> Evaluation:
        """The stats and per-class table on every process; ``predictions.json`` (COCO results, the
        dataset's own ids), and ``segmentations.json`` with masks, on rank 0."""
        per_image = gather_by_image_id(self._results)
        self.last_result, self.last_mask_result, self.last_analysis = from_rank_zero(
            self._score_all(per_image) if per_image is not None else None
        )
        scalars = dict(self.last_result.stats)
        if self.last_mask_result is not None:
            scalars.update({MASK_PREFIX + name: value for name, value in self.last_mask_result.stats.items()})
        scalars.update(self.last_analysis[0])
        files = {}
        if per_image is not None:
            files["predictions.json"] = self.last_predictions
            if self.with_masks:
                files["segmentations.json"] = self.last_segmentations
        return Evaluation(scalars, self.per_class_table(), files, analysis=self.last_analysis[1])

    def per_class_table(self) -> dict[str, dict[str, float]]:
        """Per-class AP of the last ``compute``, keyed by class name."""
        if self.last_result is None:
            return {}
        names = dict(zip(self.category_ids, self.class_names, strict=True))
        table = {
            names.get(cid, str(cid)): {"ap": ap, **self.last_result.ap_detail.get(cid, {})}
            for cid, ap in self.last_result.ap_per_class.items()
        }
        for cid, ap in (self.last_mask_result.ap_per_class if self.last_mask_result else {}).items():
            table.setdefault(names.get(cid, str(cid)), {})["mask_ap"] = ap
        return table
