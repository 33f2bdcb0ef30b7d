"""PASCAL VOC detection data: ``VOCdevkit/VOC<year>/{Annotations,JPEGImages,ImageSets/Main}``."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tasks.common.progress import progress
from tasks.data.augment import Pipeline
from tasks.data.detection_dataset import DetectionDataset
from tasks.data.doctor import ERROR, INFO, Finding, raise_on_errors
from tasks.data.formats.labelled_images import LabelledImage, LabelledObject, labelled_findings, labelled_index
from tasks.data.formats.labelled_module import LabelledDataModule
from tasks.data.ground_truth import coco_ground_truth
from tasks.data.images import IMAGE_SUFFIXES, MAX_PIXELS, upright_size

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


def _number(node: ET.Element, tag: str, xml_path: Path) -> float:
    text = _text(node, tag, xml_path)
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{xml_path}: <{tag}> is {text!r}, not a number") from None


def parse_voc_xml(xml_path: Path, *, one_based: bool = True) -> tuple[int, int, list[LabelledObject]]:
    """(width, height, objects with xyxy boxes in 0-based pixel-edge coordinates). ``one_based``:
    the file counts pixels from 1, inclusively, as VOC's own files do (xmin=1, xmax=W spans the
    whole width); otherwise from 0, as many labelling tools write. Width and height are 0 where
    the file leaves them out or records 0 (the image's header gives them)."""
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml_path} is not valid XML: {err}") from err
    size = root.find("size")
    width = height = 0
    if size is not None and size.find("width") is not None:
        width, height = int(_number(size, "width", xml_path)), int(_number(size, "height", xml_path))
    objects = []
    for k, obj in enumerate(root.iter("object")):
        box = obj.find("bndbox")
        if box is None:
            raise ValueError(f"{xml_path}: object {k} has no <bndbox>")
        x1, y1, x2, y2 = (_number(box, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax"))
        difficult = obj.find("difficult")
        is_difficult = difficult is not None and (difficult.text or "0").strip() == "1"
        # 1-based inclusive: the first pixel column starts at edge x1 - 1, the last one ends at edge x2
        corners = [x1 - 1, y1 - 1, x2, y2] if one_based else [x1, y1, x2, y2]
        objects.append(LabelledObject(_text(obj, "name", xml_path), corners, is_difficult, row=f"object {k}"))
    return width, height, objects


def read_labelled_xml(image: LabelledImage, *, one_based: bool) -> None:
    """Fill ``image`` from its XML file (an unreadable file sets ``error``); a size the XML lacks
    comes from the image's header."""
    try:
        width, height, image.objects = parse_voc_xml(image.annotation_path, one_based=one_based)
    except (OSError, ValueError) as err:
        image.objects, image.error = None, str(err)
        return
    if width > 0 and height > 0:
        image.size = (width, height)
        return
    try:
        with Image.open(image.image_path) as opened:
            image.size = upright_size(opened)
    except OSError:  # the image check reports the file
        image.objects = None


def zero_based_hint(images: Sequence[LabelledImage]) -> list[Finding]:
    """1-based files never put a box at pixel 0: when read as 1-based and some do, say so."""
    starts = sum(obj.box[0] == -1 or obj.box[1] == -1 for image in images for obj in image.objects or [])
    if not starts:
        return []
    message = (
        f"{starts} boxes start at pixel 0, which 1-based VOC files never do: these files are probably 0-based "
        "(the boxes would grow a pixel left and up); pass dataset.one_based=false"
    )
    return [Finding(INFO, "coordinate origin", message)]


def read_image_set(root: Path, year: str, split: str) -> list[str]:
    path = root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"image set {path} not found (dataset.root={root}); expected VOCdevkit layout "
            f"VOC{year}/ImageSets/Main/{split}.txt, VOC{year}/Annotations/, VOC{year}/JPEGImages/"
        )
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _images_by_stem(folder: Path) -> dict[str, str]:
    """File name of each image in ``folder`` by its stem (``.jpg`` first where several share one):
    VOC-layout exports also hold ``.png`` and ``.tif`` images."""
    names: dict[str, str] = {}
    if folder.is_dir():
        for name in sorted(os.listdir(folder), key=lambda n: not n.lower().endswith(".jpg")):
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                names.setdefault(Path(name).stem, name)
    return names


def read_voc_split(
    root: Path, years: Sequence[str | int], split: str, *, one_based: bool = True
) -> tuple[list[LabelledImage], list[Finding]]:
    """Every image of ``split`` in each year, its XML parsed; a missing image set is a finding."""
    images, findings = [], []
    for year in map(str, years):
        try:
            file_ids = read_image_set(root, year, split)
        except FileNotFoundError as err:
            findings.append(Finding(ERROR, "image set", str(err)))
            continue
        image_names = _images_by_stem(root / f"VOC{year}" / "JPEGImages")
        for file_id in progress(file_ids, len(file_ids), f"reading VOC{year} {split} annotations"):
            file_name = f"VOC{year}/JPEGImages/{image_names.get(file_id, file_id + '.jpg')}"
            xml_path = root / f"VOC{year}" / "Annotations" / f"{file_id}.xml"
            image = LabelledImage(root / file_name, file_name, xml_path)
            read_labelled_xml(image, one_based=one_based)
            images.append(image)
    return images, findings + (zero_based_hint(images) if one_based else [])


def inspect_voc(
    root: Path,
    years: list,
    split: str,
    class_names: list[str],
    *,
    read_images: bool = True,
    max_pixels: int = MAX_PIXELS,
    one_based: bool = True,
) -> list[Finding]:
    """Check a VOCdevkit split: image sets, XML files, boxes, class names and images."""
    images, findings = read_voc_split(root, years, split, one_based=one_based)
    return findings + labelled_findings(images, class_names, read_images=read_images, max_pixels=max_pixels)


def add_voc_evaluation(dataset: DetectionDataset) -> DetectionDataset:
    """``names[image_id]`` (``VOC<year>/<file id>``) and ``voc_ground_truth`` (every box, difficult ones
    flagged, in VOC AP's inclusive pixels) on a VOCdevkit split."""
    index = dataset.index
    dataset.names, dataset.voc_ground_truth = {}, {}
    for i in range(len(index)):
        image_id, start, end = int(index.image_ids[i]), index.box_offsets[i], index.box_offsets[i + 1]
        year, _, file_name = index.file_name(i).split("/")
        dataset.names[image_id] = f"{year}/{Path(file_name).stem}"
        inclusive = np.asarray(index.boxes[start:end], float) - [0, 0, 1, 1]
        labels, difficult = np.asarray(index.labels[start:end]) - 1, np.asarray(index.ignored[start:end])
        dataset.voc_ground_truth[image_id] = VocGroundTruth(inclusive.reshape(-1, 4), labels, difficult)
    return dataset


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
        transforms: Pipeline | None = None,
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
        findings = labelled_findings(images, class_names, read_images=False)
        if not check_images:  # the caller checks the image files (and may leave bad ones out)
            findings = [f for f in findings if f.check != "image file"]
        raise_on_errors(findings, source)
        index = labelled_index(images, class_names, source, use_difficult=use_difficult)
        category_ids = list(range(1, len(class_names) + 1))
        super().__init__(
            index,
            root,
            category_ids=category_ids,
            class_names=class_names,
            ground_truth=lambda: coco_ground_truth(index, category_ids, class_names),
            transforms=transforms,
            source=source,
        )
        add_voc_evaluation(self)


class VocDataModule(LabelledDataModule):
    """PASCAL VOC under ``root`` (the ``VOCdevkit`` folder), e.g. VOC07+12 trainval / VOC07 test.

    Reports VOC07 11-point and VOC2010+ area mAP next to the COCO-style stats. ``class_names``,
    ``class_map`` and ``use_difficult`` as for every labelled format; ``one_based``: the XML
    files count pixels from 1 (VOC's own files) or from 0.
    """

    format_name = "a VOCdevkit folder holding VOC<year>/Annotations, VOC<year>/JPEGImages and VOC<year>/ImageSets/Main"

    def __init__(
        self,
        root: str | Path,
        *,
        train_years: Sequence[str | int] = (2007, 2012),
        train_split: str = "trainval",
        val_years: Sequence[str | int] = (2007,),
        val_split: str = "test",
        class_names: Sequence[str] | None = VOC_CLASSES,
        one_based: bool = True,
        **options,
    ) -> None:
        super().__init__(root, class_names=class_names, **options)
        self.image_sets = {"train": (list(train_years), train_split), "val": (list(val_years), val_split)}
        self.one_based = one_based

    def _read(self, split: str) -> tuple[list[LabelledImage], list[Finding]]:
        years, image_set = self.image_sets[split]
        for year in map(str, years):  # a missing image set is a layout error, not a data problem
            read_image_set(self.root, year, image_set)
        return read_voc_split(self.root, years, image_set, one_based=self.one_based)

    def _build_split(self, split: str, transforms: Pipeline | None, *, prepared: bool) -> DetectionDataset:
        return add_voc_evaluation(super()._build_split(split, transforms, prepared=prepared))

    def evaluation_inputs(self) -> dict:
        """Also each image's boxes with VOC's difficult flags: VOC AP is reported next to COCO's stats."""
        return {**super().evaluation_inputs(), "voc_ground_truth": self.val_set.voc_ground_truth}
