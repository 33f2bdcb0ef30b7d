"""Benchmark: COCO evaluation backends and data-pipeline throughput (prints figures; not a test).

    python -m tasks.benchmarks.eval_and_data_speed [--images 5000] [--pipeline-images 200]

1. Builds a synthetic 5,000-image COCO ground truth (80 categories) and a detection result
   set (jittered true boxes, wrong classes, false positives), then times pycocotools and
   faster_coco_eval on the same input in this run and prints the speed ratio. The 12 stats must
   agree within 1e-9: the last line reads ``stats_equal=true|false``, and the run fails when false.
2. Writes a small COCO-layout folder of 640x480 JPEGs and times each augmentation preset
   through the real dataset class in one process (images per second per worker).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools.coco import COCO

from tasks.data.augment import DETECTION_PRESETS, detection_transforms
from tasks.data.formats.coco import CocoDetection
from tasks.evaluation.coco_eval import COCO_STAT_NAMES, coco_evaluate


def synthetic_coco(num_images: int, seed: int = 0) -> tuple[COCO, list[dict]]:
    rng = np.random.default_rng(seed)
    categories = [{"id": i, "name": f"c{i}"} for i in range(1, 81)]
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        width, height = int(rng.integers(320, 641)), int(rng.integers(240, 481))
        images.append({"id": image_id, "width": width, "height": height})
        for _ in range(rng.integers(1, 15)):
            w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            category = int(rng.integers(1, 81))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": int(rng.random() < 0.01),
                }
            )
            if rng.random() < 0.9:
                jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
                label = category if rng.random() < 0.8 else int(rng.integers(1, 81))
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": label,
                        "bbox": list(np.array([x, y, w, h]) + jitter),
                        "score": float(rng.random()),
                    }
                )
        for _ in range(rng.integers(0, 10)):  # false positives
            w, h = rng.uniform(8, 100, 2)
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.integers(1, 81)),
                    "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h],
                    "score": float(rng.random()),
                }
            )
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, results


def bench_eval(num_images: int) -> float:
    """Time both backends on one synthetic set; return the largest difference of their stats."""
    coco, results = synthetic_coco(num_images)
    print(f"\nCOCO evaluation: {num_images} images, {len(coco.anns)} ground-truth boxes, {len(results)} detections")
    timings, stats = {}, {}
    for backend in ("pycocotools", "faster_coco_eval"):
        start = time.perf_counter()
        stats[backend] = coco_evaluate(coco, results, backend=backend).stats
        timings[backend] = time.perf_counter() - start
        print(f"  {backend:<17} {timings[backend]:7.2f} s   map={stats[backend]['map']:.6f}")
    worst = largest_difference(stats["pycocotools"], stats["faster_coco_eval"])
    print(f"  largest difference over the 12 stats: {worst:.2e} (allowed: {STATS_TOLERANCE:g})")
    print(f"  faster_coco_eval is {timings['pycocotools'] / timings['faster_coco_eval']:.1f}x pycocotools")
    return worst


STATS_TOLERANCE = 1e-9  # the two backends implement one algorithm: they differ by float rounding only


def largest_difference(reference: dict[str, float], other: dict[str, float]) -> float:
    """The largest absolute difference between two backends' 12 COCO stats."""
    return max(abs(reference[name] - other[name]) for name in COCO_STAT_NAMES)


def bench_pipeline(num_images: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        rng = np.random.default_rng(0)
        images, annotations = [], []
        for image_id in range(1, num_images + 1):
            pixels = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"{image_id}.jpg", quality=90)
            images.append({"id": image_id, "file_name": f"{image_id}.jpg", "width": 640, "height": 480})
            for _ in range(5):
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": [float(v) for v in rng.uniform(10, 200, 4)],
                        "area": 1.0,
                        "iscrowd": 0,
                    }
                )
        (root / "instances.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]})
        )
        print(f"\nData pipeline: {num_images} 640x480 JPEGs, decode + augment + to tensor, one worker")
        for preset in DETECTION_PRESETS:
            dataset = CocoDetection(root / "images", root / "instances.json", detection_transforms(preset, train=True))
            start = time.perf_counter()
            for index in range(len(dataset)):
                dataset[index]
            elapsed = time.perf_counter() - start
            print(f"  {preset:<13} {len(dataset) / elapsed:7.1f} images/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--pipeline-images", type=int, default=200)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    worst = bench_eval(args.images)
    bench_pipeline(args.pipeline_images)
    agree = worst <= STATS_TOLERANCE
    print(f"stats_equal={str(agree).lower()} largest_difference={worst:.2e}")
    if not agree:
        raise SystemExit(f"the two evaluation backends differ by {worst:.2e} > {STATS_TOLERANCE:g}")


if __name__ == "__main__":
    main()
