"""A COCO-2017-shaped folder for benchmarks: real instances jsons (boxes and polygons) of any size,
JPEG images in train2017/ and val2017/.

``python -m tasks.benchmarks.coco_like --root DIR [--train 118287 --val 5000]``. COCO 2017 has
118,287 training images with 860,001 boxes (7.27 per image) and 5,000 validation images with
36,781 boxes. To keep the disk small, ``--distinct`` images are written and the others are hard
links to them; every file decodes as a real JPEG.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

COCO_2017 = {"train": (118_287, 860_001), "val": (5_000, 36_781)}
CATEGORY_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]  # COCO's 80 ids


def _annotations(rng: np.random.Generator, image_ids: np.ndarray, count: int, size: tuple[int, int]) -> list[dict]:
    width, height = size
    owners = np.sort(rng.choice(image_ids, count))
    w = rng.uniform(4, width / 2, count)
    h = rng.uniform(4, height / 2, count)
    x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
    categories = rng.choice(CATEGORY_IDS, count)
    points = rng.integers(8, 40, count)  # COCO polygons: tens of vertices
    rows = []
    for k in range(count):
        angles = np.sort(rng.uniform(0, 2 * np.pi, points[k]))
        polygon = np.stack([x[k] + w[k] / 2 * (1 + np.cos(angles)), y[k] + h[k] / 2 * (1 + np.sin(angles))], 1)
        rows.append(
            {
                "id": k + 1,
                "image_id": int(owners[k]),
                "category_id": int(categories[k]),
                "bbox": [round(float(v), 2) for v in (x[k], y[k], w[k], h[k])],
                "area": round(float(w[k] * h[k] * 0.7), 2),
                "segmentation": [np.round(polygon.ravel(), 2).tolist()],
                "iscrowd": 0,
            }
        )
    return rows


def write_split(root: Path, split: str, images: int, boxes: int, size: tuple[int, int], distinct: int) -> Path:
    """``root/<split>2017/`` and ``root/annotations/instances_<split>2017.json``; returns the json."""
    rng = np.random.default_rng([images, boxes, len(split)])
    folder = root / f"{split}2017"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    ids = np.arange(1, images + 1) + (0 if split == "train" else 10_000_000)
    names = [f"{image_id:012d}.jpg" for image_id in ids]
    sources = []
    for k in range(min(distinct, images)):
        pixels = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        path = folder / names[k]
        Image.fromarray(pixels).resize(size).save(path, quality=90)
        sources.append(path)
    for k in range(len(sources), images):
        target = folder / names[k]
        if not target.exists():
            os.link(sources[k % len(sources)], target)
    content = {
        "info": {"description": f"COCO-2017-shaped benchmark data ({split})"},
        "licenses": [],
        "images": [
            {"id": int(i), "file_name": n, "width": size[0], "height": size[1]} for i, n in zip(ids, names, strict=True)
        ],
        "annotations": _annotations(rng, ids, boxes, size),
        "categories": [{"id": c, "name": f"category{c}", "supercategory": "thing"} for c in CATEGORY_IDS],
    }
    path = root / "annotations" / f"instances_{split}2017.json"
    path.write_text(json.dumps(content))
    return path


def write_coco_like(
    root: Path, *, train: int, val: int, size: tuple[int, int] = (640, 480), distinct: int = 64
) -> Path:
    """Both splits, with COCO 2017's boxes per image; nothing is rewritten when the folder exists."""
    root = Path(root)
    for split, images in (("train", train), ("val", val)):
        if not (root / "annotations" / f"instances_{split}2017.json").is_file():
            full_images, full_boxes = COCO_2017[split]
            write_split(root, split, images, round(images * full_boxes / full_images), size, distinct)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--train", type=int, default=COCO_2017["train"][0])
    parser.add_argument("--val", type=int, default=COCO_2017["val"][0])
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of every image")
    parser.add_argument("--distinct", type=int, default=64, help="images written; the rest are hard links")
    args = parser.parse_args()
    width, height = map(int, args.size.split("x"))
    write_coco_like(args.root, train=args.train, val=args.val, size=(width, height), distinct=args.distinct)
    print(f"COCO-2017-shaped data in {args.root}")


if __name__ == "__main__":
    main()
