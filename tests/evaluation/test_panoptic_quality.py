"""Panoptic quality against hand-counted images: matches at IoU > 0.5, void pixels out of the union,
crowd and void predictions ignored, misses and false positives, things and stuff averaged apart."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.evaluation.panoptic import PanopticCounts, Segment, image_counts, panoptic_quality, total_counts

THING, SKY = 1, 2
IS_THING = {THING: True, SKY: False}


def _row(*runs: tuple[int, int]) -> np.ndarray:
    """A 1-pixel-high map from (segment id, length) runs."""
    return np.concatenate([np.full(length, segment) for segment, length in runs])[None]


def _first_image() -> PanopticCounts:
    truth = _row((2, 10), (1, 4), (0, 2), (3, 4))  # sky, a thing, void, a crowd of things
    # sky short by one; the thing a pixel wider on each side (on sky, on void); on void; on crowd
    predicted = _row((7, 9), (8, 6), (9, 1), (10, 4))
    return image_counts(
        truth,
        {1: Segment(THING), 2: Segment(SKY), 3: Segment(THING, iscrowd=True)},
        predicted,
        {7: Segment(SKY), 8: Segment(THING), 9: Segment(THING), 10: Segment(THING)},
    )


def _second_image() -> PanopticCounts:
    truth = _row((1, 5), (2, 5))
    predicted = _row((4, 2), (5, 8))  # the thing found at IoU 2/5 only; sky at 5/8
    return image_counts(truth, {1: Segment(THING), 2: Segment(SKY)}, predicted, {4: Segment(THING), 5: Segment(SKY)})


def test_void_and_crowd_leave_the_union_and_the_false_positives() -> None:
    counts = _first_image().per_class
    # sky: 9 shared of 9 + 10 - 9 = 10; the thing: 4 shared of 6 + 4 - 4 - 1 = 5 (its pixel on sky counts,
    # its pixel on void does not)
    assert (counts[SKY].tp, counts[SKY].fp, counts[SKY].fn) == (1, 0, 0) and counts[SKY].iou == pytest.approx(0.9)
    assert (counts[THING].tp, counts[THING].fp, counts[THING].fn) == (1, 0, 0)
    assert counts[THING].iou == pytest.approx(0.8)  # the predictions on void and on the crowd are ignored
    result = panoptic_quality(_first_image(), IS_THING)
    assert (result["pq"], result["pq_things"], result["pq_stuff"]) == pytest.approx((0.85, 0.8, 0.9))


def test_misses_and_false_positives_weigh_half_each() -> None:
    second = _second_image().per_class
    assert (second[THING].tp, second[THING].fp, second[THING].fn) == (0, 1, 1)
    assert second[SKY].iou == pytest.approx(5 / 8)
    result = panoptic_quality(total_counts([_first_image(), _second_image()]), IS_THING, {THING: "car", SKY: "sky"})
    # sky: 2 matches, IoU 0.9 + 0.625; the thing: 1 match (0.8), 1 false positive, 1 miss
    assert result["per_class"]["sky"] == pytest.approx({"pq": 1.525 / 2, "sq": 1.525 / 2, "rq": 1.0})
    assert result["per_class"]["car"] == pytest.approx({"pq": 0.8 / 2, "sq": 0.8, "rq": 1 / 2})
    assert result["pq"] == pytest.approx((1.525 / 2 + 0.4) / 2)
    assert result["sq"] == pytest.approx((1.525 / 2 + 0.8) / 2) and result["rq"] == pytest.approx(0.75)
    assert (result["pq_things"], result["pq_stuff"]) == pytest.approx((0.4, 1.525 / 2))


def test_an_iou_of_exactly_one_half_is_no_match() -> None:
    truth, predicted = _row((1, 4)), _row((5, 2), (0, 2))  # 2 shared of 2 + 4 - 2 = 4
    counts = image_counts(truth, {1: Segment(THING)}, predicted, {5: Segment(THING)}).per_class[THING]
    assert (counts.tp, counts.fp, counts.fn) == (0, 1, 1)


def test_a_class_only_predicted_counts_with_pq_zero() -> None:
    truth, predicted = _row((1, 4)), _row((5, 4))
    counts = image_counts(truth, {1: Segment(THING)}, predicted, {5: Segment(SKY)})
    result = panoptic_quality(counts, IS_THING)
    assert result["pq"] == 0.0 and set(result["per_class"]) == {str(THING), str(SKY)}
