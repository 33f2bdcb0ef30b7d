"""Images with their objects as a labelling tool describes them, whatever the file format.

The per-file formats (a VOCdevkit, a folder of VOC XML files, the YOLO layout) parse into
``LabelledImage`` lists; what they share lives here: renaming and merging classes
(``class_map``), collecting class names, the doctor's checks, a seeded validation split,
and the flat detection index that training and evaluation read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tasks.data.detection_dataset import clip_boxes
from tasks.data.detection_index import DetectionIndex
from tasks.data.doctor import ERROR, INFO, REPAIRED, Finding
from tasks.data.images import MAX_PIXELS, image_file_problem

log = logging.getLogger(__name__)


@dataclass
class LabelledObject:
    name: str
    box: list[float]  # xyxy, 0-based pixel edges (x2 = the right edge of the last pixel column)
    difficult: bool = False
    polygon: list[float] | None = None  # flat x, y pairs in pixels (an instance mask), when the format has one
    row: str = ""  # where in its file, for messages (e.g. "object 3", "line 7")


@dataclass
class LabelledImage:
    image_path: Path
    file_name: str  # the image's path relative to the data root: what the index stores
    annotation_path: Path | None  # None: no label file (an image without objects, where the format allows)
    size: tuple[int, int] | None = None  # (width, height)
    objects: list[LabelledObject] | None = field(default_factory=list)  # None: the file could not be read
    error: str | None = None


def rename_classes(images: Sequence[LabelledImage], class_map: Mapping[str, str] | None) -> None:
    """Rename (or merge, several names to one) classes in place: ``{Alive: Tree, Dead: Tree}``."""
    if not class_map:
        return
    for image in images:
        for obj in image.objects or []:
            obj.name = class_map.get(obj.name, obj.name)


def class_counts(images: Sequence[LabelledImage]) -> Counter:
    return Counter(obj.name for image in images for obj in image.objects or [])


def collect_class_names(images: Sequence[LabelledImage]) -> list[str]:
    """The class names the files use, sorted (so the same files always give the same labels)."""
    return sorted(class_counts(images))


def unknown_class_findings(images: Sequence[LabelledImage], class_names: Sequence[str]) -> list[Finding]:
    """One finding per unknown name (not one per object), with the names found and the fix."""
    counts, first = class_counts(images), {}
    for image in images:
        for obj in image.objects or []:
            first.setdefault(obj.name, f"{image.annotation_path} {obj.row}".strip())
    found = sorted(counts)
    findings = []
    for name in sorted(set(counts) - set(class_names)):
        findings.append(
            Finding(
                ERROR,
                "unknown class",
                f"class {name!r} ({counts[name]} object{'s' * (counts[name] != 1)}, first in {first[name]}) is not "
                f"in dataset.class_names "
                f"{list(class_names)}; the files use {found}. Pass dataset.class_names=null to take the names from "
                f"the files, or map it: dataset.class_map='{{{name}: <one of the class names>}}'",
            )
        )
    return findings


def _box_findings(image: LabelledImage) -> list[Finding]:
    findings = []
    width, height = image.size
    for obj in image.objects:
        x1, y1, x2, y2 = obj.box
        where = f"{image.annotation_path} {obj.row}".strip()
        if not np.isfinite(obj.box).all():
            findings.append(Finding(ERROR, "malformed box", f"{where}: box {obj.box} is not four numbers"))
        elif x2 - x1 <= 0 or y2 - y1 <= 0:
            findings.append(Finding(REPAIRED, "degenerate box", f"{where}: box {[x1, y1, x2, y2]} (dropped)"))
        elif x1 < 0 or y1 < 0 or x2 > width or y2 > height:
            message = f"{where}: box {[round(v, 2) for v in obj.box]} leaves the {width}x{height} image (clipped)"
            findings.append(Finding(REPAIRED, "box outside image", message))
    return findings


def labelled_findings(
    images: Sequence[LabelledImage],
    class_names: Sequence[str],
    *,
    read_images: bool = True,
    max_pixels: int = MAX_PIXELS,
    classes: bool = True,
) -> list[Finding]:
    """The doctor's findings: unreadable label files, image files, boxes, and unknown classes
    (``classes``; a caller checking several splits checks their classes together instead)."""
    findings: list[Finding] = []
    for image in images:
        if image.error:
            findings.append(Finding(ERROR, "annotation file", f"{image.annotation_path}: {image.error}"))
        if read_images:
            problem = image_file_problem(image.image_path, recorded_size=image.size, max_pixels=max_pixels)
        else:
            problem = None if image.image_path.is_file() else "missing"
        if problem:
            findings.append(Finding(ERROR, "image file", f"{image.image_path} is {problem}"))
        if image.objects is None or image.size is None:
            continue
        if not image.objects:
            findings.append(Finding(INFO, "image without objects", str(image.annotation_path or image.image_path)))
        findings += _box_findings(image)
    return findings + (unknown_class_findings(images, class_names) if classes else [])


def polygon_findings(images: Sequence[LabelledImage]) -> list[Finding]:
    """Instance segmentation trains on masks: every object needs its polygon."""
    findings = []
    for image in images:
        for obj in image.objects or []:
            if not obj.polygon:
                message = f"{image.annotation_path} {obj.row}: a box without a polygon (instance masks need polygons)"
                findings.append(Finding(ERROR, "segmentation", message))
    return findings


def labelled_index(
    images: Sequence[LabelledImage],
    class_names: Sequence[str],
    source: str,
    *,
    use_difficult: bool,
    masks: bool = False,
) -> DetectionIndex:
    """Image ids 1..N in the given order; boxes clipped to their image, those under one pixel
    dropped (one warning, naming ``source``, counts both); difficult objects are ignore regions
    unless ``use_difficult``; ``masks``: each object's polygon as its segmentation (every object
    must have one)."""
    label_of = {name: i + 1 for i, name in enumerate(class_names)}
    columns: dict[str, list] = {key: [] for key in ("heights", "widths", "files", "counts")}
    boxes_all, labels_all, ignored_all, segmentations = [], [], [], []
    clipped = dropped = 0
    for image in images:
        (width, height), objects = image.size, image.objects
        boxes, keep, changed = clip_boxes(np.asarray([obj.box for obj in objects]), width, height)
        clipped, dropped = clipped + changed, dropped + int((~keep).sum())
        kept = [obj for obj, k in zip(objects, keep, strict=True) if k]
        for key, value in zip(columns, (height, width, image.file_name, len(kept)), strict=True):
            columns[key].append(value)
        boxes_all.append(boxes[keep])
        labels_all.append(np.asarray([label_of[obj.name] for obj in kept], np.int64))
        ignored_all.append(np.asarray([obj.difficult and not use_difficult for obj in kept], bool))
        segmentations += [[obj.polygon] if obj.polygon else None for obj in kept]
    index = DetectionIndex.build(
        range(1, len(images) + 1),
        columns["heights"],
        columns["widths"],
        columns["files"],
        columns["counts"],
        np.concatenate(boxes_all) if boxes_all else np.zeros((0, 4)),
        np.concatenate(labels_all) if labels_all else np.zeros(0),
        np.concatenate(ignored_all) if ignored_all else np.zeros(0),
        segmentations if masks else None,
    )
    if clipped or dropped:
        log.warning("%s: clipped %d boxes to their image, dropped %d boxes under one pixel", source, clipped, dropped)
    return index


# -- a validation split when the data has none -------------------------------------------------
def fraction_split(file_names: Sequence[str], fraction: float, seed: int) -> set[str]:
    """The validation images: ``round(fraction * N)`` of them (at least one), drawn with ``seed``
    from the names in sorted order, so the same files and seed always give the same split."""
    if not 0 < fraction < 1:
        raise ValueError(f"dataset.val_fraction={fraction} must be between 0 and 1 (e.g. 0.2)")
    names = sorted(file_names)
    if len(names) < 2:
        raise ValueError(f"dataset.val_fraction={fraction} needs at least 2 images to split, found {len(names)}")
    count = min(len(names) - 1, max(1, round(fraction * len(names))))
    chosen = np.random.default_rng(seed).permutation(len(names))[:count]
    return {names[i] for i in chosen}


def write_split(path: Path, val_names: set[str], train_names: set[str], *, fraction: float, seed: int) -> None:
    """The split as json (``dataset.split_file`` reads it back in a later run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"val_fraction": fraction, "seed": seed, "train": sorted(train_names), "val": sorted(val_names)}
    path.write_text(json.dumps(content, indent=1))


def read_split(path: Path, file_names: Sequence[str]) -> set[str]:
    """The validation images a split file names; every one must still exist (images added since go
    to training, with a warning)."""
    try:
        content = json.loads(path.read_text())
        content = {"val": set(content["val"]), "train": set(content["train"])}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"dataset.split_file={path} is not a split file written by an earlier run ({err}); "
            "pass dataset.split_file=null to draw a new split with dataset.val_fraction"
        ) from err
    return split_names(content, file_names, f"dataset.split_file={path}")


def split_names(content: dict, file_names: Sequence[str], where: str) -> set[str]:
    """The validation images of a recorded split (``{"train": [...], "val": [...]}``, a split file's or a
    checkpoint's); every image it names must still exist, and images added since are trained on."""
    val, train = set(content["val"]), set(content["train"])
    present = set(file_names)
    missing = sorted((val | train) - present)
    if missing:
        raise ValueError(
            f"{where} names {len(missing)} images that are gone, e.g. {missing[:3]}; restore them, or pass "
            "dataset.split_file=null and train again to draw a new split"
        )
    new = present - val - train
    if new:
        log.warning("%d images are not in the split of %s: they are trained on", len(new), where)
    return val
