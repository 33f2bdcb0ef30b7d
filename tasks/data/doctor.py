"""Dataset doctor: finds annotation problems, with file names and annotation ids.

``inspect_coco`` runs every check; training runs the fast subset (no image decoding) at
start-up and stops with the report on errors. What can be repaired safely (boxes clipped
to their image, boxes under one pixel dropped) is repaired by the loaders with a warning.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

ERROR, REPAIRED, INFO = "error", "repaired", "info"


@dataclass(frozen=True)
class Finding:
    severity: str  # error: training would crash or evaluate wrongly; repaired: fixed on load; info
    check: str
    message: str


class DatasetError(ValueError):
    """The dataset has problems that would crash training or falsify evaluation."""


def _degenerate_and_outside(ann: dict, info: dict, where: str) -> list[Finding]:
    x, y, w, h = ann["bbox"]
    if w <= 0 or h <= 0:
        return [Finding(REPAIRED, "degenerate box", f"{where}: annotation {ann['id']} bbox {ann['bbox']} (dropped)")]
    if x < 0 or y < 0 or x + w > info["width"] or y + h > info["height"]:
        return [
            Finding(
                REPAIRED,
                "box outside image",
                f"{where}: annotation {ann['id']} bbox {ann['bbox']} leaves the {info['width']}x{info['height']} "
                "image (clipped)",
            )
        ]
    return []


def _image_problem(path: Path, read_images: bool) -> str | None:
    if not path.is_file():
        return "missing"
    if read_images:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as err:  # noqa: BLE001 - any decoder failure makes the file unusable
            return f"unreadable ({err})"
    return None


def inspect_coco(dataset: dict, image_dir: Path, source: str, *, read_images: bool = True) -> list[Finding]:
    """Check a loaded COCO instances json (``dataset``) against its image folder."""
    findings: list[Finding] = []
    images = {img["id"]: img for img in dataset.get("images", [])}
    categories = sorted(c["id"] for c in dataset.get("categories", []))
    annotations = dataset.get("annotations", [])
    ids = Counter(ann.get("id") for ann in annotations)
    for ann_id, count in ids.items():
        if ann_id in (0, None):
            findings.append(Finding(ERROR, "zero annotation id", f"{source}: {count} annotations have id {ann_id!r}"))
        elif count > 1:
            findings.append(Finding(ERROR, "duplicate annotation id", f"{source}: id {ann_id} is used {count} times"))
    annotated = set()
    for ann in annotations:
        info = images.get(ann.get("image_id"))
        if info is None:
            findings.append(
                Finding(
                    ERROR, "unknown image", f"{source}: annotation {ann.get('id')} has image_id {ann.get('image_id')}"
                )
            )
            continue
        annotated.add(info["id"])
        if ann.get("category_id") not in categories:
            findings.append(
                Finding(
                    ERROR,
                    "unknown category",
                    f"{source}: annotation {ann.get('id')} has category_id {ann.get('category_id')} "
                    f"(declared: {categories})",
                )
            )
        findings += _degenerate_and_outside(ann, info, f"{source} {info.get('file_name')}")
    for image_id, info in images.items():
        problem = _image_problem(image_dir / info["file_name"], read_images)
        if problem:
            findings.append(
                Finding(ERROR, "image file", f"{image_dir / info['file_name']} (image_id {image_id}) is {problem}")
            )
        if image_id not in annotated:
            findings.append(Finding(INFO, "image without annotations", f"{info['file_name']} (image_id {image_id})"))
    if categories and categories != list(range(categories[0], categories[0] + len(categories))):
        findings.append(
            Finding(INFO, "category id gaps", f"{source}: ids {categories} are not contiguous (mapped to labels 1..K)")
        )
    return findings


def check_num_classes(num_classes: int | None, class_names: list[str]) -> list[Finding]:
    if num_classes is None or num_classes == len(class_names):
        return [Finding(INFO, "classes", f"{len(class_names)} classes: {class_names}")]
    return [
        Finding(
            ERROR,
            "class count",
            f"the model is configured for num_classes={num_classes} but the data has {len(class_names)} "
            f"categories {class_names} (num_classes counts categories without background)",
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


def inspect_voc(
    root: Path, years: list, split: str, class_names: list[str], *, read_images: bool = True
) -> list[Finding]:
    """Check a VOCdevkit split: image sets, XML files, boxes, class names and images."""
    from tasks.data.voc import parse_voc_xml, read_image_set  # the loader's own parsing (imports this module)

    findings: list[Finding] = []
    for year in map(str, years):
        try:
            file_ids = read_image_set(root, year, split)
        except FileNotFoundError as err:
            findings.append(Finding(ERROR, "image set", str(err)))
            continue
        for file_id in file_ids:
            xml_path = root / f"VOC{year}" / "Annotations" / f"{file_id}.xml"
            image_path = root / f"VOC{year}" / "JPEGImages" / f"{file_id}.jpg"
            problem = _image_problem(image_path, read_images)
            if problem:
                findings.append(Finding(ERROR, "image file", f"{image_path} is {problem}"))
            try:
                width, height, objects = parse_voc_xml(xml_path)
            except (OSError, ValueError) as err:
                findings.append(Finding(ERROR, "annotation file", f"{xml_path}: {err}"))
                continue
            if not objects:
                findings.append(Finding(INFO, "image without annotations", str(xml_path)))
            for k, (name, _difficult, (x1, y1, x2, y2)) in enumerate(objects):
                where = f"{xml_path} object {k}"
                if name not in class_names:
                    findings.append(Finding(ERROR, "unknown category", f"{where}: class {name!r} not in {class_names}"))
                if x2 - x1 <= 0 or y2 - y1 <= 0:
                    findings.append(Finding(REPAIRED, "degenerate box", f"{where}: box {[x1, y1, x2, y2]} (dropped)"))
                elif x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                    findings.append(
                        Finding(
                            REPAIRED, "box outside image", f"{where}: box leaves the {width}x{height} image (clipped)"
                        )
                    )
    return findings
