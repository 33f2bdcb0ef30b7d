"""PASCAL VOC detection data: ``VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}``."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import numpy as np

from tasks.data.detection import DetectionDataModule
from tasks.data.detection_dataset import DetectionDataset, clip_boxes
from tasks.data.detection_index import DetectionIndex
from tasks.data.doctor import ERROR, INFO, REPAIRED, Finding, raise_on_errors
from tasks.data.ground_truth import coco_ground_truth
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


@dataclass
class VocImage:
    """One image of a split as its XML file describes it (read once, for the checks and the index)."""

    year: str
    file_id: str
    xml_path: Path
    image_path: Path
    size: tuple[int, int] | None = None  # (width, height)
    objects: list[tuple[str, bool, list[float]]] | None = None  # None: the XML could not be read
    error: str | None = None


def read_voc_split(root: Path, years: Sequence[str | int], split: str) -> tuple[list[VocImage], list[Finding]]:
    """Every image of ``split`` in each year, its XML parsed; a missing image set is a finding."""
    images, findings = [], []
    for year in map(str, years):
        try:
            file_ids = read_image_set(root, year, split)
        except FileNotFoundError as err:
            findings.append(Finding(ERROR, "image set", str(err)))
            continue
        for file_id in file_ids:
            image = VocImage(
                year,
                file_id,
                root / f"VOC{year}" / "Annotations" / f"{file_id}.xml",
                root / f"VOC{year}" / "JPEGImages" / f"{file_id}.jpg",
            )
            try:
                width, height, image.objects = parse_voc_xml(image.xml_path)
                image.size = (width, height)
            except (OSError, ValueError) as err:
                image.error = str(err)
            images.append(image)
    return images, findings


def voc_findings(
    images: Sequence[VocImage], class_names: Sequence[str], *, read_images: bool = True, max_pixels: int = MAX_PIXELS
) -> list[Finding]:
    """The doctor's findings for read images: unreadable XML, image files, unknown classes, boxes."""
    findings: list[Finding] = []
    for image in images:
        if image.error:
            findings.append(Finding(ERROR, "annotation file", f"{image.xml_path}: {image.error}"))
        if read_images:
            problem = image_file_problem(image.image_path, recorded_size=image.size, max_pixels=max_pixels)
        else:
            problem = None if image.image_path.is_file() else "missing"
        if problem:
            findings.append(Finding(ERROR, "image file", f"{image.image_path} is {problem}"))
        if image.objects is None:
            continue
        if not image.objects:
            findings.append(Finding(INFO, "image without annotations", str(image.xml_path)))
        width, height = image.size
        for k, (name, _difficult, (x1, y1, x2, y2)) in enumerate(image.objects):
            where = f"{image.xml_path} object {k}"
            if name not in class_names:
                findings.append(
                    Finding(ERROR, "unknown category", f"{where}: class {name!r} not in {list(class_names)}")
                )
            if x2 - x1 <= 0 or y2 - y1 <= 0:
                findings.append(Finding(REPAIRED, "degenerate box", f"{where}: box {[x1, y1, x2, y2]} (dropped)"))
            elif x1 < 0 or y1 < 0 or x2 > width or y2 > height:
                message = f"{where}: box leaves the {width}x{height} image (clipped)"
                findings.append(Finding(REPAIRED, "box outside image", message))
    return findings


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
    images, findings = read_voc_split(root, years, split)
    return findings + voc_findings(images, class_names, read_images=read_images, max_pixels=max_pixels)


@dataclass
class VocIndex:
    """A split's detection index, with what VOC evaluation needs besides it."""

    index: DetectionIndex
    names: dict[int, str]  # image id -> VOC<year>/<file id>
    voc_ground_truth: dict[int, VocGroundTruth]  # every box, difficult ones flagged, as VOC AP scores them
    clipped: int = 0
    dropped: int = 0


