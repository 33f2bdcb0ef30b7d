"""COCO panoptic data: ``panoptic_<split>.json`` (images, one ``segments_info`` list per image, categories
flagged ``isthing``) and one PNG per image whose colour encodes the segment id, ``R + 256 G + 256^2 B``
(0: void, unlabelled).

Things (``isthing: 1``) become the detector's boxes, labels and masks (crowd things ignored); every
pixel also gets a semantic class for the semantic head: 0 the things, 1..S the stuff categories, void
left out (``SEMANTIC_IGNORE``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.data.augment import Pipeline
from tasks.data.detection_dataset import DetectionDataset, mask_extents
from tasks.data.detection_index import DetectionIndex, ImageRecord
from tasks.data.doctor import ERROR, INFO, WARNING, Finding, raise_on_errors
from tasks.data.formats.coco_json import read_coco_json
from tasks.data.images import MAX_PIXELS, image_file_problem

SEMANTIC_IGNORE = 255  # void pixels in the semantic target
# PNGs decoded at start-up (every k-th of the json's list): their ids are checked against segments_info,
# since pixels of an unlisted id would silently train as void; check_dataset.py decodes every one
STARTUP_PNG_SAMPLE = 200


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of an H x W x 3 panoptic PNG (COCO's encoding)."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256) % 256], axis=-1).astype(np.uint8)


def read_segment_ids(path: Path) -> np.ndarray:
    """The segment-id map of a panoptic PNG (palette and grey PNGs are read as their RGB colours)."""
    with Image.open(path) as png:
        return rgb_to_id(np.asarray(png.convert("RGB")))


@dataclass(frozen=True)
class PanopticCategories:
    """Thing and stuff categories in id order. Labels: things 1..K, stuff K+1..K+S (semantic head: the
    things are class 0, stuff ``s`` is class ``s``)."""

    thing_ids: tuple[int, ...]
    thing_names: tuple[str, ...]
    stuff_ids: tuple[int, ...]
    stuff_names: tuple[str, ...]

    @classmethod
    def from_json(cls, categories: Sequence[Mapping], source: str) -> PanopticCategories:
        rows = sorted(categories, key=lambda c: c["id"])
        missing = [c.get("name", c["id"]) for c in rows if "isthing" not in c]
        if missing:
            raise ValueError(
                f"{source}: categories {missing} have no 'isthing' flag; a panoptic json marks each category "
                "isthing: 1 (countable objects) or 0 (stuff)"
            )
        things = [c for c in rows if c["isthing"]]
        stuff = [c for c in rows if not c["isthing"]]
        return cls(
            tuple(c["id"] for c in things),
            tuple(c["name"] for c in things),
            tuple(c["id"] for c in stuff),
            tuple(c["name"] for c in stuff),
        )

    @property
    def category_ids(self) -> list[int]:
        """Category id of each label 1..K+S (things then stuff)."""
        return [*self.thing_ids, *self.stuff_ids]

    @property
    def names(self) -> list[str]:
        return [*self.thing_names, *self.stuff_names]

    @property
    def is_thing(self) -> dict[int, bool]:
        return {**{c: True for c in self.thing_ids}, **{c: False for c in self.stuff_ids}}

    @cached_property
    def thing_label(self) -> dict[int, int]:
        """Thing category id -> detector label 1..K."""
        return {c: k + 1 for k, c in enumerate(self.thing_ids)}

    @cached_property
    def semantic_class(self) -> dict[int, int]:
        """Category id -> semantic class (0: every thing, 1..S: the stuff)."""
        return {**{c: 0 for c in self.thing_ids}, **{c: s + 1 for s, c in enumerate(self.stuff_ids)}}


def read_panoptic_json(path: Path) -> dict:
    return read_coco_json(path, required=("images", "annotations", "categories"), kind="COCO panoptic")


class SegmentTable:
    """Every image's PNG name and segments as flat arrays (a Python object per segment costs too much
    at COCO scale in every loader worker); image ``image_ids[i]`` owns rows ``offsets[i]:offsets[i+1]``."""

    def __init__(self, annotations: Sequence[Mapping]) -> None:
        rows = sorted(annotations, key=lambda a: a["image_id"])
        self.image_ids = np.array([a["image_id"] for a in rows], np.int64)
        names = [a["file_name"].encode() for a in rows]
        self.name_offsets = np.concatenate([[0], np.cumsum([len(n) for n in names])]).astype(np.int64)
        self.names = np.frombuffer(b"".join(names), np.uint8).copy()
        infos = [a.get("segments_info", []) for a in rows]
        self.offsets = np.concatenate([[0], np.cumsum([len(i) for i in infos])]).astype(np.int64)
        flat = [s for info in infos for s in info]
        self.segment_ids = np.array([s["id"] for s in flat], np.int64)
        self.category_ids = np.array([s["category_id"] for s in flat], np.int64)
        self.iscrowd = np.array([bool(s.get("iscrowd", 0)) for s in flat], bool)
        self.bboxes = np.array([s.get("bbox", [0, 0, 0, 0]) for s in flat], np.float64).reshape(-1, 4)

    def position(self, image_id: int) -> int | None:
        i = int(np.searchsorted(self.image_ids, image_id))
        return i if i < len(self.image_ids) and self.image_ids[i] == image_id else None

    def png_name(self, i: int) -> str:
        return bytes(self.names[self.name_offsets[i] : self.name_offsets[i + 1]]).decode()

    def rows(self, i: int) -> slice:
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))


class PanopticGroundTruth:
    """What the panoptic evaluation compares with: each image's segment-id map and segments."""

    def __init__(self, table: SegmentTable, png_dir: Path) -> None:
        self.table, self.png_dir = table, Path(png_dir)

    def image(self, image_id: int) -> tuple[np.ndarray, dict[int, tuple[int, bool]]] | None:
        """The segment-id map and ``{segment id: (category id, iscrowd)}``; None: not annotated."""
        i = self.table.position(image_id)
        if i is None:
            return None
        rows = self.table.rows(i)
        segments = {
            int(s): (int(c), bool(k))
            for s, c, k in zip(
                self.table.segment_ids[rows], self.table.category_ids[rows], self.table.iscrowd[rows], strict=True
            )
        }
        return read_segment_ids(self.png_dir / self.table.png_name(i)), segments


