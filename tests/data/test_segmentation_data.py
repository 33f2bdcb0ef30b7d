"""Segmentation loaders on generated folders: VOC2012 layout (with SBD), COCO-built masks, start-up checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.builtin import ShapesSegDataModule
from tasks.data.collate import collate_segmentation
from tasks.data.formats.semantic import read_mask
from tasks.data.segmentation import CocoSegDataModule, VocSegDataModule
from tasks.data.shapes import SHAPE_CLASSES
from tests.support import TINY_SHAPES

NAMES = ["background", *SHAPE_CLASSES]


def _voc(root: Path, **options) -> VocSegDataModule:
    options = {
        "train_years": [2007, 2012],
        "val_years": [2007],
        "class_names": NAMES,
        "num_workers": 0,
        "crop_size": 64,
        **options,
    }
    module = VocSegDataModule(root, **options)
    module.setup()
    return module


def test_voc_layout_masks(shapes_voc_root: Path) -> None:
    module = _voc(shapes_voc_root)
    assert (len(module.train_set), len(module.val_set)) == (TINY_SHAPES.num_train, TINY_SHAPES.num_val)
    image, target = module.val_set[0]
    mask = target["mask"]
    assert mask.shape == image.shape[-2:]
    values = set(mask.unique().tolist())
    assert values <= {0, 1, 2, 3, 4, 255} and 255 in values and len(values - {0, 255}) >= 1


def test_sbd_list_is_used_without_validation_images(shapes_voc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit"
    shutil.copytree(shapes_voc_root, root)
    val_ids = (root / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    train_ids = (root / "VOC2012/ImageSets/Segmentation/train.txt").read_text().split()
    # an SBD-style list in VOC2012: its training images plus one that VOC2007 uses for validation
    shutil.copytree(root / "VOC2012/SegmentationClass", root / "VOC2012/SegmentationClassAug")
    shutil.copy(root / f"VOC2007/JPEGImages/{val_ids[0]}.jpg", root / "VOC2012/JPEGImages")
    shutil.copy(root / f"VOC2007/SegmentationClass/{val_ids[0]}.png", root / "VOC2012/SegmentationClassAug")
    (root / "VOC2012/ImageSets/Segmentation/train_aug.txt").write_text("\n".join([*train_ids, val_ids[0]]))
    module = _voc(root, train_years=[2012])
    stems = [r.image.stem for r in module.train_set.records]
    assert stems == train_ids and all(r.mask.parent.name == "SegmentationClassAug" for r in module.train_set.records)


def test_coco_built_masks_match_the_voc_masks_and_are_cached(
    shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    module = CocoSegDataModule(shapes_root, cache_dir=tmp_path / "cache", num_workers=0, crop_size=64)
    module.setup()
    assert module.class_names == NAMES
    voc = _voc(shapes_voc_root)
    for coco_record, voc_record in zip(module.val_set.records, voc.val_set.records, strict=True):
        coco_mask, voc_mask = read_mask(coco_record.mask), read_mask(voc_record.mask)
        keep = voc_mask != 255  # the VOC masks add a void border
        np.testing.assert_array_equal(coco_mask[keep], voc_mask[keep])
    first = module.val_set.records[0].mask
    stamp = first.stat().st_mtime_ns
    again = CocoSegDataModule(shapes_root, cache_dir=tmp_path / "cache", num_workers=0, crop_size=64)
    again.setup()
    assert first.stat().st_mtime_ns == stamp  # read from the cache, not rebuilt
    voc_subset = CocoSegDataModule(shapes_root, cache_dir=tmp_path / "cache", categories="voc", num_workers=0)
    voc_subset.setup()
    assert voc_subset.num_classes == 21 and voc_subset.class_names[15] == "person"
    # by COCO category id: 1 person -> 15, 2 bicycle -> 2, 3 car -> 7, 4 motorcycle -> 14 (the shapes use ids 1..4)
    lookup = np.array([0, 15, 2, 7, 14] + [0] * 250 + [255], np.uint8)
    for all_record, voc_record in zip(module.val_set.records, voc_subset.val_set.records, strict=True):
        np.testing.assert_array_equal(read_mask(voc_record.mask), lookup[read_mask(all_record.mask)])


def test_mask_problems_stop_at_start_up_with_file_names(shapes_voc_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "VOCdevkit"
    shutil.copytree(shapes_voc_root, root)
    val_ids = (root / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    bad_values, bad_size = (
        root / f"VOC2007/SegmentationClass/{val_ids[0]}.png",
        root / f"VOC2007/SegmentationClass/{val_ids[1]}.png",
    )
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(bad_values)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad_size)
    with pytest.raises(ValueError) as info:
        _voc(root)
    message = str(info.value)
    assert f"{bad_values} holds label values [9]" in message and f"{bad_size} is 12x10" in message


def test_training_crops_pad_masks_with_ignore(shapes_voc_root: Path) -> None:
    module = _voc(shapes_voc_root, crop_size=96, scale_range=(0.5, 0.5), color_jitter=False)
    transform = module.train_set.transforms  # the pipeline training uses
    out = transform(image=np.full((64, 64, 3), 200, np.uint8), mask=np.ones((64, 64), np.uint8))
    assert out["image"].shape == (96, 96, 3) and out["mask"].shape == (96, 96)
    mask = out["mask"]
    assert (mask == 1).sum() == 32 * 32 and (mask == 255).sum() == 96 * 96 - 32 * 32  # pad: 255, not a class
    assert (out["image"][mask == 255] == 0).all()


def test_collate_pads_images_and_keeps_sizes(shapes_voc_root: Path) -> None:
    module = _voc(shapes_voc_root)
    small = (module.val_set[0][0][:, :40, :50], {"mask": module.val_set[0][1]["mask"][:40, :50], "image_id": 1})
    images, targets = collate_segmentation([small, module.val_set[1]])
    assert images.shape == (2, 3, 64, 64) and [t["size"] for t in targets] == [(40, 50), (64, 64)]


def test_shapes_seg_module_generates_voc_layout(tmp_path: Path) -> None:
    spec = {"num_train": 4, "num_val": 2, "image_size": 48, "max_object_size": 24}
    module = ShapesSegDataModule(tmp_path / "shapes_voc", **spec, num_workers=0, crop_size=48)
    module.prepare_data()
    module.setup()
    assert module.class_names == NAMES and len(module.val_set) == 2


def test_coco_masks_built_in_parallel_equal_serial_ones(shapes_root: Path, tmp_path: Path) -> None:
    serial = CocoSegDataModule(shapes_root, cache_dir=tmp_path / "one", mask_workers=1, num_workers=0)
    parallel = CocoSegDataModule(shapes_root, cache_dir=tmp_path / "two", mask_workers=2, num_workers=0)
    serial.setup()
    parallel.setup()
    for a, b in zip(serial.train_set.records, parallel.train_set.records, strict=True):
        np.testing.assert_array_equal(read_mask(a.mask), read_mask(b.mask))
    assert not [p for p in (tmp_path / "two").iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_mask_checks_run_once_until_a_file_changes(
    shapes_voc_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tasks.data.formats.semantic as segmentation

    root = tmp_path / "VOCdevkit"
    shutil.copytree(shapes_voc_root, root)
    checked = []
    original = segmentation.check_records
    monkeypatch.setattr(segmentation, "check_records", lambda *a: checked.append(a[2]) or original(*a))
    _voc(root, cache_dir=tmp_path / "cache").prepare_data()
    assert len(checked) == 2  # train and val
    _voc(root, cache_dir=tmp_path / "cache").prepare_data()
    assert len(checked) == 2  # remembered
    val_ids = (root / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    Image.fromarray(np.full((64, 64), 9, np.uint8)).save(root / f"VOC2007/SegmentationClass/{val_ids[0]}.png")
    with pytest.raises(ValueError, match="holds label values"):
        _voc(root, cache_dir=tmp_path / "cache").prepare_data()
