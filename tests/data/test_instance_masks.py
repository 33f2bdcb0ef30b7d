"""Instance masks: records from COCO's three encodings, masks moving with their boxes under every
augmentation preset, and mask (segm) evaluation equal on both backends."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tasks.data.augment import detection_transforms
from tasks.data.doctor import DatasetError
from tasks.data.formats.coco import CocoDataModule, CocoDetection, load_coco
from tasks.data.formats.masks import decode_segmentation, encode_mask
from tasks.evaluation.coco_eval import COCO_STAT_NAMES, coco_evaluate
from tests.support import CATEGORY_IDS, write_coco_folder

HEIGHT, WIDTH = 40, 50


def _rectangle(x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    mask[y1:y2, x1:x2] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's crowd encoding: run lengths (zeros first) of the column-major pixels, as a list."""
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], changes, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": [HEIGHT, WIDTH], "counts": counts if flat[0] == 0 else [0, *counts]}


# Object 1: two polygons (an L made of two rectangles); object 2: compressed RLE; object 3: a crowd
# region in uncompressed RLE.
TWO_PARTS = _rectangle(4, 4, 12, 20) | _rectangle(12, 14, 24, 20)
RLE_OBJECT = _rectangle(30, 6, 44, 30)
CROWD = _rectangle(2, 26, 20, 38)


def _annotations() -> list[dict]:
    polygons = [[4, 4, 12, 4, 12, 20, 4, 20], [12, 14, 24, 14, 24, 20, 12, 20]]
    compressed = encode_mask(RLE_OBJECT)
    return [
        {"image_id": 1, "category_id": 3, "bbox": [4, 4, 20, 16], "segmentation": polygons},
        {"image_id": 1, "category_id": 7, "bbox": [30, 6, 14, 24], "segmentation": compressed},
        {
            "image_id": 1,
            "category_id": 7,
            "bbox": [2, 26, 18, 12],
            "segmentation": _uncompressed_rle(CROWD),
            "iscrowd": 1,
        },
    ]


def _polygon_mask(polygons: list[list[float]]) -> np.ndarray:
    """pycocotools' own rasterisation of the polygons (its pixel-boundary convention)."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, HEIGHT, WIDTH)))


@pytest.mark.parametrize("cached", [False, True])
def test_records_from_all_three_encodings(tmp_path: Path, cached: bool) -> None:
    ann_file = write_coco_folder(tmp_path, [{"id": 1, "width": WIDTH, "height": HEIGHT}], _annotations())
    cache = tmp_path / "cache" if cached else None
    if cached:  # the second build reads the memory-mapped index the first one wrote
        CocoDetection(tmp_path / "val2017", ann_file, cache_dir=cache, masks=True)
    dataset = CocoDetection(tmp_path / "val2017", ann_file, cache_dir=cache, masks=True)
    record = dataset.records[0]
    polygons = _annotations()[0]["segmentation"]
    expected = [_polygon_mask(polygons), RLE_OBJECT]
    assert np.abs(_polygon_mask(polygons).astype(int) - TWO_PARTS).sum() <= 40  # boundary pixels only
    decoded = [decode_segmentation(s, HEIGHT, WIDTH) for s in record.segmentations]
    for got, want in zip(decoded, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    (crowd,) = record.ignored_segmentations
    np.testing.assert_array_equal(decode_segmentation(crowd, HEIGHT, WIDTH), CROWD)
    image, target = dataset[0]
    assert target["masks"].shape == (2, HEIGHT, WIDTH) and target["masks"].dtype.is_floating_point is False
    np.testing.assert_array_equal(target["masks"].numpy(), np.stack(expected))
    assert target["labels"].tolist() == [1, 2]  # the crowd region is not trained on
    subset = dataset.index.select([0])  # the start-up check's subset keeps the masks
    assert [s == t for s, t in zip(subset.record(0, tmp_path).segmentations, record.segmentations, strict=True)]


def test_object_without_a_mask_is_named(tmp_path: Path) -> None:
    annotations = _annotations()
    del annotations[1]["segmentation"]
    annotations[0]["segmentation"] = [[1, 2, 3]]
    ann_file = write_coco_folder(tmp_path, [{"id": 1, "width": WIDTH, "height": HEIGHT}], annotations)
    with pytest.raises(DatasetError, match=r"(?s)\[error\] segmentation: 2.*id 1 has a polygon.*id 2 has no"):
        CocoDetection(tmp_path / "val2017", ann_file, masks=True)
    CocoDetection(tmp_path / "val2017", ann_file)  # boxes alone are still fine for detection
    # the dataset doctor (check_dataset.py task=instance_segmentation) lists the same two
    write_coco_folder(tmp_path, [{"id": 1, "width": WIDTH, "height": HEIGHT}], annotations, "train2017")
    findings, _ = CocoDataModule(tmp_path, masks=True).inspect(read_images=False)
    assert [f.message.split(": ", 1)[1][:16] for f in findings if f.check == "segmentation"] == 2 * [
        "annotation id 1 ",
        "annotation id 2 ",
    ]


COLOURS = {1: (255, 0, 0), 2: (0, 255, 0), 3: (0, 0, 255)}  # label -> the colour of its objects


@pytest.fixture(scope="module")
def coloured_objects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Images of solid rectangles on black, one colour per class, masks as compressed RLE."""
    root, rng = tmp_path_factory.mktemp("coloured"), np.random.default_rng(0)
    images, annotations, pixels = [], [], {}
    for image_id in range(1, 13):
        canvas = np.zeros((64, 80, 3), np.uint8)
        for label in rng.permutation([1, 2, 3]):
            x, y, w, h = (int(v) for v in (rng.integers(0, 60), rng.integers(0, 44), *rng.integers(8, 20, 2)))
            mask = np.zeros(canvas.shape[:2], np.uint8)
            mask[y : y + h, x : x + w] = 1
            mask &= ~canvas.any(axis=2)  # the visible part only, under the rectangles drawn before
            if mask.sum() < 16:
                continue
            canvas[mask.astype(bool)] = COLOURS[int(label)]
            ys, xs = np.nonzero(mask)
            bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            row = {"image_id": image_id, "category_id": CATEGORY_IDS[label - 1], "bbox": bbox}
            annotations.append({**row, "segmentation": encode_mask(mask)})
        images.append({"id": image_id, "width": 80, "height": 64})
        pixels[image_id] = canvas
    write_coco_folder(root, images, annotations)
    for image in images:  # the pictures themselves, in place of the helper's noise
        Image.fromarray(pixels[image["id"]]).save(root / "val2017" / image["file_name"])
    return root


