"""The validation pictures and the run's charts, for every task: the same validation images at every
validation, ground truth beside the changing predictions; curves and per-class bars at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.runner import train
from tests.support import (
    TINY_CLASSIFICATION,
    TINY_DETECTION,
    TINY_SEGMENTATION,
    compose_config,
    shapes_overrides,
    shapes_seg_overrides,
)

SIZE = 64  # pixels a picture's longer side
PICTURES = [f"callbacks.pictures.size={SIZE}", "callbacks.pictures.count=4", "callbacks.pictures.score_threshold=0"]
TWO_VALIDATIONS = ["trainer.max_steps=8", "trainer.max_epochs=-1"]  # 4 batches an epoch, a validation each


def _overrides(task: str, shapes_root: Path, shapes_voc_root: Path, tmp_path: Path) -> list[str]:
    detection = ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root)]
    return {
        "detection": detection,
        "instance_segmentation": ["task=instance_segmentation", *detection, "task.model.mask_layers=[16]"],
        "segmentation": [*TINY_SEGMENTATION, *shapes_seg_overrides(shapes_voc_root)],
        "classification": [*TINY_CLASSIFICATION, f"dataset.root={tmp_path / 'cls'}", "backbone=resnet18"],
    }[task]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "instance_segmentation", "segmentation", "classification"])
def test_each_validation_draws_the_same_images_with_new_predictions(
    task: str, shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    train(compose_config([*_overrides(task, shapes_root, shapes_voc_root, tmp_path), *PICTURES, *TWO_VALIDATIONS], run))
    first, second = sorted((run / "plots" / "val_predictions").glob("step_*.png"))
    assert (first.name, second.name) == ("step_0000004.png", "step_0000008.png")
    cell = (2 * SIZE + 4 + 4, SIZE + 4)  # ground truth | 4 px | prediction, in a 2 px margin
    pictures = [np.asarray(Image.open(path)) for path in (first, second)]
    assert pictures[0].shape == (2 * cell[1], 2 * cell[0], 3)  # 4 images in rows of 2
    for row in range(2):
        for column in range(2):
            top, left = row * cell[1] + 2, column * cell[0] + 2
            truth = [p[top : top + SIZE, left : left + SIZE] for p in pictures]
            np.testing.assert_array_equal(truth[0], truth[1])  # the same image and ground truth
    if task != "classification":  # (a caption may name the same class twice)
        right = [p[:, cell[0] // 2 + 2 : cell[0]] for p in pictures]
        assert not np.array_equal(right[0], right[1])  # what the model predicts has changed
    for name in ("curves.png", "curves.json", "per_class.png", "per_class.json"):
        assert (run / "plots" / name).is_file(), name
    detects = task in ("detection", "instance_segmentation")
    assert (run / "plots" / "confusion_matrix.png").is_file() is detects
