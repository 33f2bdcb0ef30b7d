"""VOCdevkit loading: years and splits, 1-based boxes, difficult objects, evaluation with both metrics."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.data.doctor import DatasetError
from tasks.data.formats.voc import VocDataModule, VocDetection
from tasks.data.shapes import SHAPE_CLASSES
from tasks.evaluation.detection_evaluator import detection_evaluator
from tests.support import TINY_SHAPES


def _objects(xml_path: Path) -> list[tuple[str, int, list[int]]]:
    root = ET.parse(xml_path).getroot()
    return [
        (
            o.findtext("name"),
            int(o.findtext("difficult")),
            [int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")],
        )
        for o in root.iter("object")
    ]


def test_years_and_splits_combine(shapes_voc_root: Path) -> None:
    train = VocDetection(shapes_voc_root, [2007, 2012], "trainval", class_names=SHAPE_CLASSES)
    test = VocDetection(shapes_voc_root, [2007], "test", class_names=SHAPE_CLASSES)
    assert len(train) == TINY_SHAPES.num_train and len(test) == TINY_SHAPES.num_val
    assert {name.split("/")[0] for name in train.names.values()} == {"VOC2007", "VOC2012"}


def test_boxes_are_converted_from_one_based_pixels_and_difficult_is_not_trained(shapes_voc_root: Path) -> None:
    dataset = VocDetection(shapes_voc_root, [2007, 2012], "trainval", class_names=SHAPE_CLASSES)
    difficult_seen = 0
    for image_id, name in dataset.names.items():
        year, file_id = name.split("/")
        objects = _objects(shapes_voc_root / year / "Annotations" / f"{file_id}.xml")
        record = dataset.records[image_id - 1]
        kept = [(n, box) for n, d, box in objects if not d]
        expected = np.array([[x1 - 1, y1 - 1, x2, y2] for _, (x1, y1, x2, y2) in kept], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(record.boxes, expected)
        assert [SHAPE_CLASSES[label - 1] for label in record.labels] == [n for n, _ in kept]
        difficult_seen += sum(d for _, d, _ in objects)
        crowd = [a for a in dataset.ground_truth().imgToAnns[image_id] if a["iscrowd"]]
        assert len(crowd) == sum(d for _, d, _ in objects)  # difficult boxes are ignore regions in evaluation
    assert difficult_seen > 0


def test_use_difficult_trains_on_them(shapes_voc_root: Path) -> None:
    strict = VocDetection(shapes_voc_root, [2007, 2012], "trainval", class_names=SHAPE_CLASSES)
    loose = VocDetection(shapes_voc_root, [2007, 2012], "trainval", class_names=SHAPE_CLASSES, use_difficult=True)
    assert sum(len(r.boxes) for r in loose.records) > sum(len(r.boxes) for r in strict.records)


def test_perfect_predictions_score_one_on_both_metrics(shapes_voc_root: Path) -> None:
    datamodule = VocDataModule(shapes_voc_root, class_names=SHAPE_CLASSES, num_workers=0, augment="none")
    datamodule.setup()
    evaluator = detection_evaluator(**datamodule.evaluation_inputs())
    for record in datamodule.val_set.records:
        gt = datamodule.val_set.voc_ground_truth[record.image_id]
        boxes = torch.tensor(gt.boxes + [0, 0, 1, 1], dtype=torch.float32).reshape(-1, 4)
        detections = {"boxes": boxes, "labels": torch.tensor(gt.labels + 1), "scores": torch.ones(len(boxes))}
        evaluator.update([detections], [{"image_id": record.image_id}])
    stats = evaluator.compute().scalars
    assert stats["voc07_map"] == pytest.approx(1.0) and stats["voc_map"] == pytest.approx(1.0)
    assert stats["map"] == pytest.approx(1.0)


def test_unknown_class_and_missing_image_stop_with_the_file_names(shapes_voc_root: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "VOCdevkit"
    shutil.copytree(shapes_voc_root, root)
    first = (root / "VOC2007/ImageSets/Main/test.txt").read_text().split()[0]
    xml_path = root / "VOC2007" / "Annotations" / f"{first}.xml"
    xml_path.write_text(
        xml_path.read_text()
        .replace("<name>circle</name>", "<name>ellipse</name>", 1)
        .replace("<name>square</name>", "<name>ellipse</name>", 1)
        .replace("<name>triangle</name>", "<name>ellipse</name>", 1)
        .replace("<name>cross</name>", "<name>ellipse</name>", 1)
    )
    (root / "VOC2007" / "JPEGImages" / f"{first}.jpg").unlink()
    with pytest.raises(DatasetError) as info:
        VocDetection(root, [2007], "test", class_names=SHAPE_CLASSES)
    message = str(info.value)
    assert "'ellipse'" in message and str(xml_path) in message and f"{first}.jpg is missing" in message


def test_missing_image_set_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "VOC2007").mkdir()
    with pytest.raises(FileNotFoundError, match="VOC2007/ImageSets/Main/trainval.txt not found"):
        VocDataModule(tmp_path, train_years=[2007]).setup()


def test_malformed_xml_names_file_line_and_column(shapes_voc_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(shapes_voc_root, tmp_path / "VOCdevkit"))
    first = (root / "VOC2007/ImageSets/Main/test.txt").read_text().split()[0]
    xml_path = root / "VOC2007" / "Annotations" / f"{first}.xml"
    xml_path.write_text("<annotation>\n  <size><width>64</width>\n  <height>64</height></size\n</annotation>\n")
    with pytest.raises(DatasetError) as info:
        VocDetection(root, [2007], "test", class_names=SHAPE_CLASSES)
    message = str(info.value)
    assert f"{xml_path} is not valid XML" in message and "line 4, column" in message, message


def test_png_and_tif_images_are_found_by_their_id(shapes_voc_root: Path, tmp_path: Path) -> None:
    from PIL import Image

    root = Path(shutil.copytree(shapes_voc_root, tmp_path / "VOCdevkit"))
    ids = (root / "VOC2007/ImageSets/Main/test.txt").read_text().split()
    folder = root / "VOC2007" / "JPEGImages"
    for file_id, suffix in zip(ids[:2], (".png", ".tif"), strict=True):
        with Image.open(folder / f"{file_id}.jpg") as image:
            image.save(folder / f"{file_id}{suffix}")
        (folder / f"{file_id}.jpg").unlink()
    dataset = VocDetection(root, [2007], "test", class_names=SHAPE_CLASSES)
    assert [Path(r.path).name for r in dataset.records][:2] == [f"{ids[0]}.png", f"{ids[1]}.tif"]
    assert dataset[0][0].shape[0] == 3 and dataset[1][0].shape[0] == 3
