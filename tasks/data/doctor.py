"""Dataset doctor: finds annotation problems, with file names and annotation ids.

``inspect_coco`` runs every check; training runs the fast subset (no image decoding) when it
indexes a split and stops with the report on errors. What can be repaired safely (boxes
clipped to their image, boxes under one pixel dropped) is repaired by the loaders with a
warning. The COCO checks work on whole columns, so a COCO-2017-sized json takes seconds.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks.data.images import MAX_PIXELS, image_file_problem

if TYPE_CHECKING:
    from tasks.data.detection_index import DetectionIndex
    from tasks.data.formats.coco import CocoTables

ERROR, REPAIRED, INFO = "error", "repaired", "info"
FILE_CHECKS = ("skip", "exist", "decode")


@dataclass(frozen=True)
class Finding:
    severity: str  # error: training would crash or evaluate wrongly; repaired: fixed on load; info
    check: str
    message: str


class DatasetError(ValueError):
    """The dataset has problems that would crash training or falsify evaluation."""


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


def image_file_findings(index: DetectionIndex, image_root: Path) -> list[Finding]:
    """The start-up check of an indexed split: every image file exists (one directory listing per
    folder rather than a file-system call per image: 118k images take a fraction of a second)."""
    listings: dict[Path, set[str]] = {}
    findings = []
    for i in range(len(index)):
        path = image_root / index.file_name(i)
        folder = path.parent
        if folder not in listings:
            listings[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        if path.name not in listings[folder] and not path.is_file():
            message = f"{path} (image_id {index.image_ids[i]}) is missing"
            findings.append(Finding(ERROR, "image file", message))
    return findings


def check_num_classes(num_classes: int | None, class_names: Sequence[str]) -> list[Finding]:
    if num_classes is None or num_classes == len(class_names):
        return [Finding(INFO, "classes", f"{len(class_names)} classes: {list(class_names)}")]
    return [
        Finding(
            ERROR,
            "class count",
            f"the model is configured for num_classes={num_classes} but the data has {len(class_names)} "
            f"categories {list(class_names)} (num_classes counts categories without background)",
        )
    ]


def format_report(findings: list[Finding], limit_per_check: int = 10) -> str:
    """Findings grouped by check, errors first, at most ``limit_per_check`` lines per check."""
    order = {ERROR: 0, REPAIRED: 1, INFO: 2}
    lines = []
    by_check: dict[tuple[str, str], list[Finding]] = {}
    for finding in sorted(findings, key=lambda f: order[f.severity]):
        by_check.setdefault((finding.severity, finding.check), []).append(finding)
    for (severity, check), group in by_check.items():
        lines.append(f"[{severity}] {check}: {len(group)}")
        lines += [f"    {f.message}" for f in group[:limit_per_check]]
        if len(group) > limit_per_check:
            lines.append(f"    ... and {len(group) - limit_per_check} more")
    return "\n".join(lines)


def raise_on_errors(findings: list[Finding], source: str) -> None:
    errors = [f for f in findings if f.severity == ERROR]
    if errors:
        report = format_report(errors)
        raise DatasetError(
            f"{source} has problems that would crash training or falsify evaluation:\n{report}\n"
            "Fix the annotation file (python tasks/check_dataset.py dataset=... lists everything)."
        )