def panoptic_index(dataset: Mapping, table: SegmentTable, categories: PanopticCategories) -> DetectionIndex:
    """The things of every image as a detection index (boxes from ``segments_info``; crowd ignored)."""
    label = categories.thing_label
    images = sorted(dataset["images"], key=lambda im: im["id"])
    counts, boxes, labels, ignored = [], [], [], []
    for image in images:
        i = table.position(image["id"])
        rows = range(0) if i is None else range(int(table.offsets[i]), int(table.offsets[i + 1]))
        things = [r for r in rows if int(table.category_ids[r]) in label]
        counts.append(len(things))
        for r in things:
            x, y, w, h = table.bboxes[r]
            boxes.append([x, y, x + w, y + h])
            labels.append(label[int(table.category_ids[r])])
            ignored.append(bool(table.iscrowd[r]))
    return DetectionIndex.build(
        [im["id"] for im in images],
        [im["height"] for im in images],
        [im["width"] for im in images],
        [im["file_name"] for im in images],
        counts,
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(labels, np.int64),
        np.asarray(ignored, bool),
    )


def panoptic_targets(
    ids: np.ndarray, segments: SegmentTable, rows: slice, categories: PanopticCategories
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From one image's segment-id map: the things' boxes, labels and masks (not crowd) and the
    semantic map (0 void, 1 things, 2.. stuff: shifted down by one, void to ``SEMANTIC_IGNORE``,
    after augmentation, whose padding fills with 0)."""
    label = categories.thing_label
    semantic = np.zeros(ids.shape, np.uint8)
    masks, labels = [], []
    for segment_id, category_id, crowd in zip(
        segments.segment_ids[rows], segments.category_ids[rows], segments.iscrowd[rows], strict=True
    ):
        pixels = ids == segment_id
        semantic[pixels] = categories.semantic_class[int(category_id)] + 1
        if int(category_id) in label and not crowd and pixels.any():
            masks.append(pixels)
            labels.append(label[int(category_id)])
    masks_array = np.stack(masks).astype(np.uint8) if masks else np.zeros((0, *ids.shape), np.uint8)
    return mask_extents(masks_array), np.asarray(labels, np.int64), masks_array, semantic


def semantic_target(raw: np.ndarray) -> np.ndarray:
    """The stored semantic map (0 void, 1 things, 2.. stuff) as the head's classes, void ignored."""
    target = raw.astype(np.int64) - 1
    target[target < 0] = SEMANTIC_IGNORE
    return target


class CocoPanoptic(DetectionDataset):
    """A COCO panoptic json, its image folder and its PNG folder. Items are detection items of the
    things (``masks`` always) plus ``sem_seg``: the semantic classes (0 things, 1..S stuff, 255 void),
    moved by the same augmentation. Labels 1..K are the things in id order."""

    semantic_target = staticmethod(semantic_target)

    def __init__(
        self,
        image_dir: Path,
        ann_file: Path,
        png_dir: Path,
        transforms: Pipeline | None = None,
        *,
        check_files: bool = True,
    ) -> None:
        image_dir, ann_file, png_dir = Path(image_dir), Path(ann_file), Path(png_dir)
        for path, what in ((ann_file, "the panoptic json"), (image_dir, "its images"), (png_dir, "its PNG segments")):
            if not path.exists():
                raise FileNotFoundError(f"{path} not found: expected {what} (COCO panoptic layout)")
        dataset = read_panoptic_json(ann_file)
        self.categories = PanopticCategories.from_json(dataset["categories"], str(ann_file))
        self.segments = SegmentTable(dataset["annotations"])
        self.png_dir = png_dir
        index = panoptic_index(dataset, self.segments, self.categories)
        if check_files:  # the start-up check: files there, a sample of the PNGs decoded
            findings = inspect_panoptic(
                dataset, image_dir, png_dir, str(ann_file), files="exist", png_sample=STARTUP_PNG_SAMPLE
            )
            raise_on_errors(findings, str(ann_file))
        super().__init__(
            index,
            image_dir,
            category_ids=self.categories.thing_ids,
            class_names=self.categories.thing_names,
            ground_truth=lambda: PanopticGroundTruth(self.segments, png_dir),
            transforms=transforms,
            source=str(ann_file),
        )

    def read_panoptic(
        self, index: int
    ) -> tuple[ImageRecord, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(record, image, boxes, labels, masks, stored semantic map) as the files hold them."""
        record = self.index.record(index, self.image_root)
        image = self.read_image(record)
        i = self.segments.position(record.image_id)
        if i is None:  # an image without annotation: all void
            masks, semantic = np.zeros((0, *image.shape[:2]), np.uint8), np.zeros(image.shape[:2], np.uint8)
            return record, image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), masks, semantic
        png = self.png_dir / self.segments.png_name(i)
        ids = read_segment_ids(png)
        if ids.shape != image.shape[:2]:
            raise ValueError(
                f"{png} is {ids.shape[1]}x{ids.shape[0]} but its image {record.path} is "
                f"{image.shape[1]}x{image.shape[0]}: a panoptic PNG covers its image pixel for pixel"
            )
        return record, image, *panoptic_targets(ids, self.segments, self.segments.rows(i), self.categories)

    def __getitem__(self, index: int):
        record, image, boxes, labels, masks, semantic = self.read_panoptic(index)
        return self.item(record, image, boxes, labels, masks, semantic=semantic)


# -- the doctor's checks ------------------------------------------------------------------------------
def inspect_panoptic(
    dataset: Mapping,
    image_dir: Path,
    png_dir: Path,
    source: str,
    *,
    files: str = "decode",
    max_pixels: int = MAX_PIXELS,
    png_sample: int = 0,
) -> list[Finding]:
    """Every check of a panoptic json and its files; ``files``: ``exist`` (images and PNGs are there, and
    ``png_sample`` PNGs, every k-th of the json's list, decoded and checked) or ``decode`` (every image
    header, every PNG's size and ids against its ``segments_info``)."""
    findings: list[Finding] = []
    try:
        categories = PanopticCategories.from_json(dataset["categories"], source)
    except ValueError as err:
        return [Finding(ERROR, "categories", str(err))]
    known_categories = set(categories.category_ids)
    images = {im["id"]: im for im in dataset["images"]}
    annotated = set()
    count = len(dataset["annotations"])
    step = 1 if files == "decode" else math.ceil(count / png_sample) if png_sample else count + 1
    for position, annotation in enumerate(dataset["annotations"]):
        image_id, png_name = annotation.get("image_id"), annotation.get("file_name", "")
        where = f"{source}: image_id {image_id} ({png_name})"
        if image_id not in images:
            findings.append(Finding(ERROR, "unknown image", f"{where}: no image has this id"))
            continue
        annotated.add(image_id)
        infos = annotation.get("segments_info", [])
        ids = [s.get("id") for s in infos]
        for segment_id in sorted({s for s in ids if ids.count(s) > 1}):
            findings.append(Finding(ERROR, "duplicate segment id", f"{where}: segment id {segment_id} is listed twice"))
        for s in infos:
            if s.get("id") == 0:
                findings.append(
                    Finding(ERROR, "segment id 0", f"{where}: id 0 is void in the PNG; renumber the segment")
                )
            if s.get("category_id") not in known_categories:
                declared = sorted(known_categories)
                message = (
                    f"{where}: segment {s.get('id')} has category_id {s.get('category_id')} (declared: {declared})"
                )
                findings.append(Finding(ERROR, "unknown category", message))
        decode = position % step == 0
        findings += _png_findings(png_dir / png_name, images[image_id], set(ids), where, decode)
        image_path = image_dir / images[image_id]["file_name"]
        if files == "exist":
            problem = None if image_path.is_file() else "missing"
        else:
            size = (int(images[image_id]["width"]), int(images[image_id]["height"]))
            problem = image_file_problem(image_path, recorded_size=size, max_pixels=max_pixels)
        if problem:
            findings.append(Finding(ERROR, "image file", f"{image_path} (image_id {image_id}) is {problem}"))
    for image_id in sorted(set(images) - annotated):
        message = f"{images[image_id]['file_name']} (image_id {image_id}): no panoptic annotation (all void)"
        findings.append(Finding(INFO, "image without annotations", message))
    return findings


def _png_findings(png: Path, image: Mapping, listed: set, where: str, decode: bool) -> list[Finding]:
    if not png.is_file():
        return [Finding(ERROR, "panoptic PNG", f"{where}: {png} is missing")]
    if not decode:
        return []
    try:
        ids = read_segment_ids(png)
    except OSError as err:
        return [Finding(ERROR, "panoptic PNG", f"{where}: {png} cannot be read ({err})")]
    if ids.shape != (image["height"], image["width"]):
        size = f"{ids.shape[1]}x{ids.shape[0]}"
        message = f"{where}: {png} is {size} but its image is {image['width']}x{image['height']}"
        return [Finding(ERROR, "panoptic PNG", message)]
    present = set(np.unique(ids).tolist()) - {0}
    findings = []
    unlisted = sorted(present - listed)
    if unlisted:
        message = f"{where}: {png} has pixels of segment ids {unlisted[:5]} that segments_info does not list"
        findings.append(Finding(ERROR, "unlisted segment", message))
    absent = sorted(listed - present)
    if absent:
        message = f"{where}: segments {absent[:5]} of segments_info have no pixels in {png} (never seen in training)"
        findings.append(Finding(WARNING, "empty segment", message))
    return findings
