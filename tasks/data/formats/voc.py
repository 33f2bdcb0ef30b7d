"""PASCAL VOC detection data: ``VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}``."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from tasks.data.detection_dataset import DetectionDataset, clip_boxes
from tasks.data.detection_index import DetectionIndex
from tasks.data.doctor import ERROR, INFO, REPAIRED, Finding, raise_on_errors
from tasks.data.images import MAX_PIXELS, image_file_problem

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@dataclass
class VocGroundTruth:
    """One image's boxes as VOC AP scores them."""

    boxes: np.ndarray  # (N, 4) xyxy, inclusive pixel coordinates (x2 is the last pixel column)
    labels: np.ndarray  # (N,) class index 0..K-1
    difficult: np.ndarray  # (N,) bool


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 RGB entries."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r, g, b = r | ((c & 1) << shift), g | (((c >> 1) & 1) << shift), b | (((c >> 2) & 1) << shift)
            c >>= 3
        palette += [r, g, b]
    return palette


def _text(node: ET.Element, tag: str, xml_path: Path) -> str:
    found = node.find(tag)
    if found is None or found.text is None:
        raise ValueError(f"{xml_path}: <{tag}> is missing")
    return found.text.strip()


def parse_voc_xml(xml_path: Path) -> tuple[int, int, list[tuple[str, bool, list[float]]]]:
    """(width, height, [(class name, difficult, xyxy box in 0-based pixel-edge coordinates)])."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml_path} is not valid XML: {err}") from err
    size = root.find("size")
    if size is None:
        raise ValueError(f"{xml_path}: <size> is missing")
    width, height = int(float(_text(size, "width", xml_path))), int(float(_text(size, "height", xml_path)))
    objects = []
    for obj in root.iter("object"):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: an <object> has no <bndbox>")
        x1, y1, x2, y2 = (float(_text(box, k, xml_path)) for k in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() == "1"
        # VOC pixels are 1-based and inclusive: xmin=1, xmax=W spans the whole width
        objects.append((_text(obj, "name", xml_path), is_difficult, [x1 - 1, y1 - 1, x2, y2]))
    return width, height, objects


def read_image_set(root: Path, year: str, split: str) -> list[str]:
    path = root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"image set {path} not found (dataset.root={root}); expected VOCdevkit layout "
            f"VOC{year}/ImageSets/Main/{split}.txt, VOC{year}/Annotations/, VOC{year}/JPEGImages/"
        )
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


class VocDetection(DetectionDataset):
    """The images of ``split`` in each of ``years`` under a ``VOCdevkit`` folder.

    Image ids are 1..N in reading order; ``names[image_id]`` gives ``VOC<year>/<file id>``.
    ``difficult`` objects are not trained on unless ``use_difficult``; they are always in
    the ground truth as ignore regions (COCO-style stats: crowd; VOC AP: difficult).
    """

    def __init__(
        self,
        root: Path,
        years: Sequence[str | int],
        split: str,
        transforms: A.Compose | None = None,
        *,
        class_names: Sequence[str] = VOC_CLASSES,
        use_difficult: bool = False,
        check_images: bool = True,
    ) -> None:
        root = Path(root)
        source = f"{root} VOC{'+'.join(map(str, years))} {split}"
        for year in map(str, years):  # a missing image set is a layout error, not a data problem
            read_image_set(root, year, split)
        findings = inspect_voc(root, list(years), split, list(class_names), read_images=False)
        if not check_images:  # the caller checks the image files (and may leave bad ones out)
            findings = [f for f in findings if f.check != "image file"]
        raise_on_errors(findings, source)
        label_of = {name: i + 1 for i, name in enumerate(class_names)}
        self.names, self.voc_ground_truth = {}, {}
        columns: dict[str, list] = {key: [] for key in ("ids", "heights", "widths", "files", "counts")}
        boxes_all, labels_all, ignored_all, clipped, dropped = [], [], [], 0, 0
        for year in map(str, years):
            for file_id in read_image_set(root, year, split):
                image_id = len(columns["ids"]) + 1
                width, height, objects = parse_voc_xml(root / f"VOC{year}" / "Annotations" / f"{file_id}.xml")
                boxes, keep, changed = clip_boxes(np.asarray([box for _, _, box in objects]), width, height)
                clipped, dropped = clipped + changed, dropped + int((~keep).sum())
                labels = np.asarray([label_of[name] for name, _, _ in objects], np.int64)[keep]
                difficult = np.asarray([d for _, d, _ in objects], bool)[keep]
                boxes = boxes[keep]
                for key, value in zip(
                    columns, (image_id, height, width, f"VOC{year}/JPEGImages/{file_id}.jpg", len(boxes)), strict=True
                ):
                    columns[key].append(value)
                boxes_all.append(boxes)
                labels_all.append(labels)
                ignored_all.append(difficult & (not use_difficult))
                self.names[image_id] = f"VOC{year}/{file_id}"
                inclusive = boxes.astype(float) - [0, 0, 1, 1]  # VOC AP counts pixels inclusively
                self.voc_ground_truth[image_id] = VocGroundTruth(inclusive, labels - 1, difficult)
        index = DetectionIndex.build(
            columns["ids"],
            columns["heights"],
            columns["widths"],
            columns["files"],
            columns["counts"],
            np.concatenate(boxes_all) if boxes_all else np.zeros((0, 4)),
            np.concatenate(labels_all) if labels_all else np.zeros(0),
            np.concatenate(ignored_all) if ignored_all else np.zeros(0),
        )
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
        super().__init__(
            index,
            root,
            category_ids=list(range(1, len(class_names) + 1)),
            class_names=class_names,
            ground_truth=lambda: _in_memory_coco(_ground_truth_dataset(index, self.voc_ground_truth, categories)),
            transforms=transforms,
            source=source,
        )
        if clipped or dropped:
            log.warning(
                "%s: clipped %d boxes to their image, dropped %d boxes under one pixel", source, clipped, dropped
            )


def _ground_truth_dataset(index: DetectionIndex, voc: dict[int, VocGroundTruth], categories: list[dict]) -> dict:
    """COCO-format ground truth: every box, difficult ones as crowd (pycocotools' ignore regions)."""
    images, annotations = [], []
    for i in range(len(index)):
        image_id = int(index.image_ids[i])
        images.append(
            {
                "id": image_id,
                "width": int(index.widths[i]),
                "height": int(index.heights[i]),
                "file_name": index.file_name(i),
            }
        )
        gt = voc[image_id]
        boxes = gt.boxes + [0, 0, 1, 1]  # back from VOC's inclusive pixels to edges
        annotations += _coco_annotations(image_id, boxes, gt.labels + 1, gt.difficult, first_id=len(annotations) + 1)
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_annotations(
    image_id: int, boxes: np.ndarray, labels: np.ndarray, difficult: np.ndarray, first_id: int
) -> list[dict]:
    rows = []
    for k, (box, label, is_difficult) in enumerate(
        zip(boxes.tolist(), labels.tolist(), difficult.tolist(), strict=True)
    ):
        w, h = box[2] - box[0], box[3] - box[1]
        rows.append(
            {
                "id": first_id + k,
                "image_id": image_id,
                "category_id": label,
                "bbox": [box[0], box[1], w, h],
                "area": w * h,
                "iscrowd": int(is_difficult),  # pycocotools' only way to mark a box as "ignore"
            }
        )
    return rows


def _in_memory_coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def inspect_voc(
    root: Path,
    years: list,
    split: str,
    class_names: list[str],
    *,
    read_images: bool = True,
    max_pixels: int = MAX_PIXELS,
) -> list[Finding]:
    """Check a VOCdevkit split: image sets, XML files, boxes, class names and images."""
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
            try:
                width, height, objects = parse_voc_xml(xml_path)
            except (OSError, ValueError) as err:
                findings.append(Finding(ERROR, "annotation file", f"{xml_path}: {err}"))
                width = height = objects = None
            if read_images:
                size = (width, height) if width else None
                problem = image_file_problem(image_path, recorded_size=size, max_pixels=max_pixels)
            else:
                problem = None if image_path.is_file() else "missing"
            if problem:
                findings.append(Finding(ERROR, "image file", f"{image_path} is {problem}"))
            if objects is None:
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


def save_palette_png(mask: np.ndarray, path: Path) -> None:
    """Write a class-index mask as a VOC palette PNG, atomically: a temporary file in the same
    folder renamed into place, so processes writing the same image never leave a torn file."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    image.save(tmp)
    os.replace(tmp, path)
