"""The detection confusion matrix and false-positive kinds against a hand-computed image, and the
precision-recall curves against COCOeval's own AP."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tasks.evaluation.coco_eval import coco_evaluate
from tasks.evaluation.error_analysis import error_analysis
from tests.support import CATEGORY_IDS, random_ground_truth, random_predictions


def _coco(images: list[dict], annotations: list[dict], category_ids: list[int]) -> COCO:
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault("id", i)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"c{c}"} for c in category_ids],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


A, B = 3, 7  # category ids of the classes "a" and "b"


def _hand_case() -> tuple[COCO, dict[int, list[dict]]]:
    truth = [
        {"image_id": 1, "category_id": A, "bbox": [0, 0, 10, 10]},  # found (p0), then found again (p1)
        {"image_id": 1, "category_id": B, "bbox": [50, 50, 10, 10]},  # found as an "a" (p2)
        {"image_id": 1, "category_id": A, "bbox": [20, 20, 10, 10]},  # only a poor box (p3): missed
        {"image_id": 1, "category_id": A, "bbox": [80, 80, 20, 20], "iscrowd": 1},
    ]

    def row(category: int, box: list[float], score: float) -> dict:
        return {"image_id": 1, "category_id": category, "bbox": box, "score": score}

    rows = [
        row(A, [0, 0, 10, 10], 0.9),  # true positive
        row(A, [1, 0, 10, 10], 0.8),  # IoU 90/110 with the box p0 took: duplicate
        row(A, [50, 50, 10, 10], 0.7),  # on the "b": class confusion
        row(A, [25, 20, 10, 10], 0.6),  # IoU 50/150 with its own class's box: localisation
        row(B, [70, 0, 10, 10], 0.5),  # on nothing: background
        row(A, [85, 85, 10, 10], 0.4),  # inside the crowd region: not counted
        row(B, [50, 50, 10, 10], 0.1),  # under the score threshold: not counted
    ]
    return _coco([{"id": 1, "width": 100, "height": 100}], truth, [A, B]), {1: rows}


def test_confusion_matrix_and_false_positive_kinds_equal_the_hand_count() -> None:
    coco, rows = _hand_case()
    scalars, content = error_analysis(coco, rows, [A, B], ["a", "b"], iou_threshold=0.5, score_threshold=0.25)
    # rows: true a, b, background; columns: predicted a, b, background
    assert content["matrix"] == [[1, 0, 1], [1, 0, 0], [2, 1, 0]]
    assert content["classes"] == ["a", "b", "background"]
    kinds = content["false_positive_kinds"]
    assert kinds == {
        "true_positive": 1, "duplicate": 1, "localisation": 1, "confusion": 1, "background": 1, "missed": 2
    }  # fmt: skip
    assert scalars == {
        "fp_duplicate": 0.25, "fp_localisation": 0.25, "fp_confusion": 0.25, "fp_background": 0.25,
        "false_positives": 4.0, "missed": 2.0,
    }  # fmt: skip


def test_the_thresholds_change_what_counts() -> None:
    coco, rows = _hand_case()
    # at IoU 0.3 the poor box (IoU 1/3) takes the object it was near
    _, content = error_analysis(coco, rows, [A, B], ["a", "b"], iou_threshold=0.3, score_threshold=0.25)
    assert content["matrix"] == [[2, 0, 0], [1, 0, 0], [1, 1, 0]]
    # with every score kept, the low-scored "b" on the "b" object is found
    _, content = error_analysis(coco, rows, [A, B], ["a", "b"], iou_threshold=0.5, score_threshold=0.0)
    assert content["false_positive_kinds"]["true_positive"] == 2
    assert content["matrix"][1] == [0, 1, 0]  # found by its own class, as COCOeval matches
    assert content["matrix"][2] == [3, 1, 0]  # the "a" over it is a false positive (on background)


def test_the_precision_recall_curve_area_is_cocoevals_ap_50_of_that_class() -> None:
    rng = np.random.default_rng(3)
    images, annotations = random_ground_truth(rng)
    rows = random_predictions(rng, images, annotations)
    coco = _coco(images, annotations, CATEGORY_IDS)
    result = coco_evaluate(coco, rows)
    assert set(result.pr_50["precision"]) == set(CATEGORY_IDS)
    for category_id, precision in result.pr_50["precision"].items():
        with contextlib.redirect_stdout(io.StringIO()):
            alone = COCOeval(coco, coco.loadRes(rows), "bbox")
            alone.params.catIds = [category_id]
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        assert len(precision) == len(result.pr_50["recall"]) == 101
        assert float(np.mean(precision)) == pytest.approx(alone.stats[1], abs=1e-12)
        assert result.ap_detail[category_id]["ap_50"] == pytest.approx(alone.stats[1], abs=1e-12)
        for area, stat in (("small", 3), ("medium", 4), ("large", 5)):
            expected = alone.stats[stat]
            assert result.ap_detail[category_id].get(f"ap_{area}", -1.0) == pytest.approx(expected, abs=1e-12)


def _row(category: int, box: list[float], score: float) -> dict:
    return {"image_id": 1, "category_id": category, "bbox": box, "score": score}


def test_a_person_annotated_inside_a_crowd_region_is_found_by_a_perfect_detection() -> None:
    truth = [
        {"image_id": 1, "category_id": A, "bbox": [10, 10, 80, 80], "iscrowd": 1},
        {"image_id": 1, "category_id": A, "bbox": [30, 30, 20, 20]},
    ]
    coco = _coco([{"id": 1, "width": 100, "height": 100}], truth, [A, B])
    rows = {1: [_row(A, [30, 30, 20, 20], 0.9), _row(A, [60, 60, 20, 20], 0.8)]}  # the second: in the crowd only
    scalars, content = error_analysis(coco, rows, [A, B], ["a", "b"])
    kinds = content["false_positive_kinds"]
    assert kinds["true_positive"] == 1 and kinds["missed"] == 0 and scalars["false_positives"] == 0
    assert content["matrix"] == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_the_matrix_and_the_missed_and_false_positive_counts_are_one_matching() -> None:
    """A higher-scored wrong-class box over an object its own class also found: the object is a true
    positive (the diagonal), the wrong box a false positive; a lone wrong-class box over another object is
    that object's confusion; an object nothing covers is in the background column."""
    truth = [
        {"image_id": 1, "category_id": A, "bbox": [0, 0, 20, 20]},
        {"image_id": 1, "category_id": A, "bbox": [40, 40, 20, 20]},
        {"image_id": 1, "category_id": B, "bbox": [70, 0, 20, 20]},
    ]
    coco = _coco([{"id": 1, "width": 100, "height": 100}], truth, [A, B])
    rows = {1: [_row(B, [0, 0, 20, 20], 0.9), _row(A, [1, 0, 20, 20], 0.8), _row(B, [40, 40, 20, 20], 0.7)]}
    scalars, content = error_analysis(coco, rows, [A, B], ["a", "b"])
    matrix, kinds = np.array(content["matrix"]), content["false_positive_kinds"]
    assert matrix.tolist() == [[1, 1, 0], [0, 0, 1], [0, 1, 0]]
    assert kinds["true_positive"] == np.trace(matrix[:2, :2]) == 1
    assert kinds["missed"] == scalars["missed"] == matrix[:2].sum() - np.trace(matrix[:2, :2]) == 2
    assert scalars["false_positives"] == matrix[:, :2].sum() - np.trace(matrix[:2, :2]) == 2


