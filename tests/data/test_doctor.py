"""The dataset doctor names every seeded problem; training stops on errors and repairs what is safe."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tasks import PROJECT_ROOT
from tasks.data.doctor import ERROR, INFO, REPAIRED, DatasetError, check_num_classes
from tasks.data.formats.coco import CocoDetection, inspect_coco
from tests.support import write_coco_folder

IMAGES = [{"id": i, "width": 64, "height": 64} for i in range(1, 7)]
BROKEN = [
    {"id": 1, "image_id": 1, "category_id": 3, "bbox": [5, 5, 0, 10]},  # degenerate
    {"id": 2, "image_id": 2, "category_id": 7, "bbox": [50, 50, 40, 40]},  # leaves the 64x64 image
    {"id": 3, "image_id": 3, "category_id": 90, "bbox": [1, 1, 10, 10]},
    {"id": 3, "image_id": 4, "category_id": 3, "bbox": [1, 1, 10, 10]},  # duplicate id
    {"id": 0, "image_id": 5, "category_id": 3, "bbox": [1, 1, 10, 10]},  # zero id
    # image 6 has no annotations
]


def _seed(root: Path, split: str = "val2017") -> Path:
    ann_file = write_coco_folder(root, [dict(i) for i in IMAGES], [dict(a) for a in BROKEN], split)
    (root / split / "000000000004.png").unlink()  # missing
    (root / split / "000000000005.png").write_bytes(b"not a png")  # unreadable
    return ann_file


def test_every_seeded_problem_is_reported(tmp_path: Path) -> None:
    import json

    ann_file = _seed(tmp_path)
    findings = inspect_coco(json.loads(ann_file.read_text()), tmp_path / "val2017", str(ann_file))
    by_check = {}
    for f in findings:
        by_check.setdefault((f.severity, f.check), []).append(f.message)
    assert "annotation 1 bbox [5, 5, 0, 10]" in by_check[REPAIRED, "degenerate box"][0]
    assert "000000000002.png: annotation 2" in by_check[REPAIRED, "box outside image"][0]
    assert "id 3 is used 2 times" in by_check[ERROR, "duplicate annotation id"][0]
    assert "have id 0" in by_check[ERROR, "zero annotation id"][0]
    image_errors = " ".join(by_check[ERROR, "image file"])
    assert "000000000004.png (image_id 4) is missing" in image_errors
    assert "000000000005.png (image_id 5) is unreadable" in image_errors
    assert "000000000006.png (image_id 6)" in by_check[INFO, "image without annotations"][0]
    assert "[3, 7, 90]" in by_check[INFO, "category id gaps"][0]
    assert "num_classes=5" in check_num_classes(5, ["a", "b", "c"])[0].message


def test_training_start_stops_on_annotation_errors(tmp_path: Path) -> None:
    _seed(tmp_path)
    with pytest.raises(DatasetError) as info:
        CocoDetection(tmp_path / "val2017", tmp_path / "annotations/instances_val2017.json", check_images=False)
    message = str(info.value)
    assert "duplicate annotation id" in message and "zero annotation id" in message
    assert "000000000004.png" not in message  # image files are the datamodule's start-up check (test_bad_images)


def test_safe_problems_are_repaired_with_a_count(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_coco_folder(tmp_path, [dict(i) for i in IMAGES], [dict(a) for a in BROKEN[:3]])
    dataset = CocoDetection(tmp_path / "val2017", tmp_path / "annotations/instances_val2017.json")
    assert "clipped 1 boxes to their image, dropped 1 boxes under one pixel" in caplog.text
    assert dataset.records[0].boxes.shape == (0, 4)
    assert dataset.records[1].boxes.tolist() == [[50, 50, 64, 64]]


@pytest.mark.slow
def test_check_dataset_command_exits_nonzero_with_the_report(tmp_path: Path) -> None:
    _seed(tmp_path, "val2017")
    _seed(tmp_path, "train2017")
    result = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "tasks" / "check_dataset.py"),
            "dataset=coco",
            f"dataset.root={tmp_path}",
            "task.model.num_classes=5",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    for expected in (
        "[error] duplicate annotation id",
        "[error] zero annotation id",
        "is unreadable",
        "is missing",
        "[repaired] degenerate box",
        "[repaired] box outside image",
        "[info] image without annotations",
        "[info] category id gaps",
        "[error] class count",
        "error(s)",
    ):
        assert expected in result.stdout, expected


@pytest.mark.parametrize("bad_id", [[7], [7, 8], "7", None])
def test_malformed_annotation_ids_are_reported_not_crashed_on(bad_id: object) -> None:
    images = [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
        {"id": bad_id, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]},
    ]
    dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    findings = inspect_coco(dataset, Path("/nonexistent"), "x.json", read_images=False)
    assert [f.message for f in findings if f.check == "zero annotation id"] == ["x.json: 1 annotations have id None"]
