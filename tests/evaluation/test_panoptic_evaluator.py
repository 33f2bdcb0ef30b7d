"""The panoptic evaluator: model labels mapped to the json's category ids (things, then stuff), each image
counted once, unannotated images left out; figures counted by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.data.formats.coco_panoptic import PanopticCategories
from tasks.evaluation.panoptic_evaluator import PanopticEvaluator

# things: id 7 "dot"; stuff: id 3 "sky", id 9 "sea" (ids in no order: labels follow thing/stuff then id)
CATEGORIES = PanopticCategories((7,), ("dot",), (3, 9), ("sky", "sea"))
TRUTH = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 3, 3], [3, 3, 3, 0]])  # dot, dot, sea (0: void)
SEGMENTS = {1: (7, False), 2: (7, False), 3: (9, False)}


class Truth:
    def image(self, image_id: int):
        return (TRUTH, SEGMENTS) if image_id == 1 else None


def test_labels_map_to_category_ids_and_each_image_counts_once() -> None:
    evaluator = PanopticEvaluator(ground_truth=Truth, categories=CATEGORIES)
    predicted = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [2, 2, 2, 2], [2, 2, 3, 3]], dtype=torch.int32)
    output = {"panoptic": predicted, "segment_labels": torch.tensor([1, 3, 2])}  # dot, sea (stuff 2), sky (stuff 1)
    evaluator.reset()
    evaluator.update([output, output], [{"image_id": 1}, {"image_id": 2}])
    evaluator.update([output], [{"image_id": 1}])  # the distributed sampler's repeat
    result = evaluator.compute()
    # dot: truth 1 matched (IoU 1), truth 2 missed -> PQ 1 / 1.5, SQ 1, RQ 2/3
    assert result.per_class["dot"] == pytest.approx({"pq": 2 / 3, "sq": 1.0, "rq": 2 / 3})
    # sea: its 6 predicted pixels inside the 7 true ones -> IoU 6/7, matched
    assert result.per_class["sea"] == pytest.approx({"pq": 6 / 7, "sq": 6 / 7, "rq": 1.0})
    # sky: 2 pixels, one on void: not over half void -> a false positive
    assert result.per_class["sky"] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert result.scalars["pq"] == pytest.approx((2 / 3 + 6 / 7) / 3)
    assert result.scalars["pq_things"] == pytest.approx(2 / 3)
    assert result.scalars["pq_stuff"] == pytest.approx(3 / 7)
    assert result.scalars["images"] == 1  # image 2 has no annotation; image 1 counted once
