"""COCO-format detection data: an image folder plus an instances json, indexed into flat arrays."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
from pycocotools.coco import COCO

from tasks.data.detection_dataset import DetectionDataset, clip_boxes
from tasks.data.detection_index import DetectionIndex, cached_index, source_key
from tasks.data.doctor import ERROR, Finding, image_file_findings, inspect_coco_tables, raise_on_errors
from tasks.data.formats.masks import segmentation_problem
from tasks.data.images import MAX_PIXELS

log = logging.getLogger(__name__)

MISSING = -1  # stands for an absent or malformed id in the tables


def load_coco(ann_file: Path) -> COCO:
    """Load an instances json quietly with pycocotools (the evaluation ground truth)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann_file))


def _drop_segmentation(obj: dict) -> dict:
    obj.pop("segmentation", None)
    return obj


def read_instances(ann_file: Path, *, keep_segmentation: bool = False) -> dict:
    """The json as a dict; polygons and RLE are dropped while parsing unless kept (they are most
    of a COCO json's memory, and box training does not read them)."""
    hook = None if keep_segmentation else _drop_segmentation
    try:
        with open(ann_file, encoding="utf-8") as file:
            dataset = json.load(file, object_hook=hook)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{ann_file} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
            "fix the file (python -m json.tool FILE shows where)"
        ) from err
    if not isinstance(dataset, Mapping) or not isinstance(dataset.get("images"), list):
        raise ValueError(f"{ann_file} is not a COCO instances json: no 'images' list at the top level")
    return dict(dataset)


def _ids(rows: list[dict], key: str) -> np.ndarray:
    """``row[key]`` of every row as int64; MISSING where it is absent or not an integer."""
    values = [row.get(key, MISSING) for row in rows]
    try:
        column = np.asarray(values)
    except ValueError:  # ragged: some id is a list
        column = np.empty(0, object)
    if column.ndim == 1 and (column.dtype.kind in "iu" or not values):  # the usual case: every id an integer
        return column.astype(np.int64)
    return np.asarray([v if isinstance(v, int) and not isinstance(v, bool) else MISSING for v in values], np.int64)


def _bboxes(rows: list[dict]) -> np.ndarray:
    """(M, 4) float64 xywh; NaN for a bbox that is not four numbers."""
    boxes = [row.get("bbox") for row in rows]
    try:
        out = np.asarray(boxes, dtype=np.float64).reshape(len(rows), 4)  # the usual case, at C speed
    except (TypeError, ValueError):
        out = np.full((len(rows), 4), np.nan)
        for k, box in enumerate(boxes):
            if isinstance(box, list) and len(box) == 4 and all(isinstance(v, int | float) for v in box):
                out[k] = box
    return out


@dataclass
class CocoTables:
    """The columns of an instances json that detection reads, one array per field."""

    image_ids: np.ndarray
    file_names: list[str]
    widths: np.ndarray
    heights: np.ndarray
    ann_ids: np.ndarray
    ann_image_ids: np.ndarray
    ann_category_ids: np.ndarray
    bboxes: np.ndarray  # xywh
    iscrowd: np.ndarray
    categories: list[dict]
    segmentations: list | None = None  # each annotation's ``segmentation`` (None where absent), when read

    @classmethod
    def from_dataset(cls, dataset: dict, *, masks: bool = False) -> CocoTables:
        images, annotations = dataset.get("images", []), dataset.get("annotations", [])
        return cls(
            image_ids=_ids(images, "id"),
            file_names=[str(image.get("file_name", "")) for image in images],
            widths=np.asarray([image.get("width", 0) for image in images], np.int64),
            heights=np.asarray([image.get("height", 0) for image in images], np.int64),
            ann_ids=_ids(annotations, "id"),
            ann_image_ids=_ids(annotations, "image_id"),
            ann_category_ids=_ids(annotations, "category_id"),
            bboxes=_bboxes(annotations),
            iscrowd=np.asarray([bool(a.get("iscrowd", 0)) for a in annotations], bool),
            categories=sorted(dataset.get("categories", []), key=lambda c: c["id"]),
            segmentations=[a.get("segmentation") for a in annotations] if masks else None,
        )

    @property
    def category_ids(self) -> list[int]:
        return [int(c["id"]) for c in self.categories]

    @property
    def class_names(self) -> list[str]:
        return [str(c["name"]) for c in self.categories]


