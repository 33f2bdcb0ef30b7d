"""COCO box mAP with pycocotools' COCOeval, gathered across DDP ranks."""

from __future__ import annotations

import contextlib
import copy
import io
import warnings
from collections.abc import Sequence

import torch
import torch.distributed as dist
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

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


def coco_stats(coco_gt: COCO, results: list[dict], image_ids: Sequence[int] | None = None) -> dict[str, float]:
    """The 12 numbers of ``COCOeval.summarize()`` for bbox ``results`` (COCO results format).

    ``image_ids`` restricts evaluation to the images that were predicted on. pycocotools
    reports -1 for an area range without ground truth; that convention is kept.
    """
    if not results:
        warnings.warn("no detections to evaluate: every COCO stat is reported as 0", stacklevel=2)
        return dict.fromkeys(COCO_STAT_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        detections = coco_gt.loadRes(copy.deepcopy(results))  # loadRes edits the dicts it is given
        evaluation = COCOeval(coco_gt, detections, iouType="bbox")
        if image_ids is not None:
            evaluation.params.imgIds = sorted(image_ids)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {name: float(value) for name, value in zip(COCO_STAT_NAMES, evaluation.stats, strict=True)}


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


class CocoEvaluator:
    """Accumulates detections per image, then scores them once against ``coco_gt``.

    Under DDP every rank's detections are gathered; images that the distributed sampler
    repeated to even out the ranks are counted once.
    """

    def __init__(self, coco_gt: COCO, category_ids: Sequence[int]) -> None:
        self.coco_gt = coco_gt
        self.category_ids = list(category_ids)
        self._results: dict[int, list[dict]] = {}

    def reset(self) -> None:
        self._results = {}

    def update(self, detections: Sequence[dict[str, torch.Tensor]], image_ids: Sequence[int]) -> None:
        for image_detections, image_id in zip(detections, image_ids, strict=True):
            self._results[int(image_id)] = to_coco_results(image_detections, image_id, self.category_ids)

    def gathered_results(self) -> dict[int, list[dict]]:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return dict(self._results)
        shards: list[dict[int, list[dict]] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, self._results)
        merged: dict[int, list[dict]] = {}
        for shard in shards:
            for image_id, rows in shard.items():
                merged.setdefault(image_id, rows)
        return merged

    def compute(self) -> dict[str, float]:
        per_image = self.gathered_results()
        rows = [row for image_rows in per_image.values() for row in image_rows]
        return coco_stats(self.coco_gt, rows, image_ids=list(per_image))
