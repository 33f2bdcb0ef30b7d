"""Semantic segmentation files: records (an image and its mask of class indices), their checks, the
VOC2012 layout (optionally SBD-augmented) and masks built from COCO instances (cached).

Masks hold class indices 0..K-1 (0 is background) and 255 for pixels to ignore.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from tasks.common.progress import progress
from tasks.data.formats.coco import load_coco
from tasks.data.formats.voc import VOC_CLASSES
from tasks.data.images import MAX_PIXELS, inspect_image_file

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
# COCO category ids of the 20 VOC classes in VOC order (0: background), as torchvision's reference uses
COCO_IDS_OF_VOC_CLASSES = (0, 5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)


@dataclass(frozen=True)
class SegmentationRecord:
    image_id: int
    image: Path
    mask: Path


def read_mask(path: Path) -> np.ndarray:
    """Class-index mask as HxW uint8 (palette PNGs give their indices, grayscale PNGs their values)."""
    with Image.open(path) as mask:
        if mask.mode not in ("P", "L"):
            raise ValueError(f"mask {path} has mode {mask.mode}: expected a palette or 8-bit grayscale PNG of indices")
        return np.array(mask)


def record_problems(
    records: Sequence[SegmentationRecord], num_classes: int, *, decode: bool = False, max_pixels: int = MAX_PIXELS
) -> list[str]:
    """Every mask readable, of its upright image's size, holding only 0..K-1 or 255; ``decode``:
    the images' own problems too (truncation, pixel count, ...), by decoding them."""
    problems = []
    for record in records:
        image_problem, upright = inspect_image_file(record.image, decode=decode, max_pixels=max_pixels)
        if image_problem:
            problems.append(f"{record.image} is {image_problem}")
            continue
        width, height = upright
        try:
            mask = read_mask(record.mask)
        except (OSError, ValueError) as err:
            problems.append(f"{record.mask} is {'missing' if not record.mask.is_file() else f'unreadable ({err})'}")
            continue
        if mask.shape != (height, width):
            problems.append(f"{record.mask} is {mask.shape[1]}x{mask.shape[0]} but {record.image} is {width}x{height}")
        bad = sorted(set(np.unique(mask).tolist()) - set(range(num_classes)) - {IGNORE_INDEX})
        if bad:
            problems.append(f"{record.mask} holds label values {bad} outside 0..{num_classes - 1} (and 255)")
    return problems