def coco_index(tables: CocoTables, source: str) -> DetectionIndex:
    """Images in id order (those without objects included); crowd boxes become ignore regions.

    Boxes are clipped to their image and boxes under one pixel dropped, with one warning that
    counts both. Annotations of unknown images or categories must have been refused before.
    """
    order = np.argsort(tables.image_ids, kind="stable")
    image_ids = tables.image_ids[order]
    widths, heights = tables.widths[order], tables.heights[order]
    owner = np.searchsorted(image_ids, tables.ann_image_ids)
    xywh = tables.bboxes
    xyxy = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
    boxes, keep, clipped = clip_boxes(xyxy, widths[owner], heights[owner])
    labels = np.searchsorted(np.asarray(tables.category_ids), tables.ann_category_ids) + 1
    dropped = int((~keep).sum())
    if clipped or dropped:
        log.warning("%s: clipped %d boxes to their image, dropped %d boxes under one pixel", source, clipped, dropped)
    kept = np.flatnonzero(keep)
    kept = kept[np.argsort(owner[kept], kind="stable")]
    return DetectionIndex.build(
        image_ids,
        heights,
        widths,
        [tables.file_names[i] for i in order],
        np.bincount(owner[kept], minlength=len(image_ids)),
        boxes[kept],
        labels[kept],
        tables.iscrowd[kept],
        None if tables.segmentations is None else [tables.segmentations[i] for i in kept],
    )


def segmentation_findings(tables: CocoTables, source: str) -> list[Finding]:
    """Every object trained on needs a usable segmentation (crowd regions are only ignored)."""
    findings = []
    for k, segmentation in enumerate(tables.segmentations or []):
        problem = "no segmentation" if segmentation is None else segmentation_problem(segmentation)
        if problem and not (segmentation is None and tables.iscrowd[k]):
            message = f"{source}: annotation id {tables.ann_ids[k]} has {problem} (instance masks need polygons or RLE)"
            findings.append(Finding(ERROR, "segmentation", message))
    return findings


def index_coco_file(ann_file: Path, image_dir: Path, *, masks: bool = False) -> tuple[DetectionIndex, dict]:
    """Read, check (annotation errors stop here with the doctor's report; image files are checked
    by the caller) and index one instances json, with each object's segmentation when ``masks``."""
    tables = CocoTables.from_dataset(read_instances(ann_file, keep_segmentation=masks), masks=masks)
    findings = inspect_coco_tables(tables, image_dir, str(ann_file), files="skip")
    raise_on_errors(findings + segmentation_findings(tables, str(ann_file)), str(ann_file))
    if not tables.categories:
        raise ValueError(f"{ann_file} declares no categories")
    metadata = {"category_ids": tables.category_ids, "class_names": tables.class_names}
    return coco_index(tables, str(ann_file)), metadata


def inspect_coco(
    dataset: dict,
    image_dir: Path,
    source: str,
    *,
    read_images: bool = True,
    max_pixels: int = MAX_PIXELS,
    masks: bool = False,
) -> list[Finding]:
    """Check a loaded COCO instances json (``dataset``) against its image folder; ``masks``: also each
    object's segmentation (``dataset`` read with them)."""
    files = "decode" if read_images else "exist"
    tables = CocoTables.from_dataset(dataset, masks=masks)
    findings = inspect_coco_tables(tables, image_dir, source, files=files, max_pixels=max_pixels)
    return findings + segmentation_findings(tables, source)


def read_categories(ann_file: Path) -> tuple[list[int], list[str]]:
    """Category ids (increasing) and names of an instances json."""
    tables = CocoTables.from_dataset(read_instances(ann_file))
    return tables.category_ids, tables.class_names


class CocoDetection(DetectionDataset):
    """A COCO instances json and its image folder.

    Category ids (any order, gaps allowed) map to contiguous labels 1..K in increasing id
    order. Crowd regions are not trained on; they stay in the ground truth for evaluation,
    which is the json itself (read on demand, by the process that evaluates).

    ``cache_dir``: where the index is kept between runs (rebuilt when the json changes); without
    one it is built in memory. ``check_images``: check that every image file exists (the caller
    may have done so already, e.g. when preparing data on one process). ``masks``: items also
    carry each object's mask (instance segmentation).
    """

    def __init__(
        self,
        image_dir: Path,
        ann_file: Path,
        transforms: A.Compose | None = None,
        *,
        cache_dir: Path | None = None,
        check_images: bool = True,
        masks: bool = False,
    ) -> None:
        image_dir, ann_file = Path(image_dir), Path(ann_file)
        if not ann_file.is_file():
            raise FileNotFoundError(f"annotation file {ann_file} not found: expected a COCO instances json")
        if not image_dir.is_dir():
            raise FileNotFoundError(f"image folder {image_dir} not found: expected the images of {ann_file}")
        key = source_key(ann_file, images=str(image_dir.resolve()))
        kind = "coco-masks" if masks else "coco"  # apart: the masks make the index several times larger
        index, metadata = cached_index(cache_dir, kind, key, lambda: index_coco_file(ann_file, image_dir, masks=masks))
        if check_images:
            raise_on_errors(image_file_findings(index, image_dir), str(ann_file))
        super().__init__(
            index,
            image_dir,
            category_ids=metadata["category_ids"],
            class_names=metadata["class_names"],
            ground_truth=lambda: load_coco(ann_file),
            transforms=transforms,
            source=str(ann_file),
        )
        self.image_dir, self.ann_file = image_dir, ann_file
