"""Bad image files are found at start-up, never in the middle of an epoch: the run stops with a
report naming each one, or leaves them out with ``dataset.skip_bad_images=true``."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

import tasks.data.bad_images as bad_images
from tasks.data.doctor import DatasetError
from tasks.data.formats.coco import CocoDataModule
from tasks.data.images import read_rgb
from tasks.data.segmentation import VocSegDataModule
from tasks.data.shapes import SHAPE_CLASSES
from tests.support import jpeg_file, run_script, truncate, write_coco_folder


def _coco_with_bad_files(root: Path) -> list[Path]:
    """8 train and 4 val images (64x48 JPEGs); four train files spoiled: missing, truncated,
    EXIF-rotated against their recorded size, and a decompression bomb."""
    for split, count in (("train2017", 8), ("val2017", 4)):
        images = [{"id": i, "file_name": f"{i:03d}.jpg", "width": 64, "height": 48} for i in range(1, count + 1)]
        annotations = [{"image_id": i, "category_id": 3, "bbox": [4, 4, 20, 20]} for i in range(1, count + 1)]
        write_coco_folder(root, images, annotations, split)
    folder = root / "train2017"
    (folder / "002.jpg").unlink()
    truncate(folder / "003.jpg")
    jpeg_file(folder / "004.jpg", (64, 48), orientation=6)
    (folder / "005.jpg").unlink()
    Image.new("1", (12_000, 8_000)).save(folder / "005.jpg", format="PNG")  # a bomb, whatever its name
    return [folder / f"00{i}.jpg" for i in (2, 3, 4, 5)]


def _datamodule(root: Path, **options) -> CocoDataModule:
    return CocoDataModule(root, batch_size=2, num_workers=0, cache_dir=root / "cache", **options)


def test_start_up_stops_naming_every_bad_file(tmp_path: Path) -> None:
    bad = _coco_with_bad_files(tmp_path)
    with pytest.raises(DatasetError) as info:
        _datamodule(tmp_path).setup()
    message = str(info.value)
    assert "4 bad image file(s)" in message and "dataset.skip_bad_images=true" in message
    for path, problem in zip(bad, ("missing", "truncated", "EXIF-rotated", "refused before decoding"), strict=True):
        line = next(line for line in message.splitlines() if str(path) in line)
        assert problem in line, line


def test_skip_bad_images_leaves_them_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = _coco_with_bad_files(tmp_path)
    datamodule = _datamodule(tmp_path, skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        datamodule.setup()
    assert all(str(path) in caplog.text for path in bad) and "left out of this run" in caplog.text
    train = datamodule.train_set
    assert len(train) == 4 and [train.index.file_name(i) for i in range(4)] == [
        "001.jpg",
        "006.jpg",
        "007.jpg",
        "008.jpg",
    ]
    assert [train.records[i].image_id for i in range(4)] == [1, 6, 7, 8]  # each keeps its own boxes and id
    assert all(len(train.records[i].boxes) == 1 for i in range(4))
    assert len(datamodule.val_set) == 4
    batches = list(datamodule.train_dataloader())  # a whole epoch without a bad file
    assert sorted(t["image_id"] for _, targets in batches for t in targets) == [1, 6, 7, 8]
    listed = next((tmp_path / "cache").glob("image-checks-*-bad.txt")).read_text().splitlines()
    assert len(listed) == 4


def test_results_are_remembered_until_a_file_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _coco_with_bad_files(tmp_path)
    _datamodule(tmp_path, skip_bad_images=True).setup()
    checked: list[str] = []
    original = bad_images._problem
    monkeypatch.setattr(bad_images, "_problem", lambda item: checked.append(item[0]) or original(item))
    _datamodule(tmp_path, skip_bad_images=True).setup()
    assert checked == []  # nothing decoded again
    jpeg_file(tmp_path / "train2017" / "003.jpg", (64, 48))  # repaired
    datamodule = _datamodule(tmp_path, skip_bad_images=True)
    datamodule.setup()
    assert checked == [str(tmp_path / "train2017" / "003.jpg")] and len(datamodule.train_set) == 5


@pytest.mark.parametrize("in_place", [False, True], ids=["new-file", "overwritten"])
def test_a_same_size_replacement_with_its_time_kept_is_checked_again(tmp_path: Path, in_place: bool) -> None:
    """``cp -p``, ``rsync -a`` and ``tar x`` keep a file's modification time: a corrupted copy of the
    same size must still be decoded again, not served from the remembered result."""
    path = jpeg_file(tmp_path / "a.jpg", (64, 48))
    items, cache = [(path, (64, 48), "")], tmp_path / "checks.json"
    assert bad_images.find_bad_images(items, max_pixels=80_000_000, cache_file=cache) == {}
    stat = path.stat()
    corrupted = bytes(64) + path.read_bytes()[64:]  # same size, its header zeroed
    if in_place:  # the same file rewritten, as cp -p onto an existing file does
        path.write_bytes(corrupted)
    else:  # a new file in its place, as rsync -a and tar x leave it
        replacement = tmp_path / "replacement.jpg"
        replacement.write_bytes(corrupted)
        replacement.replace(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    assert list(bad_images.find_bad_images(items, max_pixels=80_000_000, cache_file=cache)) == [0]


def test_a_newer_checker_checks_every_file_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = jpeg_file(tmp_path / "a.jpg", (64, 48))
    items, cache = [(path, (64, 48), "")], tmp_path / "checks.json"
    bad_images.find_bad_images(items, max_pixels=80_000_000, cache_file=cache)
    checked: list[str] = []
    original = bad_images._problem
    monkeypatch.setattr(bad_images, "_problem", lambda item: checked.append(item[0]) or original(item))
    bad_images.find_bad_images(items, max_pixels=80_000_000, cache_file=cache)
    assert checked == []  # remembered
    monkeypatch.setattr(bad_images, "CHECKER_VERSION", bad_images.CHECKER_VERSION + 1)
    bad_images.find_bad_images(items, max_pixels=80_000_000, cache_file=cache)
    assert checked == [str(path)]


def test_many_files_are_checked_by_a_process_pool(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = _coco_with_bad_files(tmp_path)
    items = [(path, (64, 48), "") for path in sorted((tmp_path / "train2017").iterdir())] + [(bad[0], (64, 48), "")]
    alone = bad_images.find_bad_images(items, max_pixels=80_000_000, workers=1)
    pools: list[int] = []

    class CountingPool(ProcessPoolExecutor):
        def map(self, function, *iterables, **options):
            jobs = list(iterables[0])
            pools.append(len(jobs))
            return super().map(function, jobs, **options)

    monkeypatch.setattr(bad_images, "ProcessPoolExecutor", CountingPool)
    monkeypatch.setattr(bad_images, "_POOL_THRESHOLD", 1)
    pooled = bad_images.find_bad_images(items, max_pixels=80_000_000, workers=2)
    assert pools == [len(items)]  # every file went through the pool, none was checked here
    assert pooled == alone and sorted(alone) == [1, 2, 3, 7]  # positions of 003, 004, 005 (sorted) and 002


def test_max_pixels_is_enforced_when_loading(tmp_path: Path) -> None:
    path = jpeg_file(tmp_path / "a.jpg", (64, 48))
    assert read_rgb(path, max_pixels=64 * 48).shape == (48, 64, 3)
    with pytest.raises(ValueError, match="over max_pixels=3071"):
        read_rgb(path, max_pixels=64 * 48 - 1)


def test_segmentation_start_up_stops_or_skips(shapes_voc_root: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(shapes_voc_root, tmp_path / "VOCdevkit"))
    first = (root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split()[0]
    image = truncate(root / "VOC2012" / "JPEGImages" / f"{first}.jpg")
    options = dict(
        class_names=("background", *SHAPE_CLASSES),
        train_years=(2012,),
        val_years=(2007,),
        use_sbd=False,
        num_workers=0,
        cache_dir=tmp_path / "cache",
    )
    with pytest.raises(DatasetError, match=f"{image} is unreadable"):
        VocSegDataModule(root, **options).setup()
    datamodule = VocSegDataModule(root, skip_bad_images=True, **options)
    datamodule.setup()
    assert image not in [record.image for record in datamodule.train_set.records]
    assert (
        len(datamodule.train_set)
        == len(list((root / "VOC2012" / "ImageSets" / "Segmentation" / "train.txt").read_text().split())) - 1
    )


@pytest.mark.slow
def test_training_command_stops_cleanly_on_a_bad_file(tmp_path: Path) -> None:
    bad = _coco_with_bad_files(tmp_path)
    result = run_script(
        "train.py",
        [
            "dataset=coco",
            "~recipe",
            "backbone=resnet18",
            "backbone.weights=none",
            f"dataset.root={tmp_path}",
            f"paths.log_dir={tmp_path}/out",
        ],
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output and all(str(path) in output for path in bad)
