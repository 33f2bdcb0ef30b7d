"""show_dataset: the ground truth drawn where it lies, on the pictures the loader delivers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.core.show import show_dataset
from tasks.data.images import read_rgb
from tasks.evaluation.drawing import class_colours, draw_item
from tests.support import compose_config, shapes_overrides


def test_boxes_are_drawn_where_they_lie_after_scaling() -> None:
    image = torch.zeros(3, 64, 32, dtype=torch.uint8)
    target = {"boxes": torch.tensor([[4.0, 8.0, 20.0, 40.0]]), "labels": torch.tensor([2])}
    picture = draw_item(image, target, ["a", "b"], size=128)  # twice the size: the box spans 8..40 x 16..80
    assert picture.shape == (128, 64, 3)
    colour = np.array(class_colours(3)[2])
    on_box = np.all(picture == colour, axis=2)
    ys, xs = np.nonzero(on_box)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (8, 40, 16, 80)


@pytest.mark.parametrize("augmented", [True, False])
def test_grid_of_the_split_as_delivered_or_as_on_disk(
    augmented: bool, shapes_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = []
    monkeypatch.setattr("tasks.core.show.draw_item", lambda image, target, names, size, *_: seen.append(image) or
                        np.zeros((size, size, 3), np.uint8))  # fmt: skip
    overrides = [*shapes_overrides(shapes_root), "count=5", "columns=3", "cell_size=100", f"augmented={augmented}",
                 "dataset.augment=lsj"]  # fmt: skip
    path = show_dataset(compose_config(overrides, tmp_path, "show_dataset"))
    assert path == tmp_path / "dataset_train.png" and Image.open(path).size == (300, 200)
    files = sorted((shapes_root / "train2017").iterdir())
    positions = np.linspace(0, len(files) - 1, 5).round().astype(int)
    on_disk = [torch.from_numpy(read_rgb(files[i])).permute(2, 0, 1) for i in positions]
    same = [torch.equal(a, b) for a, b in zip(seen, on_disk, strict=True)]
    assert same == [not augmented] * 5  # large-scale jitter changes every training picture


def test_panoptic_ground_truth_draws_stuff_in_its_colour_and_boxes_things(
    shapes_panoptic_root: Path, tmp_path: Path
) -> None:
    image = torch.full((3, 24, 24), 100, dtype=torch.uint8)
    semantic = torch.full((24, 24), 2)  # stuff class 2 of 2: label 3 + 2 = 5
    semantic[16:19, 8:15] = 255  # void: left clear
    masks = torch.zeros(1, 24, 24, dtype=torch.uint8)
    masks[0, 12:16, 1:5] = 1
    semantic[masks[0].bool()] = 0
    target = {
        "boxes": torch.tensor([[1.0, 12, 5, 16]]),
        "labels": torch.tensor([2]),
        "masks": masks,
        "sem_seg": semantic,
    }
    picture = draw_item(image, target, ["a", "b", "c"], stuff_names=["sky", "sea"])
    stuff = np.array([100] * 3) * 0.5 + np.array(class_colours(6)[5]) * 0.5
    assert (np.abs(picture[20, 10].astype(int) - stuff) <= 1).all()  # a stuff pixel, blended
    assert (picture[17, 10] == 100).all()  # void
    assert (picture[14, 1] == class_colours(6)[2]).all()  # the thing's box edge, in its class colour
    overrides = ["task=panoptic_segmentation", *shapes_overrides(shapes_panoptic_root), "count=3", "cell_size=100"]
    path = show_dataset(compose_config([*overrides, "columns=3"], tmp_path, "show_dataset"))
    assert Image.open(path).size == (300, 100)
