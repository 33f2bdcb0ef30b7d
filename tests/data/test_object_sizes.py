"""Object sizes as the detector sees them, the doctor's warnings, and anchors fitted to the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.common.metadata import build_model
from tasks.core.runner import build_datamodule, build_module
from tasks.data.detection_index import DetectionIndex
from tasks.data.doctor import WARNING
from tasks.data.object_sizes import fit_anchor_base, fit_min_size, input_sizes, size_findings
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


def test_an_automatic_input_size_keeps_the_images_resolution_up_to_the_cap() -> None:
    index = _index([(6000, 4000), (800, 600), (640, 480)], [[0, 0, 10, 10]] * 3)
    assert fit_min_size(index, max_size=640, resize_longest=None, tile_size=None) == 600  # the median shorter side
    assert fit_min_size(index, max_size=500, resize_longest=None, tile_size=None) == 500  # at most the cap
    # the data's shrink first (6000x4000 -> 1000x667, 800x600 and 640x480 unchanged): median of 667, 600, 480
    assert fit_min_size(index, max_size=2000, resize_longest=1000, tile_size=None) == 600
    assert fit_min_size(index, max_size=2000, resize_longest=None, tile_size=512) == 512  # tiles of 512 px


def test_an_automatic_input_size_travels_with_the_model(shapes_root: Path, tmp_path: Path) -> None:
    tiny = [o for o in TINY_DETECTION if not o.startswith(("task.model.min_size", "task.model.max_size"))]
    overrides = ["backbone=resnet18", *tiny, *shapes_overrides(shapes_root), "task.model.min_size=auto",
                 "task.model.max_size=48", "task.model.anchor_sizes=auto"]  # fmt: skip
    cfg = compose_config(overrides, tmp_path)
    module = build_module(cfg, build_datamodule(cfg))
    assert module.model.transform.min_size == (48,)  # the 64 px shapes, capped at 48
    assert module.inference["model"]["min_size"] == 48
    assert build_model(module.inference).transform.min_size == (48,)  # what predict rebuilds
    # the anchors are fitted to the boxes at that size: three quarters of their size at 64 px
    sizes = input_sizes(build_datamodule(cfg).training_index(), min_size=48, max_size=48, resize_longest=None)
    assert module.inference["model"]["anchor_base"] == round(float(np.quantile(sizes, 0.1)))


@pytest.mark.parametrize("dataset", ["yolo", "voc_folder", "coco_custom"])
def test_a_user_s_own_data_gets_the_from_scratch_recipe(dataset: str, tmp_path: Path) -> None:
    cfg = compose_config([f"dataset={dataset}", "dataset.root=/data/mine"], tmp_path)
    assert (cfg.task.model.min_size, cfg.task.model.anchor_sizes, cfg.task.model.fpn_norm) == ("auto", "auto", "bn")
    assert (cfg.task.module.optimizer.name, cfg.backbone.name) == ("adamw", "resnet18")
    assert compose_config([f"dataset={dataset}", "dataset.root=/d", "~recipe"], tmp_path).task.model.min_size == 800
