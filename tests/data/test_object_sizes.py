"""Object sizes as the detector sees them, the doctor's warnings, and anchors fitted to the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.common.metadata import build_model
from tasks.core.runner import build_datamodule, build_module
from tasks.data.detection_index import DetectionIndex
from tasks.data.doctor import WARNING
from tasks.data.object_sizes import fit_anchor_base, input_sizes, size_findings
from tests.support import TINY_DETECTION, compose_config, shapes_overrides


def _index(sizes: list[tuple[int, int]], boxes: list[list[float]]) -> DetectionIndex:
    return DetectionIndex.build(
        range(1, len(sizes) + 1), [h for _, h in sizes], [w for w, _ in sizes], [f"{k}.jpg" for k in range(len(sizes))],
        [1] * len(sizes), np.asarray(boxes), np.ones(len(boxes)), np.zeros(len(boxes), bool),
    )  # fmt: skip


def test_a_large_photo_shrinks_small_objects_by_the_hand_computed_factor() -> None:
    index = _index([(6000, 4000), (800, 600)], [[100, 100, 120, 120], [10, 10, 30, 30]])
    sizes = input_sizes(index, min_size=800, max_size=1333, resize_longest=1333)
    # 6000x4000 -> 1333x888.7 (the data's shrink) -> x 800/888.7 (the detector's shorter side to 800)
    first = 20 * (1333 / 6000) * (800 / (4000 * 1333 / 6000))
    second = 20 * min(800 / 600, 1333 / 800)  # 800x600 is enlarged: shorter side to 800
    np.testing.assert_allclose(sizes, [first, second])
    assert first == pytest.approx(4.0)


def test_findings_warn_with_numbers_when_objects_are_under_the_anchors() -> None:
    small = np.array([3.0, 4.0, 5.0, 6.0, 20.0])
    warnings = {f.check: f.message for f in size_findings(small, [32, 64, 128, 256, 512]) if f.severity == WARNING}
    assert warnings["objects under the smallest anchor"].startswith("100% of the training objects are smaller than")
    assert warnings["objects of a few pixels"].startswith("80% of the training objects are under 8 px")
    assert not [f for f in size_findings(small * 10, [16, 32, 64, 128, 256]) if f.severity == WARNING]
    assert fit_anchor_base(np.arange(1.0, 101.0)) == 11  # the 10th percentile of 1..100 is 10.9


def test_auto_anchors_are_fitted_to_the_training_boxes_and_travel_with_the_model(
    shapes_root: Path, tmp_path: Path
) -> None:
    overrides = ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), "task.model.anchor_sizes=auto"]
    cfg = compose_config(overrides, tmp_path)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    sizes = input_sizes(datamodule.train_set.index, min_size=64, max_size=64, resize_longest=None)
    base = round(float(np.quantile(sizes, 0.1)))
    expected = tuple((base * 2**k,) for k in range(5))
    assert module.model.rpn.anchor_generator.sizes == expected
    assert module.inference["model"]["anchor_base"] == base
    assert build_model(module.inference).rpn.anchor_generator.sizes == expected  # what predict rebuilds
