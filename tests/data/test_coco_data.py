"""COCO loader and data module: id mapping, crowd, empty images, augmentation, clear path errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tasks.data.augment import detection_transforms
from tasks.data.formats.coco import CocoDataModule, CocoDetection
from tests.support import write_coco_folder

IMAGES = [
    {"id": 10, "width": 80, "height": 60},
    {"id": 20, "width": 64, "height": 64},
    {"id": 30, "width": 200, "height": 50},
]
ANNOTATIONS = [
    {"image_id": 10, "category_id": 90, "bbox": [5, 5, 20, 10]},
    {"image_id": 10, "category_id": 3, "bbox": [70, 50, 30, 30]},  # leaves the image: clipped
    {"image_id": 10, "category_id": 7, "bbox": [0, 0, 80, 60], "iscrowd": 1},
    {"image_id": 10, "category_id": 7, "bbox": [10, 10, 0, 5]},  # degenerate: dropped
    {"image_id": 30, "category_id": 7, "bbox": [100, 10, 1.5, 30]},  # thin: collapses when shrunk
    # image 20 has no annotations
]


@pytest.fixture()
def coco_root(tmp_path: Path) -> Path:
    write_coco_folder(tmp_path, [dict(i) for i in IMAGES], [dict(a) for a in ANNOTATIONS], "val2017")
    write_coco_folder(tmp_path, [dict(i) for i in IMAGES], [dict(a) for a in ANNOTATIONS], "train2017")
    return tmp_path


def _dataset(root: Path, **transform) -> CocoDetection:
    transforms = detection_transforms(**transform) if transform else None
    return CocoDetection(root / "val2017", root / "annotations/instances_val2017.json", transforms)


def test_categories_map_to_contiguous_labels_and_back(coco_root: Path) -> None:
    dataset = _dataset(coco_root)
    assert dataset.category_ids == [3, 7, 90] and dataset.num_classes == 3
    image, target = dataset[0]
    assert target["image_id"] == 10 and image.shape == (3, 60, 80)
    assert target["labels"].tolist() == [3, 1]  # 90 -> 3, 3 -> 1; crowd and degenerate boxes are not trained on
    np.testing.assert_allclose(target["boxes"].numpy(), [[5, 5, 25, 15], [70, 50, 80, 60]])
    assert [dataset.category_ids[label - 1] for label in target["labels"]] == [90, 3]


def test_crowd_stays_in_evaluation_ground_truth(coco_root: Path) -> None:
    dataset = _dataset(coco_root)
    assert any(a["iscrowd"] for a in dataset.ground_truth().imgToAnns[10])


def test_images_without_annotations_are_kept(coco_root: Path) -> None:
    dataset = _dataset(coco_root)
    assert len(dataset) == 3
    _, target = dataset[1]
    assert target["image_id"] == 20 and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_hflip_moves_boxes_with_the_image(coco_root: Path) -> None:
    dataset = _dataset(coco_root, preset="hflip", train=True)
    seen = set()
    for _ in range(30):
        image, target = dataset[0]
        boxes = target["boxes"].numpy()
        flipped = not np.allclose(boxes[0], [5, 5, 25, 15])
        if flipped:
            np.testing.assert_allclose(boxes, [[55, 5, 75, 15], [0, 50, 10, 60]])
        seen.add(flipped)
    assert seen == {True, False}


def test_collapsed_boxes_are_dropped_with_their_labels(coco_root: Path) -> None:
    dataset = _dataset(coco_root, preset="none", train=False, resize_longest=50)
    image, target = dataset[2]
    assert image.shape == (3, 12, 50)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["orig_size"] == (50, 200)  # evaluation maps predictions back to the file's size


def test_wrong_root_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=f"dataset.root={missing} does not exist.*train2017/"):
        CocoDataModule(missing).setup()


def test_missing_annotation_file_names_the_path(coco_root: Path) -> None:
    (coco_root / "annotations/instances_train2017.json").unlink()
    with pytest.raises(FileNotFoundError, match="instances_train2017.json not found.*COCO format"):
        CocoDataModule(coco_root).setup()


def test_missing_image_folder_names_the_path(coco_root: Path) -> None:
    shutil.rmtree(coco_root / "val2017")
    with pytest.raises(FileNotFoundError, match=f"image folder {coco_root / 'val2017'} not found"):
        CocoDataModule(coco_root).setup()


def test_unknown_preset_is_explained() -> None:
    with pytest.raises(ValueError, match="'mosaic'.*hflip"):
        detection_transforms("mosaic", train=True)


def test_custom_json_and_folder_names_load_through_the_config(coco_root: Path, tmp_path: Path) -> None:
    from tasks.core.runner import build_datamodule
    from tests.support import compose_config

    (coco_root / "val2017").rename(coco_root / "pictures")
    (coco_root / "annotations/instances_val2017.json").rename(coco_root / "labels_val.json")
    overrides = [
        "dataset=coco_custom",
        f"dataset.train_images={coco_root / 'train2017'}",
        f"dataset.train_annotations={coco_root / 'annotations/instances_train2017.json'}",
        f"dataset.val_images={coco_root / 'pictures'}",
        f"dataset.val_annotations={coco_root / 'labels_val.json'}",
        "dataset.num_workers=0",
    ]
    datamodule = build_datamodule(compose_config(overrides, tmp_path))
    assert datamodule.class_names == ["class3", "class7", "class90"]  # read before any setup
    datamodule.setup()
    images, targets = next(iter(datamodule.val_dataloader()))
    assert [t["image_id"] for t in targets] == [10, 20]


def test_malformed_json_names_file_line_and_column(coco_root: Path) -> None:
    ann_file = coco_root / "annotations/instances_val2017.json"
    ann_file.write_text('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(ValueError, match=rf"{ann_file} is not valid JSON: .* line 2, column 12"):
        _dataset(coco_root)
