"""COCO-format detection data: an image folder plus an instances json, read with pycocotools."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import albumentations as A
import numpy as np
from pycocotools.coco import COCO

from tasks.data.detection_dataset import DetectionDataset, ImageRecord, clip_boxes
from tasks.data.doctor import inspect_coco, raise_on_errors

log = logging.getLogger(__name__)


def load_coco(ann_file: Path) -> COCO:
    """Load an instances json quietly (pycocotools prints progress to stdout)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def coco_records(coco: COCO, image_dir: Path, category_ids: list[int], source: str) -> list[ImageRecord]:
    """One record per image (images without objects included); crowd boxes go to ``ignored``.

    Boxes are clipped to their image and boxes under one pixel dropped, with one warning
    that counts both.
    """
    label_of = {cat: i + 1 for i, cat in enumerate(category_ids)}
    records, clipped, dropped = [], 0, 0
    for image_id in sorted(coco.imgs):
        info = coco.imgs[image_id]
        h, w = int(info["height"]), int(info["width"])
        anns = coco.imgToAnns.get(image_id, [])
        xywh = np.asarray([ann["bbox"] for ann in anns], dtype=np.float64).reshape(-1, 4)
        boxes, keep, changed = clip_boxes(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1), w, h)
        crowd = np.asarray([bool(ann.get("iscrowd", 0)) for ann in anns], dtype=bool)
        labels = np.asarray([label_of[ann["category_id"]] for ann in anns], dtype=np.int64)
        clipped, dropped = clipped + changed, dropped + int((~keep).sum())
        train = keep & ~crowd
        records.append(
            ImageRecord(image_id, image_dir / info["file_name"], h, w, boxes[train], labels[train], boxes[keep & crowd])
        )
    if clipped or dropped:
        log.warning("%s: clipped %d boxes to their image, dropped %d boxes under one pixel", source, clipped, dropped)
    return records


class CocoDetection(DetectionDataset):
    """A COCO instances json and its image folder.

    Category ids (any order, gaps allowed) map to contiguous labels 1..K in increasing id
    order. Crowd regions are not trained on; they stay in ``coco`` for evaluation.
    """

    def __init__(self, image_dir: Path, ann_file: Path, transforms: A.Compose | None = None) -> None:
        image_dir, ann_file = Path(image_dir), Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} not found: expected a COCO instances json")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} not found: expected the images of {ann_file}")
        coco = load_coco(ann_file)
        raise_on_errors(inspect_coco(coco.dataset, image_dir, str(ann_file), read_images=False), str(ann_file))
        category_ids = sorted(coco.getCatIds())
        if not category_ids:
            raise ValueError(f"{ann_file} declares no categories")
        super().__init__(
            coco_records(coco, image_dir, category_ids, str(ann_file)),
            category_ids=category_ids,
            class_names=[coco.cats[c]["name"] for c in category_ids],
            coco=coco,
            transforms=transforms,
            source=str(ann_file),
        )
        self.image_dir, self.ann_file = image_dir, ann_file
