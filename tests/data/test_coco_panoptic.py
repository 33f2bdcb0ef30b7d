"""COCO panoptic data: the PNG id encoding, the built-in shapes in that layout, the items the model trains
on (things' masks, the semantic map, moved together by augmentation), and the doctor's checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.data.augment import detection_transforms
from tasks.data.doctor import ERROR, WARNING, DatasetError
from tasks.data.formats import coco_panoptic as panoptic_format
from tasks.data.formats.coco_panoptic import (
    SEMANTIC_IGNORE,
    CocoPanoptic,
    id_to_rgb,
    inspect_panoptic,
    read_panoptic_json,
    read_segment_ids,
    rgb_to_id,
)
from tasks.data.formats.coco_panoptic_module import CocoPanopticDataModule
from tasks.data.shapes import SHAPE_CLASSES, STUFF_CLASSES, STUFF_SEGMENT_BASE, ensure_shapes, render_image
from tests.support import TINY_SHAPES


@pytest.fixture(scope="module")
def panoptic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_shapes(tmp_path_factory.mktemp("data") / "shapes_panoptic", TINY_SHAPES, layout="coco_panoptic")


def _split(root: Path, split: str = "val") -> tuple[Path, Path, Path]:
    return (
        root / f"{split}2017",
        root / f"annotations/panoptic_{split}2017.json",
        root / f"annotations/panoptic_{split}2017",
    )


def test_segment_ids_use_cocos_colour_encoding() -> None:
    rgb = np.array([[[1, 2, 3], [0, 0, 0], [255, 255, 255]]], np.uint8)
    assert rgb_to_id(rgb).tolist() == [[1 + 2 * 256 + 3 * 256**2, 0, 256**3 - 1]]
    ids = np.array([[0, 7, 70000, 256**3 - 1]])
    assert (rgb_to_id(id_to_rgb(ids)) == ids).all()


def test_shapes_png_segments_are_the_rendered_objects_and_regions(panoptic_root: Path) -> None:
    images, ann_file, pngs = _split(panoptic_root)
    dataset = json.loads(ann_file.read_text())
    categories = {c["id"]: c for c in dataset["categories"]}
    assert [categories[k]["name"] for k in sorted(categories)] == [*SHAPE_CLASSES, *STUFF_CLASSES]
    assert [categories[k]["isthing"] for k in sorted(categories)] == [1] * 4 + [0] * 3
    for annotation in dataset["annotations"]:
        image_id = annotation["image_id"]
        _, owner, classes, regions = render_image(
            np.random.default_rng([TINY_SHAPES.seed, image_id]), TINY_SHAPES, stuff=True
        )
        ids = read_segment_ids(pngs / annotation["file_name"])
        for segment in annotation["segments_info"]:
            pixels = ids == segment["id"]
            assert pixels.sum() == segment["area"]
            if categories[segment["category_id"]]["isthing"]:
                k = segment["id"] - 1
                assert (pixels == (owner == k)).all() and segment["category_id"] == classes[k] + 1
            else:
                region = segment["id"] - STUFF_SEGMENT_BASE
                assert segment["category_id"] == len(SHAPE_CLASSES) + region + 1
                assert (pixels <= ((regions == region) & (owner < 0))).all()
        # void only on the seams between stuff regions, never on an object
        assert (owner[ids == 0] < 0).all() and (ids == 0).sum() < ids.size * 0.05


def test_items_carry_things_and_the_semantic_map(panoptic_root: Path) -> None:
    images, ann_file, pngs = _split(panoptic_root)
    dataset = CocoPanoptic(images, ann_file, pngs)
    assert dataset.class_names == list(SHAPE_CLASSES)
    for i in range(len(dataset)):
        _, target = dataset[i]
        _, owner, classes, regions = render_image(
            np.random.default_rng([TINY_SHAPES.seed, target["image_id"]]), TINY_SHAPES, stuff=True
        )
        ids = read_segment_ids(pngs / f"{target['image_id']:012d}.png")
        assert target["labels"].tolist() == [c + 1 for c in classes]
        assert (target["masks"].numpy() == np.stack([owner == k for k in range(len(classes))])).all()
        semantic = target["sem_seg"].numpy()
        expected = np.where(owner >= 0, 0, regions + 1)  # semantic classes: 0 things, 1..3 stuff
        expected[ids == 0] = SEMANTIC_IGNORE
        assert (semantic == expected).all()
        ys, xs = np.nonzero(owner == 0)
        assert target["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_a_flip_moves_the_semantic_map_with_the_image(panoptic_root: Path) -> None:
    images, ann_file, pngs = _split(panoptic_root)
    plain = CocoPanoptic(images, ann_file, pngs)
    flipping = CocoPanoptic(images, ann_file, pngs, detection_transforms("hflip", train=True))
    flips = 0
    for seed in range(6):
        np.random.seed(seed)
        flipping.transforms.set_random_seed(seed)
        image, target = flipping[0]
        original, truth = plain[0]
        flipped = bool((image == original.flip(-1)).all()) and not bool((image == original).all())
        flips += flipped
        expected = truth["sem_seg"].flip(-1) if flipped else truth["sem_seg"]
        assert (target["sem_seg"] == expected).all()
        masks = truth["masks"].flip(-1) if flipped else truth["masks"]
        assert (target["masks"] == masks).all()
    assert 0 < flips < 6  # both cases seen


def _copy(root: Path, tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    shutil.copytree(root, tmp_path / "copy")
    images, ann_file, pngs = _split(tmp_path / "copy")
    return images, ann_file, pngs, json.loads(ann_file.read_text())


def test_the_doctor_names_each_fault(panoptic_root: Path, tmp_path: Path) -> None:
    images, ann_file, pngs, dataset = _copy(panoptic_root, tmp_path)
    first, second, third, fourth = dataset["annotations"][:4]
    first["segments_info"][0]["category_id"] = 99
    second["segments_info"].append(dict(second["segments_info"][0]))  # its id twice
    (pngs / third["file_name"]).unlink()
    ids = read_segment_ids(pngs / fourth["file_name"])
    ids[0, 0] = 4242
    Image.fromarray(id_to_rgb(ids)).save(pngs / fourth["file_name"])
    dataset["annotations"][4]["segments_info"].append({"id": 777, "category_id": 1, "iscrowd": 0})
    findings = inspect_panoptic(dataset, images, pngs, str(ann_file))
    errors = {f.check: f.message for f in findings if f.severity == ERROR}
    assert (
        "category_id 99" in errors["unknown category"] and f"image_id {first['image_id']}" in errors["unknown category"]
    )
    assert f"segment id {second['segments_info'][0]['id']}" in errors["duplicate segment id"]
    assert f"{pngs / third['file_name']} is missing" in errors["panoptic PNG"]
    assert "[4242]" in errors["unlisted segment"]
    warnings = {f.check: f.message for f in findings if f.severity == WARNING}
    assert "[777]" in warnings["empty segment"]
    ann_file.write_text(json.dumps(dataset))
    with pytest.raises(DatasetError, match="missing"):
        CocoPanoptic(images, ann_file, pngs)


def test_categories_without_isthing_and_pngs_of_another_size_are_refused(panoptic_root: Path, tmp_path: Path) -> None:
    images, ann_file, pngs, dataset = _copy(panoptic_root, tmp_path)
    png = pngs / dataset["annotations"][0]["file_name"]
    Image.fromarray(id_to_rgb(read_segment_ids(png)[:, :-3])).save(png)
    errors = [f.message for f in inspect_panoptic(dataset, images, pngs, str(ann_file)) if f.severity == ERROR]
    where = f"{ann_file}: image_id {dataset['annotations'][0]['image_id']} ({png.name})"
    assert errors == [f"{where}: {png} is 61x64 but its image is 64x64"]
    with pytest.raises(DatasetError, match="is 61x64 but its image is 64x64"):  # the start-up check decodes it
        CocoPanoptic(images, ann_file, pngs)
    with pytest.raises(ValueError, match="covers its image pixel for pixel"):  # and reading it, where unchecked
        CocoPanoptic(images, ann_file, pngs, check_files=False)[0]
    del dataset["categories"][5]["isthing"]
    ann_file.write_text(json.dumps(dataset))
    with pytest.raises(ValueError, match=r"categories \['ground'\] have no 'isthing' flag"):
        CocoPanoptic(images, ann_file, pngs)


def test_a_panoptic_json_that_is_not_one_is_named_with_the_fix(tmp_path: Path) -> None:
    broken = tmp_path / "panoptic_val2017.json"
    broken.write_text('{"images": [], "annotations": [')
    with pytest.raises(ValueError, match=r"panoptic_val2017.json is not valid JSON: .* line 1.*json.tool"):
        read_panoptic_json(broken)
    broken.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(ValueError, match="is not a COCO panoptic json: no 'categories' list"):
        read_panoptic_json(broken)


def test_start_up_decodes_the_pngs_and_stops_on_pixels_segments_info_does_not_list(
    panoptic_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Those pixels would silently become void: the start-up check decodes the PNGs (a sample of
    ``STARTUP_PNG_SAMPLE`` on large data; check_dataset.py decodes them all)."""
    images, ann_file, pngs, dataset = _copy(panoptic_root, tmp_path)
    last = dataset["annotations"][-1]
    ids = read_segment_ids(pngs / last["file_name"])
    ids[0, 0] = 4242
    Image.fromarray(id_to_rgb(ids)).save(pngs / last["file_name"])
    with pytest.raises(DatasetError, match=r"(?s)unlisted segment.*\[4242\]"):
        CocoPanoptic(images, ann_file, pngs)
    decoded = []
    monkeypatch.setattr(panoptic_format, "STARTUP_PNG_SAMPLE", 3)
    monkeypatch.setattr(panoptic_format, "read_segment_ids", lambda png: decoded.append(png) or read_segment_ids(png))
    CocoPanoptic(images, ann_file, pngs)  # the sample (first, middle, ... of the sorted list) misses it
    assert len(decoded) == 3 and pngs / last["file_name"] not in decoded


def test_train_and_val_must_declare_the_same_stuff(panoptic_root: Path, tmp_path: Path) -> None:
    shutil.copytree(panoptic_root, tmp_path / "copy")
    _, train_json, _ = _split(tmp_path / "copy", "train")
    dataset = json.loads(train_json.read_text())
    next(c for c in dataset["categories"] if c["name"] == "water")["name"] = "sea"
    train_json.write_text(json.dumps(dataset))
    datamodule = CocoPanopticDataModule(tmp_path / "copy", num_workers=0, batch_size=2)
    with pytest.raises(ValueError, match=r"stuff.*\['sky', 'ground', 'sea'\].*\['sky', 'ground', 'water'\]"):
        datamodule.setup()
    findings = {f.check: f.message for f in datamodule.inspect()[0] if f.severity == ERROR}
    assert "'sea'" in findings["categories"] and "'water'" in findings["categories"]