def check_records(records: Sequence[SegmentationRecord], num_classes: int, source: str) -> None:
    """Start-up check (``record_problems`` without decoding images): raise with the problems found."""
    problems = record_problems(records, num_classes)
    if problems:
        shown = "\n    ".join(problems[:20]) + (
            f"\n    ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise ValueError(f"{source}: {len(problems)} segmentation problems:\n    {shown}")


def _files_key(records: Sequence[SegmentationRecord]) -> str:
    """A digest of every image and mask file's path, size and modification time."""
    digest = hashlib.sha1()
    for record in records:
        for path in (record.image, record.mask):
            stat = path.stat() if path.is_file() else None
            digest.update(f"{path}|{stat.st_size if stat else -1}|{stat.st_mtime_ns if stat else -1}\n".encode())
    return digest.hexdigest()


def check_records_once(
    records: Sequence[SegmentationRecord], num_classes: int, source: str, stamp_dir: Path | None
) -> None:
    """``check_records``, skipped when a stamp in ``stamp_dir`` says these exact files passed before."""
    if stamp_dir is None:
        check_records(records, num_classes, source)
        return
    key = {"files": _files_key(records), "num_classes": num_classes}
    stamp = stamp_dir / f"checked-{hashlib.sha1(source.encode()).hexdigest()[:16]}.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == key:
        return
    check_records(records, num_classes, source)
    stamp_dir.mkdir(parents=True, exist_ok=True)
    tmp = stamp.with_name(f".{stamp.name}.{os.getpid()}")
    tmp.write_text(json.dumps(key))
    os.replace(tmp, stamp)


def voc_segmentation_records(
    root: Path, years: Sequence[str | int], split: str, *, use_sbd: bool = True, exclude: frozenset[str] = frozenset()
) -> list[SegmentationRecord]:
    """Records of ``ImageSets/Segmentation/<split>.txt`` for each year; for ``train`` in VOC2012 with
    ``SegmentationClassAug/`` and ``train_aug.txt`` present (SBD), the augmented list instead."""
    records = []
    for year in map(str, years):
        base = root / f"VOC{year}"
        masks, list_file = base / "SegmentationClass", base / "ImageSets" / "Segmentation" / f"{split}.txt"
        aug_list = base / "ImageSets" / "Segmentation" / "train_aug.txt"
        if use_sbd and split == "train" and (base / "SegmentationClassAug").is_dir() and aug_list.is_file():
            masks, list_file = base / "SegmentationClassAug", aug_list
            log.info("VOC%s: training on the SBD-augmented list %s", year, aug_list)
        if not list_file.is_file():
            raise FileNotFoundError(
                f"image set {list_file} not found (dataset.root={root}); expected VOC{year}/ImageSets/Segmentation/"
                f"{split}.txt, VOC{year}/JPEGImages/ and VOC{year}/SegmentationClass/"
            )
        for file_id in list_file.read_text().split():
            if file_id in exclude:
                continue
            records.append(
                SegmentationRecord(len(records) + 1, base / "JPEGImages" / f"{file_id}.jpg", masks / f"{file_id}.png")
            )
    return records


def _coco_labels(coco: COCO, categories: str) -> tuple[dict[int, int], list[str]]:
    """Mask value of each COCO category id, and the class names (background first)."""
    if categories == "voc":
        return {cat: i for i, cat in enumerate(COCO_IDS_OF_VOC_CLASSES) if cat}, ["background", *VOC_CLASSES]
    if categories == "all":
        ids = sorted(coco.getCatIds())
        return {cat: i + 1 for i, cat in enumerate(ids)}, ["background", *(coco.cats[c]["name"] for c in ids)]
    raise ValueError(f"categories={categories!r} must be 'all' or 'voc'")


_BUILD: dict = {}  # the ground truth of the masks being built, shared with forked workers


def _write_masks(image_ids: list[int]) -> None:
    coco, label_of, folder = _BUILD["coco"], _BUILD["labels"], _BUILD["folder"]
    for image_id in image_ids:
        info = coco.imgs[image_id]
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        for ann in coco.imgToAnns.get(image_id, []):
            label = IGNORE_INDEX if ann.get("iscrowd", 0) else label_of.get(ann["category_id"])
            if label is not None:
                mask[coco.annToMask(ann) > 0] = label
        Image.fromarray(mask).save(folder / f"{Path(info['file_name']).stem}.png")


MASK_STEPS = "drawing masks (256 images a step)"


def _build_masks(coco: COCO, label_of: dict[int, int], folder: Path, workers: int) -> None:
    """Every image's mask into ``folder``, in ``workers`` forked processes."""
    image_ids = sorted(coco.imgs)
    _BUILD.update(coco=coco, labels=label_of, folder=folder)
    try:
        chunks = [image_ids[i : i + 256] for i in range(0, len(image_ids), 256)]
        if workers > 1 and len(chunks) > 1 and "fork" in mp.get_all_start_methods():
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
                list(progress(pool.map(_write_masks, chunks), len(chunks), MASK_STEPS, "steps", min_items=4))
        else:
            for chunk in progress(chunks, len(chunks), MASK_STEPS, "steps", min_items=4):
                _write_masks(chunk)
    finally:
        _BUILD.clear()


def coco_semantic_masks(
    image_dir: Path, ann_file: Path, cache_dir: Path, categories: str, *, build: bool = True, workers: int = 1
) -> tuple[list, list[str]]:
    """Semantic masks from COCO instances, cached as PNGs in ``cache_dir`` (built once, rebuilt when
    the json changes).

    ``categories="all"``: every json category, in id order, after background; ``"voc"``: the 20
    VOC classes (other objects become background), as torchvision's reference does. Crowd
    regions become 255 (ignored). The masks are built in ``workers`` processes into a temporary
    folder that is renamed into place when complete; ``build=False`` refuses to build (the
    caller expects another process to have done it).
    """
    key = {"annotations": str(ann_file.resolve()), "mtime_ns": ann_file.stat().st_mtime_ns, "categories": categories}
    stamp = cache_dir / "masks.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()).get("key") == key):
        if not build:
            raise RuntimeError(f"the semantic masks of {ann_file} are not in {cache_dir}: prepare_data builds them")
        coco = load_coco(ann_file)
        label_of, names = _coco_labels(coco, categories)
        log.info(
            "building %d semantic masks from %s into %s (%d processes)", len(coco.imgs), ann_file, cache_dir, workers
        )
        tmp = cache_dir.with_name(f".{cache_dir.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _build_masks(coco, label_of, tmp, workers)
        # the image list travels with the masks: reading it back needs no pass over the json
        images = [[image_id, info["file_name"]] for image_id, info in sorted(coco.imgs.items())]
        (tmp / "masks.json").write_text(json.dumps({"key": key, "names": names, "images": images}))
        shutil.rmtree(cache_dir, ignore_errors=True)
        tmp.rename(cache_dir)
    content = json.loads(stamp.read_text())
    records = [
        SegmentationRecord(image_id, image_dir / file_name, cache_dir / f"{Path(file_name).stem}.png")
        for image_id, file_name in content["images"]
    ]
    return records, content["names"]
