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
    monkeypatch.setattr("tasks.core.show.draw_item", lambda image, target, names, size: seen.append(image) or
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
