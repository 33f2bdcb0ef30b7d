"""The built-in shapes dataset is valid COCO, deterministic, and read by the COCO loader."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tasks.data.formats.coco import CocoDetection, load_coco
from tasks.data.shapes import SHAPE_CLASSES, ShapesSpec, ensure_shapes, render_image
from tests.support import TINY_SHAPES


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_shapes_is_valid_coco(shapes_root: Path, split: str) -> None:
    coco = load_coco(shapes_root / "annotations" / f"instances_{split}.json")
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    expected = TINY_SHAPES.num_train if split == "train2017" else TINY_SHAPES.num_val
    assert len(coco.imgs) == expected
    assert len({a["id"] for a in coco.anns.values()}) == len(coco.anns) > 0
    for ann in coco.anns.values():
        info = coco.imgs[ann["image_id"]]
        assert (shapes_root / split / info["file_name"]).is_file()
        x, y, w, h = ann["bbox"]
        assert w > 0 and h > 0
        assert x >= 0 and y >= 0 and x + w <= info["width"] and y + h <= info["height"]
        mask = mask_utils.decode(coco.annToRLE(ann))
        ys, xs = np.nonzero(mask)
        # the box is exactly the extent of the visible mask, the area its pixel count
        assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, w, h]
        assert mask.sum() == ann["area"]


def test_shapes_is_deterministic_by_seed(tmp_path: Path, shapes_root: Path) -> None:
    again = ensure_shapes(tmp_path / "again", TINY_SHAPES)
    assert _digest(again) == _digest(shapes_root)
    other = ensure_shapes(tmp_path / "other", ShapesSpec(**{**TINY_SHAPES.__dict__, "seed": 1}))
    assert _digest(other) != _digest(shapes_root)


def test_shapes_regenerates_on_spec_change_and_protects_foreign_folders(tmp_path: Path) -> None:
    root = ensure_shapes(tmp_path / "s", ShapesSpec(num_train=2, num_val=1, image_size=48, max_object_size=24))
    ensure_shapes(root, ShapesSpec(num_train=3, num_val=1, image_size=48, max_object_size=24))
    assert len(json.loads((root / "annotations/instances_train2017.json").read_text())["images"]) == 3
    foreign = tmp_path / "mine"
    foreign.mkdir()
    with pytest.raises(FileExistsError, match=str(foreign)):
        ensure_shapes(foreign, TINY_SHAPES)


def test_shapes_read_by_coco_loader(shapes_root: Path) -> None:
    dataset = CocoDetection(shapes_root / "val2017", shapes_root / "annotations/instances_val2017.json")
    image, target = dataset[0]
    coco = dataset.ground_truth()
    anns = coco.imgToAnns[target["image_id"]]
    assert image.shape == (3, TINY_SHAPES.image_size, TINY_SHAPES.image_size)
    assert sorted(target["labels"].tolist()) == sorted(a["category_id"] for a in anns)


def test_rotation_zero_draws_upright_shapes() -> None:
    """``rotation=0``: every square fills its box (axis-aligned); turned squares do not."""
    square = SHAPE_CLASSES.index("square")

    def box_fill(spec: ShapesSpec, image_id: int) -> float:
        _, owner, _ = render_image(np.random.default_rng([0, image_id]), spec, only_class=square)
        ys, xs = np.nonzero(owner == 0)
        return (owner == 0).sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))

    upright, turned = (ShapesSpec(image_size=64, min_object_size=20, max_objects=1, rotation=r) for r in (0, 360))
    assert min(box_fill(upright, i) for i in range(8)) == 1.0
    assert min(box_fill(turned, i) for i in range(8)) < 0.8
    with pytest.raises(ValueError, match="rotation"):
        ShapesSpec(rotation=400)
