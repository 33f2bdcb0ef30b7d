"""The COCO index: flat arrays built once per json, memory-mapped from the cache by every process,
rebuilt when the json changes; no pycocotools object in the training data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from torch.utils.data import DataLoader

from tasks.data.detection_dataset import collate_detection
from tasks.data.formats.coco import CocoDetection


def _val(root: Path, cache: Path | None) -> CocoDetection:
    return CocoDetection(root / "val2017", root / "annotations" / "instances_val2017.json", cache_dir=cache)


def test_index_is_cached_memory_mapped_and_rebuilt_when_the_json_changes(shapes_root: Path, tmp_path: Path) -> None:
    in_memory = _val(shapes_root, None)
    cached = _val(shapes_root, tmp_path / "cache")
    (folder,) = (tmp_path / "cache").iterdir()
    stamp = (folder / "meta.json").stat().st_mtime_ns
    again = _val(shapes_root, tmp_path / "cache")
    assert (folder / "meta.json").stat().st_mtime_ns == stamp  # read, not rebuilt
    assert isinstance(again.index.boxes, np.memmap) and isinstance(again.index.image_ids, np.memmap)
    for name in ("image_ids", "box_offsets", "boxes", "labels", "ignored", "names"):
        np.testing.assert_array_equal(getattr(again.index, name), getattr(in_memory.index, name))
    assert [r.path for r in again.records] == [r.path for r in in_memory.records]
    # the training data holds arrays, never a pycocotools index (whose copy every worker would grow)
    assert not any(isinstance(value, COCO) for value in vars(cached).values())
    assert not any(isinstance(value, COCO) for value in vars(cached.index).values())

    ann_file = shapes_root / "annotations" / "instances_val2017.json"
    content = json.loads(ann_file.read_text())
    moved = tmp_path / "moved"
    (moved / "annotations").mkdir(parents=True)
    os.symlink(shapes_root / "val2017", moved / "val2017")
    content["annotations"] = content["annotations"][1:]
    (moved / "annotations" / "instances_val2017.json").write_text(json.dumps(content))
    edited = _val(moved, tmp_path / "cache")
    assert len(edited.index.boxes) == len(in_memory.index.boxes) - 1


def test_workers_read_the_mapped_index(shapes_root: Path, tmp_path: Path) -> None:
    dataset = _val(shapes_root, tmp_path / "cache")
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_detection)
    ids = [t["image_id"] for _, targets in loader for t in targets]
    assert ids == dataset.index.image_ids.tolist()
