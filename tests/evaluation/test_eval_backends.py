"""faster_coco_eval (the default) gives pycocotools' 12 stats, per-class APs and curves on the same predictions;
empty input does not crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.data.formats.coco import load_coco
from tasks.evaluation.coco_eval import COCO_STAT_NAMES, coco_evaluate
from tests.support import random_ground_truth, random_predictions, write_coco_folder


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_backends_agree(tmp_path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, annotations = random_ground_truth(rng)
    coco_gt = load_coco(write_coco_folder(tmp_path, images, annotations))
    rows = random_predictions(rng, images, annotations)
    reference = coco_evaluate(coco_gt, rows, backend="pycocotools")
    fast = coco_evaluate(coco_gt, rows, backend="faster_coco_eval")
    assert reference.stats["map_50"] > 0.1
    for name in COCO_STAT_NAMES:
        assert fast.stats[name] == pytest.approx(reference.stats[name], abs=1e-9), name
    assert fast.ap_per_class == pytest.approx(reference.ap_per_class, abs=1e-9)
    # the default backend also gives the reference's per-class details and precision-recall curves
    assert fast.ap_detail.keys() == reference.ap_detail.keys()
    for category_id, detail in reference.ap_detail.items():
        assert fast.ap_detail[category_id] == pytest.approx(detail, abs=1e-9)
    assert fast.pr_50["recall"] == pytest.approx(reference.pr_50["recall"])
    for category_id, curve in reference.pr_50["precision"].items():
        assert fast.pr_50["precision"][category_id] == pytest.approx(curve, abs=1e-9)


def test_class_without_ground_truth_is_left_out_with_a_warning(tmp_path: Path) -> None:
    ann_file = write_coco_folder(
        tmp_path, [{"id": 1, "width": 64, "height": 64}], [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 20, 20]}]
    )
    rows = [
        {"image_id": 1, "category_id": 3, "bbox": [1, 1, 20, 20], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [30, 30, 10, 10], "score": 0.8},
    ]
    with pytest.warns(UserWarning, match="no ground truth"):
        result = coco_evaluate(load_coco(ann_file), rows)
    assert result.ap_per_class == {3: pytest.approx(1.0)}
    assert not any(np.isnan(v) for v in result.stats.values())


def test_unknown_backend_is_explained() -> None:
    with pytest.raises(ValueError, match="'detectron'"):
        coco_evaluate(None, [], backend="detectron")
