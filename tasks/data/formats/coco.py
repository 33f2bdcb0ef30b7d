"""COCO-format detection data: an image folder plus an instances json, indexed into flat arrays."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from tasks.data.augment import Pipeline
from tasks.data.detection import DetectionDataModule
from tasks.data.detection_dataset import DetectionDataset, clip_boxes
from tasks.data.detection_index import DetectionIndex, cached_index, source_key
from tasks.data.doctor import ERROR, INFO, REPAIRED, Finding, image_file_findings, raise_on_errors
from tasks.data.formats.coco_json import read_coco_json
from tasks.data.formats.masks import segmentation_problem
from tasks.data.images import MAX_PIXELS, image_file_problem

log = logging.getLogger(__name__)

MISSING = -1  # stands for an absent or malformed id in the tables
FILE_CHECKS = ("skip", "exist", "decode")  # how inspect_coco_tables treats image files


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
    return read_coco_json(ann_file, object_hook=None if keep_segmentation else _drop_segmentation)


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
        transforms: Pipeline | None = None,
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


# -- the doctor's checks of an instances json ------------------------------------------------
def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def _box_text(row: np.ndarray) -> str:
    return str([_number(v) for v in row.tolist()])


def _id_findings(ann_ids: np.ndarray, source: str) -> list[Finding]:
    findings = []
    values, counts = np.unique(ann_ids, return_counts=True)
    for ann_id, count in zip(values.tolist(), counts.tolist(), strict=True):
        if ann_id in (0, -1):
            shown = repr(ann_id) if ann_id == 0 else "None"
            findings.append(Finding(ERROR, "zero annotation id", f"{source}: {count} annotations have id {shown}"))
        elif count > 1:
            findings.append(Finding(ERROR, "duplicate annotation id", f"{source}: id {ann_id} is used {count} times"))
    return findings


def _box_findings(tables: CocoTables, owner: np.ndarray, known: np.ndarray, source: str) -> list[Finding]:
    """Degenerate boxes and boxes leaving their image (both repaired by the loaders)."""
    findings = []
    x, y, w, h = tables.bboxes.T
    rows = np.flatnonzero(known)
    width, height = tables.widths[owner[rows]], tables.heights[owner[rows]]
    malformed = np.isnan(tables.bboxes[rows]).any(axis=1)
    degenerate = ~malformed & ((w[rows] <= 0) | (h[rows] <= 0))
    outside = (
        ~malformed
        & ~degenerate
        & ((x[rows] < 0) | (y[rows] < 0) | (x[rows] + w[rows] > width) | (y[rows] + h[rows] > height))
    )
    for k in np.flatnonzero(malformed):
        row = rows[k]
        findings.append(
            Finding(ERROR, "malformed bbox", f"{source}: annotation {tables.ann_ids[row]} bbox is not 4 numbers")
        )
    for k in np.flatnonzero(degenerate | outside):
        row, image = rows[k], owner[rows[k]]
        box = _box_text(tables.bboxes[row])
        where = f"{source} {tables.file_names[image]}: annotation {tables.ann_ids[row]} bbox {box}"
        if degenerate[k]:
            findings.append(Finding(REPAIRED, "degenerate box", f"{where} (dropped)"))
        else:
            size = f"{tables.widths[image]}x{tables.heights[image]}"
            findings.append(Finding(REPAIRED, "box outside image", f"{where} leaves the {size} image (clipped)"))
    return findings


def inspect_coco_tables(
    tables: CocoTables, image_dir: Path, source: str, *, files: str = "decode", max_pixels: int = MAX_PIXELS
) -> list[Finding]:
    """Every check of an instances json; ``files``: ``skip`` image files, check they ``exist``, or
    ``decode`` them (also checking their header: pixel count, recorded size, EXIF rotation)."""
    if files not in FILE_CHECKS:
        raise ValueError(f"files={files!r} must be one of {FILE_CHECKS}")
    findings = _id_findings(tables.ann_ids, source)
    order = np.argsort(tables.image_ids, kind="stable")
    sorted_ids = tables.image_ids[order]
    position = np.searchsorted(sorted_ids, tables.ann_image_ids).clip(0, max(len(sorted_ids) - 1, 0))
    known = (sorted_ids[position] == tables.ann_image_ids) if len(sorted_ids) else np.zeros(len(position), bool)
    owner = order[position] if len(order) else position
    for row in np.flatnonzero(~known):
        message = f"{source}: annotation {tables.ann_ids[row]} has image_id {tables.ann_image_ids[row]}"
        findings.append(Finding(ERROR, "unknown image", message))
    categories = tables.category_ids
    for row in np.flatnonzero(known & ~np.isin(tables.ann_category_ids, categories)):
        message = (
            f"{source}: annotation {tables.ann_ids[row]} has category_id {tables.ann_category_ids[row]} "
            f"(declared: {categories})"
        )
        findings.append(Finding(ERROR, "unknown category", message))
    findings += _box_findings(tables, owner, known, source)
    if files != "skip":
        for image, image_id in enumerate(tables.image_ids.tolist()):
            path = image_dir / tables.file_names[image]
            if files == "exist":
                problem = None if path.is_file() else "missing"
            else:
                size = (int(tables.widths[image]), int(tables.heights[image]))
                problem = image_file_problem(path, recorded_size=size, max_pixels=max_pixels)
            if problem:
                findings.append(Finding(ERROR, "image file", f"{path} (image_id {image_id}) is {problem}"))
    annotated = np.zeros(len(tables.image_ids), bool)
    annotated[owner[known]] = True
    for image in np.flatnonzero(~annotated):
        message = f"{tables.file_names[image]} (image_id {tables.image_ids[image]})"
        findings.append(Finding(INFO, "image without annotations", message))
    if categories and categories != list(range(categories[0], categories[0] + len(categories))):
        findings.append(
            Finding(INFO, "category id gaps", f"{source}: ids {categories} are not contiguous (mapped to labels 1..K)")
        )
    return findings


class CocoDataModule(DetectionDataModule):
    """Train/val splits given as image folders and instances jsons, relative to ``root``
    (absolute paths are taken as they are, so any COCO-format pair works).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser() if root else Path()
        self.splits = {"train": (train_images, train_annotations), "val": (val_images, val_annotations)}

    def _layout(self) -> str:
        return ", ".join(f"{images}/ and {ann}" for images, ann in self.splits.values())

    def _split_paths(self, split: str) -> tuple[Path, Path]:
        images, annotations = (self.root / p for p in self.splits[split])
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected a folder holding {self._layout()}"
            )
        if not annotations.is_file():
            raise FileNotFoundError(
                f"annotation file {annotations} not found (dataset.root={self.root}); expected the {split} "
                f"instances json there (COCO format), or set dataset.{split}_annotations"
            )
        if not images.is_dir():
            raise FileNotFoundError(
                f"image folder {images} not found (dataset.root={self.root}); expected the {split} images "
                f"there, or set dataset.{split}_images"
            )
        return images, annotations

    def _build_split(self, split: str, transforms: Pipeline | None, *, prepared: bool) -> DetectionDataset:
        images, annotations = self._split_paths(split)
        return CocoDetection(
            images, annotations, transforms, cache_dir=self.cache_dir, check_images=False, masks=self.masks
        )

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        """From the validation json (the smaller one; setup checks that training agrees)."""
        return read_categories(self._split_paths("val")[1])

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        findings, class_names = [], []
        for split in self.splits:
            try:
                images, annotations = self._split_paths(split)
                dataset = read_instances(annotations, keep_segmentation=self.masks)
            except (FileNotFoundError, ValueError) as err:
                findings.append(Finding(ERROR, "layout", str(err)))
                continue
            options = {"read_images": read_images, "max_pixels": max_pixels, "masks": self.masks}
            findings += inspect_coco(dataset, images, str(annotations), **options)
            categories = sorted(dataset.get("categories", []), key=lambda c: c["id"])
            class_names = class_names or [c["name"] for c in categories]
        return findings, class_names
