"""VOC AP (11-point and area) against a hand-computed case with a duplicate and a difficult box."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.voc_eval import VocGroundTruth, voc_map

GROUND_TRUTH = {
    1: VocGroundTruth(np.array([[0, 0, 9, 9], [30, 30, 39, 39]]), np.array([0, 1]), np.array([False, False])),
    2: VocGroundTruth(np.array([[0, 0, 9, 9], [20, 20, 29, 29]]), np.array([0, 0]), np.array([False, True])),
}
DETECTIONS = [
    (1, 0, 0.9, np.array([0, 0, 9, 9])),  # TP
    (1, 0, 0.8, np.array([0, 0, 9, 9])),  # duplicate of a matched box: FP
    (2, 0, 0.7, np.array([20, 20, 29, 29])),  # on a difficult box: ignored
    (2, 0, 0.6, np.array([50, 50, 60, 60])),  # FP
    (2, 0, 0.5, np.array([0, 0, 9, 9])),  # TP
    (1, 1, 0.4, np.array([30, 30, 39, 44])),  # IoU 100/150 with inclusive pixels: TP
]


def test_hand_computed_case() -> None:
    # class 0: precision 1, 1/2, 1/3, 1/2 at recall 1/2, 1/2, 1/2, 1
    with pytest.warns(UserWarning, match="'c2' has no"):
        result = voc_map(DETECTIONS, GROUND_TRUTH, ["c0", "c1", "c2"])
    assert result["voc07_ap_per_class"] == pytest.approx({"c0": (6 * 1 + 5 * 0.5) / 11, "c1": 1.0})
    assert result["voc_ap_per_class"] == pytest.approx({"c0": 0.5 * 1 + 0.5 * 0.5, "c1": 1.0})
    assert result["voc07_map"] == pytest.approx(((6 + 2.5) / 11 + 1) / 2)
    assert result["voc_map"] == pytest.approx((0.75 + 1) / 2)


def test_no_detections_give_zero_not_nan() -> None:
    result = voc_map([], GROUND_TRUTH, ["c0", "c1"])
    assert result["voc07_map"] == 0.0 and result["voc_map"] == 0.0
