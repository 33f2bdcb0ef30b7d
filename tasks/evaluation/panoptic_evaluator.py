"""The panoptic evaluator: PQ, SQ, RQ of the validation split (``tasks.evaluation.panoptic``), each image
scored where it was predicted and the counts summed on rank 0."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from torch import Tensor

from tasks.data.formats.coco_panoptic import PanopticCategories, PanopticGroundTruth
from tasks.evaluation.evaluation import Evaluation
from tasks.evaluation.gather import from_rank_zero, gather_by_image_id
from tasks.evaluation.panoptic import PanopticCounts, Segment, image_counts, panoptic_quality, total_counts


class PanopticEvaluator:
    """Takes the model's ``panoptic`` map and ``segment_labels`` (labels 1..K things, K+1..K+S stuff) per
    image; ``compute`` returns ``pq``, ``sq``, ``rq`` and their ``_things`` and ``_stuff`` parts, and per
    class pq, sq, rq. Counts are additive, so every process scores its own images against the PNGs and
    only the counts travel (each image once: the distributed sampler's repeats are dropped by id)."""

    def __init__(self, *, ground_truth: Callable[[], PanopticGroundTruth], categories: PanopticCategories) -> None:
        self._load_truth, self._truth = ground_truth, None
        self.categories = categories
        self._counts: dict[int, PanopticCounts] = {}

    def reset(self) -> None:
        self._counts = {}

    def update(self, outputs: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping]) -> None:
        if self._truth is None:
            self._truth = self._load_truth()
        category_ids = self.categories.category_ids
        for output, target in zip(outputs, targets, strict=True):
            image_id = int(target["image_id"])
            truth = self._truth.image(image_id)
            if truth is None:  # not annotated: all void, nothing to count
                continue
            truth_ids, truth_segments = truth
            predicted = output["panoptic"].cpu().numpy()
            labels = output["segment_labels"].tolist()
            predicted_segments = {k + 1: Segment(category_ids[label - 1]) for k, label in enumerate(labels)}
            self._counts[image_id] = image_counts(
                truth_ids,
                {s: Segment(category_id, crowd) for s, (category_id, crowd) in truth_segments.items()},
                predicted.astype(np.int64),
                predicted_segments,
            )

    def compute(self) -> Evaluation:
        merged = gather_by_image_id(self._counts)
        evaluation = None
        if merged is not None:
            result = panoptic_quality(
                total_counts(list(merged.values())),
                self.categories.is_thing,
                dict(zip(self.categories.category_ids, self.categories.names, strict=True)),
            )
            per_class = result.pop("per_class")
            evaluation = Evaluation(scalars={**result, "images": float(len(merged))}, per_class=per_class)
        return from_rank_zero(evaluation)