def voc_index(images: Sequence[VocImage], class_names: Sequence[str], *, use_difficult: bool) -> VocIndex:
    """Image ids 1..N in reading order; boxes clipped to their image, those under one pixel dropped;
    difficult boxes are ignore regions unless ``use_difficult``."""
    label_of = {name: i + 1 for i, name in enumerate(class_names)}
    names, voc_ground_truth, clipped, dropped = {}, {}, 0, 0
    columns: dict[str, list] = {key: [] for key in ("ids", "heights", "widths", "files", "counts")}
    boxes_all, labels_all, ignored_all = [], [], []
    for image in images:
        image_id = len(columns["ids"]) + 1
        (width, height), objects = image.size, image.objects
        boxes, keep, changed = clip_boxes(np.asarray([box for _, _, box in objects]), width, height)
        clipped, dropped = clipped + changed, dropped + int((~keep).sum())
        labels = np.asarray([label_of[name] for name, _, _ in objects], np.int64)[keep]
        difficult = np.asarray([d for _, d, _ in objects], bool)[keep]
        boxes = boxes[keep]
        file_name = f"VOC{image.year}/JPEGImages/{image.file_id}.jpg"
        for key, value in zip(columns, (image_id, height, width, file_name, len(boxes)), strict=True):
            columns[key].append(value)
        boxes_all.append(boxes)
        labels_all.append(labels)
        ignored_all.append(difficult & (not use_difficult))
        names[image_id] = f"VOC{image.year}/{image.file_id}"
        inclusive = boxes.astype(float) - [0, 0, 1, 1]  # VOC AP counts pixels inclusively
        voc_ground_truth[image_id] = VocGroundTruth(inclusive, labels - 1, difficult)
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
    return VocIndex(index, names, voc_ground_truth, clipped, dropped)


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
        images, _ = read_voc_split(root, years, split)
        findings = voc_findings(images, class_names, read_images=False)
        if not check_images:  # the caller checks the image files (and may leave bad ones out)
            findings = [f for f in findings if f.check != "image file"]
        raise_on_errors(findings, source)
        split_index = voc_index(images, class_names, use_difficult=use_difficult)
        self.names, self.voc_ground_truth = split_index.names, split_index.voc_ground_truth
        category_ids = list(range(1, len(class_names) + 1))
        super().__init__(
            split_index.index,
            root,
            category_ids=category_ids,
            class_names=class_names,
            ground_truth=lambda: coco_ground_truth(split_index.index, category_ids, class_names),
            transforms=transforms,
            source=source,
        )
        if split_index.clipped or split_index.dropped:
            log.warning(
                "%s: clipped %d boxes to their image, dropped %d boxes under one pixel",
                source,
                split_index.clipped,
                split_index.dropped,
            )


class VocDataModule(DetectionDataModule):
    """PASCAL VOC under ``root`` (the ``VOCdevkit`` folder), e.g. VOC07+12 trainval / VOC07 test.

    Reports VOC07 11-point and VOC2010+ area mAP next to the COCO-style stats.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train_years: Sequence[str | int] = (2007, 2012),
        train_split: str = "trainval",
        val_years: Sequence[str | int] = (2007,),
        val_split: str = "test",
        class_names: Sequence[str] = VOC_CLASSES,
        use_difficult: bool = False,
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        self.splits = {"train": (list(train_years), train_split), "val": (list(val_years), val_split)}
        self.voc_class_names = list(class_names)
        self.use_difficult = use_difficult

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        return list(range(1, len(self.voc_class_names) + 1)), list(self.voc_class_names)

    def _build_split(self, split: str, transforms: A.Compose | None, *, prepared: bool) -> DetectionDataset:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected a VOCdevkit folder holding "
                "VOC<year>/Annotations, VOC<year>/JPEGImages and VOC<year>/ImageSets/Main"
            )
        if self.masks:
            raise ValueError(
                "PASCAL VOC detection data (dataset=voc) carries no instance masks; instance segmentation "
                "reads COCO-format instances jsons with polygons or RLE (dataset=coco or dataset=coco_custom)"
            )
        years, image_set = self.splits[split]
        # difficult objects are never trained on in evaluation splits; they are ignore regions there
        use_difficult = self.use_difficult and split == "train"
        return VocDetection(
            self.root,
            years,
            image_set,
            transforms,
            class_names=self.voc_class_names,
            use_difficult=use_difficult,
            check_images=False,
        )

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        findings = []
        for years, image_set in self.splits.values():
            findings += inspect_voc(
                self.root, years, image_set, self.voc_class_names, read_images=read_images, max_pixels=max_pixels
            )
        return findings, self.voc_class_names

    def evaluation_inputs(self) -> dict:
        """Also each image's boxes with VOC's difficult flags: VOC AP is reported next to COCO's stats."""
        return {**super().evaluation_inputs(), "voc_ground_truth": self.val_set.voc_ground_truth}
