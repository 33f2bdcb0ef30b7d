"""Tiled training and sliced inference: every object reaches a tile, cut boxes keep their class,
and an object cut by a tile border is merged back into one box."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tasks.data.builtin import ShapesDataModule
from tasks.data.loader import SeededBatches
from tasks.data.shapes import ShapesSpec
from tasks.data.tiling import TiledDataset, boxes_in_window, tile_windows
from tasks.evaluation.slicing import Slicing, greedy_merge, predict_sliced

LARGE = ShapesSpec(num_train=3, num_val=2, image_size=300, min_object_size=8, max_object_size=40, max_objects=5)


def test_windows_cover_the_image_and_every_small_box_lies_whole_in_one() -> None:
    windows = tile_windows(1000, 700, 256, 0.25)
    assert windows[:, [0, 1]].min() == 0 and windows[:, 2].max() == 1000 and windows[:, 3].max() == 700
    assert ((windows[:, 2] - windows[:, 0]) == 256).all() and ((windows[:, 3] - windows[:, 1]) == 256).all()
    rng = np.random.default_rng(0)
    corners = rng.uniform([0, 0], [1000 - 60, 700 - 60], (500, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(4, 60, (500, 2))], axis=1)  # objects up to 60 px
    inside = np.zeros(len(boxes), bool)
    for window in windows:
        clipped, keep = boxes_in_window(boxes, window, min_visible=1.0)
        inside |= keep
    assert inside.all()  # the overlap (64 px) exceeds every object
    assert tile_windows(200, 100, 256, 0.2).tolist() == [[0, 0, 200, 100]]  # a small image is one tile


def test_a_cut_box_is_clipped_and_kept_by_its_visible_share() -> None:
    boxes = np.array([[90.0, 10, 130, 30], [110, 10, 140, 30]])  # 40 and 30 px wide, the border at x = 100
    clipped, keep = boxes_in_window(boxes, np.array([0, 0, 100, 100]), min_visible=0.25)
    assert keep.tolist() == [True, False] and clipped[0].tolist() == [90, 10, 100, 30]
    clipped, keep = boxes_in_window(boxes, np.array([50, 0, 150, 100]), min_visible=0.25)
    assert keep.tolist() == [True, True] and clipped[1].tolist() == [60, 10, 90, 30]  # in the tile's pixels


@pytest.fixture(scope="module")
def large_shapes(tmp_path_factory: pytest.TempPathFactory) -> ShapesDataModule:
    root = tmp_path_factory.mktemp("large") / "shapes"
    options = {k: getattr(LARGE, k) for k in ("num_train", "num_val", "image_size", "min_object_size",
                                               "max_object_size", "max_objects")}  # fmt: skip
    tile = {"size": 128, "overlap": 0.25, "min_visible": 0.5, "keep_empty": 1.0}
    datamodule = ShapesDataModule(root, **options, num_workers=0, augment="none", batch_size=2, tile=tile)
    datamodule.setup()
    return datamodule


def test_tiles_hold_every_object_with_its_class(large_shapes: ShapesDataModule) -> None:
    tiled = large_shapes.train_set
    assert isinstance(tiled, TiledDataset) and len(tiled) == 3 * 9  # 300 px: tiles at 0, 96, 172 each way
    whole = tiled.dataset
    found: dict[int, list] = {i: [] for i in range(len(whole))}
    for item in range(len(tiled)):
        image, target = tiled[item]
        position = int(tiled.tiles[item, 0])
        x0, y0, x1, y1 = target["tile"]
        assert tuple(image.shape[1:]) == (y1 - y0, x1 - x0)
        record = whole.records[position]
        for box, label in zip(target["boxes"].tolist(), target["labels"].tolist(), strict=True):
            placed = np.array(box) + [x0, y0, x0, y0]
            overlaps = [np.all(placed >= np.r_[b[:2], b[:2]] - 1e-4) and np.all(placed <= np.r_[b[2:], b[2:]] + 1e-4)
                        for b in record.boxes]  # fmt: skip
            owner = int(np.flatnonzero(overlaps)[0])  # the box it was cut from, and the class it keeps
            assert label == record.labels[owner]
            found[position].append(owner)
    for position, owners in found.items():
        assert set(owners) == set(range(len(whole.records[position].boxes)))  # every object in some tile


def test_validation_keeps_full_resolution_and_records_the_tile_size(large_shapes: ShapesDataModule) -> None:
    image, _ = large_shapes.val_set[0]
    assert tuple(image.shape[1:]) == (300, 300)
    image, _ = large_shapes.unaugmented("train")[0]  # show_dataset augmented=false: the whole file
    assert tuple(image.shape[1:]) == (300, 300) and len(large_shapes.unaugmented("train")) == 3
    assert large_shapes.inference_preprocessing()["tile_size"] == 128


def _cut_object_detector(obj: list[float]):
    """A fake detector that finds the part of one object inside each image it is given (crops are
    recognised by their pixel values: the image holds each pixel's x and y coordinates)."""

    def predict(images: list[torch.Tensor]) -> list[dict]:
        out = []
        for image in images:
            x0, y0 = float(image[0, 0, 0]), float(image[1, 0, 0])
            x1, y1 = x0 + image.shape[2], y0 + image.shape[1]
            box = [max(obj[0], x0), max(obj[1], y0), min(obj[2], x1), min(obj[3], y1)]
            seen = box[2] - box[0] >= 1 and box[3] - box[1] >= 1
            boxes = torch.tensor([[box[0] - x0, box[1] - y0, box[2] - x0, box[3] - y0]]) if seen else torch.zeros(0, 4)
            out.append(
                {
                    "boxes": boxes,
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.ones(len(boxes), dtype=torch.long),
                }
            )
        return out

    return predict


def test_an_object_cut_by_tile_borders_is_merged_back_into_one_box() -> None:
    ys, xs = torch.meshgrid(torch.arange(250.0), torch.arange(250.0), indexing="ij")
    image = torch.stack([xs, ys, xs])  # each pixel holds its coordinates
    # tiles of 150 px at x = 0 and 100: the object, wider than their 50 px overlap, is seen in two
    # pieces, [70, 150] and [100, 190], whose IoU (0.42) is under the NMS threshold
    obj = [70.0, 20, 190, 60]
    predict = _cut_object_detector(obj)
    slicing = {"size": 150, "overlap": 1 / 3, "full_image": False, "threshold": 0.5}
    merged = predict_sliced(predict, image, Slicing(**slicing, merge="nmm"))
    assert merged["boxes"].tolist() == [obj]
    kept = predict_sliced(predict, image, Slicing(**slicing, merge="nms"))
    assert sorted(kept["boxes"].tolist()) == [[70, 20, 150, 60], [100, 20, 190, 60]]


def test_greedy_merge_joins_cut_pieces_of_one_class_but_no_box_swallows_others() -> None:
    boxes = torch.tensor([[30.0, 30, 80, 80], [0, 0, 10, 10], [5, 0, 15, 10], [5, 0, 15, 10], [40, 40, 50, 50]])
    scores, labels = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.6]), torch.tensor([1, 1, 1, 2, 1])
    cut = torch.tensor([False, True, True, False, False])  # the two pieces reach a tile border
    merged, kept_scores, kept_labels = greedy_merge(boxes, scores, labels, threshold=0.5, cut=cut)
    # the large box (from the whole image) keeps the small one inside it apart: neither is cut
    assert merged.tolist() == [[30, 30, 80, 80], [0, 0, 15, 10], [5, 0, 15, 10], [40, 40, 50, 50]]
    assert kept_scores.tolist() == pytest.approx([0.95, 0.9, 0.7, 0.6]) and kept_labels.tolist() == [1, 1, 2, 1]
    uncut, _, _ = greedy_merge(boxes, scores, labels, threshold=0.5)  # pieces not cut: IoU 0.33 keeps them apart
    assert len(uncut) == 5


def test_a_tile_is_augmented_by_its_sample_seed_alone(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The loader seeds each sample's augmentation: the same key gives the same tile, whatever was read
    before it (two tiled runs with one seed, and a resumed one, see the same images)."""
    root = tmp_path_factory.mktemp("jitter") / "shapes"
    options = {k: getattr(LARGE, k) for k in ("num_train", "num_val", "image_size", "min_object_size",
                                               "max_object_size", "max_objects")}  # fmt: skip
    tile = {"size": 128, "overlap": 0.25, "keep_empty": 1.0}
    datamodule = ShapesDataModule(root, **options, num_workers=0, augment="scale_jitter", batch_size=2, tile=tile)
    datamodule.setup()
    reader = SeededBatches(datamodule.train_set)
    first = reader[[(4, 11)]][0]
    reader[[(5, 12), (4, 13)]]  # other draws in between
    again, other = reader[[(4, 11), (4, 12)]]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    assert not torch.equal(first[0], other[0])