@pytest.mark.parametrize("preset", ["hflip", "scale_jitter", "multiscale", "lsj"])
def test_masks_move_with_their_objects_and_vanish_together(coloured_objects: Path, preset: str) -> None:
    sizes = {"multiscale_sizes": [48, 96], "max_size": 120, "lsj_size": 64}
    folder, ann_file = coloured_objects / "val2017", coloured_objects / "annotations" / "instances_val2017.json"
    plain = CocoDetection(folder, ann_file, masks=True)
    transforms = detection_transforms(preset, train=True, **sizes)
    dataset = CocoDetection(folder, ann_file, transforms, masks=True)
    objects_before = objects_after = checked = 0
    for repeat in range(3):
        for i in range(len(dataset)):
            seed = repeat * len(dataset) + i  # as the training loader seeds each item: a repeatable test
            transforms.set_random_state(np.random.default_rng(seed), random.Random(seed))
            image, target = dataset[i]
            masks, boxes, image = target["masks"].numpy(), target["boxes"].numpy(), image.numpy()
            assert masks.shape == (len(boxes), *image.shape[1:]) and len(target["labels"]) == len(boxes)
            for mask, box, label in zip(masks, boxes, target["labels"].tolist(), strict=True):
                ys, xs = np.nonzero(mask)
                np.testing.assert_array_equal(box, [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                interior = _interior(mask.astype(bool))  # two pixels in: resampling blends edges
                if interior.sum() >= 4:  # still on its own object: nearer its class colour than any other or black
                    mean = image[:, interior].mean(axis=1)
                    distances = {k: np.linalg.norm(mean - c) for k, c in {**COLOURS, 0: (0, 0, 0)}.items()}
                    assert min(distances, key=distances.get) == label, (mean, label)
                    checked += 1
            objects_before += len(plain[i][1]["boxes"])
            objects_after += len(boxes)
    assert checked > objects_after / 2
    if preset == "lsj":  # random crops of 0.1-2x scaled images leave objects out, masks and all
        assert objects_after < objects_before
    elif preset == "scale_jitter":  # zooming in on a fixed canvas may push an object out
        assert objects_after <= objects_before
    else:
        assert objects_after == objects_before


def _interior(mask: np.ndarray, depth: int = 2) -> np.ndarray:
    """The mask without the pixels within ``depth`` steps (of eight neighbours) of its outside or the image border."""
    h, w = mask.shape
    for _ in range(depth):
        padded = np.pad(mask, 1, constant_values=False)
        mask = np.all([padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], 0)
    return mask


def test_mask_stats_equal_on_both_backends(shapes_root: Path) -> None:
    """GT masks shifted and shrunk at random, plus false detections: segm stats of both backends agree."""
    coco_gt = load_coco(shapes_root / "annotations" / "instances_val2017.json")
    rng = np.random.default_rng(0)
    rows = []
    for ann in coco_gt.dataset["annotations"]:
        image = coco_gt.imgs[ann["image_id"]]
        mask = coco_gt.annToMask(ann)
        mask = np.roll(mask, rng.integers(-2, 3, 2), axis=(0, 1)) if rng.random() < 0.7 else mask[::-1].copy()
        category = ann["category_id"] if rng.random() < 0.8 else rng.integers(1, 5)
        row = {"image_id": ann["image_id"], "category_id": int(category), "score": float(rng.random())}
        rows.append({**row, "segmentation": encode_mask(mask)})
        box = np.zeros((image["height"], image["width"]), np.uint8)
        box[rng.integers(0, 30) :, rng.integers(0, 30) :] = 1
        rows.append({**row, "score": float(rng.random()) * 0.5, "segmentation": encode_mask(box)})
    reference = coco_evaluate(coco_gt, rows, backend="pycocotools", iou_type="segm")
    fast = coco_evaluate(coco_gt, rows, backend="faster_coco_eval", iou_type="segm")
    assert 0.1 < reference.stats["map_50"] < 0.95
    for name in COCO_STAT_NAMES:
        assert fast.stats[name] == pytest.approx(reference.stats[name], abs=1e-9), name
    assert fast.ap_per_class == pytest.approx(reference.ap_per_class, abs=1e-9)


def test_mask_boxes_include_the_edge_pixels() -> None:
    """COCO's convention, by hand: pixels in rows 2-4 and columns 3-7 span x 3..8 and y 2..5."""
    from tasks.data.detection_dataset import mask_box_xywh, mask_extents

    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:8] = True
    mask[4, 3] = False  # a hole at the corner changes nothing: another pixel holds each edge
    assert mask_box_xywh(mask) == [3, 2, 5, 3]
    assert mask_extents(np.stack([mask, np.roll(mask, 1, axis=1)])).tolist() == [[3, 2, 8, 5], [4, 2, 9, 5]]
