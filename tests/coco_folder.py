"""Writes small hand-made COCO-format folders for tests (non-contiguous ids, crowd, edge cases)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

CATEGORY_IDS = [3, 7, 90]  # non-contiguous, as in COCO


def write_coco_folder(root: Path, images: list[dict], annotations: list[dict], split: str = "val2017") -> Path:
    """``images`` rows need id, width, height; files are written as noise PNGs."""
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for image in images:
        image.setdefault("file_name", f"{image['id']:012d}.png")
        pixels = rng.integers(0, 255, (image["height"], image["width"], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / image["file_name"])
    for i, ann in enumerate(annotations, start=1):
        ann.setdefault("id", i)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", ann["bbox"][2] * ann["bbox"][3])
    content = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS],
    }
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(json.dumps(content))
    return path


def pycocotools_stats(coco_gt: COCO, rows: list[dict], iou_type: str = "bbox") -> list[float]:
    """The 12 summary stats of pycocotools' own COCOeval on ``rows`` (the reference the project is held to)."""
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(rows), iou_type)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return list(evaluation.stats)
