"""The doctor finds what only decoding (or the header) reveals: truncated JPEGs, decompression
bombs, EXIF-rotated images recorded at their unrotated size, unreadable masks; for every kind of
dataset config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from tasks.data.doctor import ERROR
from tasks.data.formats.coco import inspect_coco
from tasks.data.formats.voc import inspect_voc
from tasks.data.images import image_file_problem
from tasks.data.segmentation import VocSegDataModule
from tasks.data.shapes import SHAPE_CLASSES
from tests.support import jpeg_file, run_script, truncate


def test_truncated_jpeg_passes_verify_but_not_the_doctor(tmp_path: Path) -> None:
    path = truncate(jpeg_file(tmp_path / "cut.jpg"))
    with Image.open(path) as image:
        image.verify()  # PIL's own check misses it
    assert "unreadable (image file is truncated" in image_file_problem(path)
    assert image_file_problem(path, decode=False) is None  # the header alone is intact


def test_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    Image.new("1", (12_000, 8_000)).save(path)  # 96 MP in a file of a few kilobytes
    assert path.stat().st_size < 100_000
    problem = image_file_problem(path)
    assert problem.startswith("12000x8000 (96 MP), over max_pixels=80000000: refused before decoding")
    assert image_file_problem(path, max_pixels=100_000_000, decode=False) is None


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_image_recorded_at_its_unrotated_size(tmp_path: Path, orientation: int) -> None:
    path = jpeg_file(tmp_path / "rotated.jpg", (64, 48), orientation)  # stored 64x48, upright 48x64
    assert "EXIF-rotated: upright it is 48x64, but the annotation records the unrotated 64x48" in image_file_problem(
        path, recorded_size=(64, 48)
    )
    assert image_file_problem(path, recorded_size=(48, 64)) is None
    assert image_file_problem(jpeg_file(tmp_path / "plain.jpg", (64, 48), 3), recorded_size=(64, 48)) is None  # 180 deg


def test_coco_doctor_reports_each_file_fault(tmp_path: Path) -> None:
    folder = tmp_path / "val2017"
    folder.mkdir()
    jpeg_file(folder / "ok.jpg")
    truncate(jpeg_file(folder / "cut.jpg"))
    jpeg_file(folder / "rotated.jpg", orientation=6)
    Image.new("1", (12_000, 8_000)).save(folder / "bomb.png")
    names = ["ok.jpg", "cut.jpg", "rotated.jpg", "bomb.png"]
    images = [{"id": i, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names, 1)]
    images[3].update(width=12_000, height=8_000)
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 10, 10]} for i in range(1, 5)]
    dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "thing"}]}
    errors = {
        f.message.split(" (image_id")[0]: f.message for f in inspect_coco(dataset, folder, "x") if f.severity == ERROR
    }
    assert set(errors) == {str(folder / n) for n in names[1:]}
    assert "truncated" in errors[str(folder / "cut.jpg")]
    assert "EXIF-rotated" in errors[str(folder / "rotated.jpg")]
    assert "refused before decoding" in errors[str(folder / "bomb.png")]


def test_voc_doctor_checks_the_recorded_size(shapes_voc_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(shapes_voc_root, tmp_path / "VOCdevkit"))
    first = (root / "VOC2007" / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    image = root / "VOC2007" / "JPEGImages" / f"{first}.jpg"
    with Image.open(image) as opened:
        width, height = opened.size
    jpeg_file(image, (width, height - 10))  # its XML still records the old size
    findings = inspect_voc(root, [2007], "test", list(SHAPE_CLASSES))
    assert [f.message for f in findings if f.severity == ERROR] == [
        f"{image} is {width}x{height - 10}, but the annotation records {width}x{height}"
    ]


@pytest.mark.slow
def test_voc_seg_doctor_reports_unreadable_masks_and_truncated_images(shapes_voc_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(shapes_voc_root, tmp_path / "VOCdevkit"))
    masks = sorted((root / "VOC2012" / "SegmentationClass").iterdir())
    masks[0].write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    image = root / "VOC2012" / "JPEGImages" / f"{masks[1].stem}.jpg"
    truncate(image)
    datamodule = VocSegDataModule(
        root, class_names=("background", *SHAPE_CLASSES), train_years=(2007, 2012), val_years=(2007,), use_sbd=False
    )
    findings, class_names = datamodule.inspect(read_images=True)
    errors = [f.message for f in findings if f.severity == ERROR]
    assert class_names == ["background", *SHAPE_CLASSES]
    assert len(errors) == 2
    assert any(f"{masks[0]} is unreadable" in e for e in errors)
    assert any(f"{image} is unreadable (image file is truncated" in e for e in errors)

    # the command works for segmentation configs too, exits 1 and names both files
    names = ",".join(("background", *SHAPE_CLASSES))
    result = run_script(
        "check_dataset.py",
        [
            "task=segmentation",
            "dataset=voc_seg",
            f"dataset.root={root}",
            "dataset.train_years=[2007,2012]",
            "dataset.val_years=[2007]",
            "dataset.use_sbd=false",
            f"+dataset.class_names=[{names}]",
            f"hydra.run.dir={tmp_path}/run",
        ],
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert str(masks[0]) in result.stdout and str(image) in result.stdout and "2 error(s)" in result.stdout