def test_true_positives_missed_and_false_positives_equal_cocoevals_own_matching() -> None:
    """On random data with crowd regions and duplicates: COCOeval's evalImgs (IoU 0.5, all areas) give the
    reference counts for the detections over the score threshold."""
    rng = np.random.default_rng(5)
    images, annotations = random_ground_truth(rng)
    rows = random_predictions(rng, images, annotations)
    rows += [{**row, "bbox": list(np.array(row["bbox"]) + 1.0), "score": row["score"] * 0.9} for row in rows[::3]]
    others = {c: next(o for o in CATEGORY_IDS if o != c) for c in CATEGORY_IDS}
    rows += [  # the highest-scored box over some objects is of another class
        {"image_id": a["image_id"], "category_id": others[a["category_id"]], "bbox": a["bbox"], "score": 0.99}
        for a in annotations[1::3]
    ]
    for ann in annotations[::4]:  # some objects are crowd regions, a little larger than the object
        x, y, w, h = ann["bbox"]
        ann.update(iscrowd=1, bbox=[x - 2, y - 2, w + 4, h + 4])
    coco = _coco(images, annotations, CATEGORY_IDS)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = COCOeval(coco, coco.loadRes(rows), "bbox")
        reference.evaluate()
    threshold, expected = 0.3, {"true_positive": 0, "missed": 0, "false_positives": 0}
    for entry in reference.evalImgs:
        if entry is None or entry["aRng"] != reference.params.areaRng[0]:
            continue
        kept = np.asarray(entry["dtScores"]) >= threshold
        matched, ignored = entry["dtMatches"][0] > 0, entry["dtIgnore"][0].astype(bool)
        expected["true_positive"] += int((kept & matched & ~ignored).sum())
        expected["false_positives"] += int((kept & ~matched & ~ignored).sum())
        expected["missed"] += int((~entry["gtIgnore"].astype(bool)).sum()) - int((kept & matched & ~ignored).sum())
    by_image = {image["id"]: [r for r in rows if r["image_id"] == image["id"]] for image in images}
    scalars, content = error_analysis(coco, by_image, CATEGORY_IDS, ["x", "y", "z"], score_threshold=threshold)
    assert expected["true_positive"] > 5 and expected["false_positives"] > 5 and expected["missed"] > 3
    assert content["false_positive_kinds"]["true_positive"] == expected["true_positive"]
    assert scalars["missed"] == expected["missed"] and scalars["false_positives"] == expected["false_positives"]
