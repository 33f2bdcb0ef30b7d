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

if TYPE_CHECKING:
    from tasks.data.detection_index import DetectionIndex

ERROR, WARNING, REPAIRED, INFO = "error", "warning", "repaired", "info"


@dataclass(frozen=True)
class Finding:
    # error: training would crash or evaluate wrongly; warning: it would learn badly; repaired: fixed on load; info
    severity: str
    check: str
    message: str


class DatasetError(ValueError):
    """The dataset has problems that would crash training or falsify evaluation."""


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
    order = {ERROR: 0, WARNING: 1, REPAIRED: 2, INFO: 3}
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


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 'es' if word[-1] in 'sx' else 's'}"


def split_summary(split: str, dataset: object) -> str:
    """One line for a loaded split: images, and for box data the boxes and the classes they use,
    e.g. ``train: 40 images, 679 boxes, 1 class``."""
    tiles = getattr(dataset, "tiles", None)
    if tiles is not None:  # training on tiles: the images they are cut from
        dataset = dataset.dataset
    line = f"{split}: {_plural(len(dataset), 'image')}"
    if tiles is not None:
        line += f" ({_plural(len(tiles), 'tile')})"
    index = getattr(dataset, "index", None)
    if index is None or not hasattr(index, "labels"):
        return line
    trained = ~np.asarray(index.ignored)
    line += f", {_plural(int(trained.sum()), 'box')}, {_plural(len(np.unique(index.labels[trained])), 'class')}"
    ignored = int((~trained).sum())
    return line + (f" (and {ignored:,} ignore regions: crowd or difficult)" if ignored else "")
