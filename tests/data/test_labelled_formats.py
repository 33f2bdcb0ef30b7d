"""Labelling tools' layouts: a folder of VOC XML files and the YOLO layout, their faults, class
names and maps, the coordinate origin, and a validation split drawn when the data has none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tasks.data.doctor import ERROR, INFO, REPAIRED, WARNING, DatasetError, split_summary
from tasks.data.formats.coco import CocoDataModule
from tasks.data.formats.voc_folder import VocFolderDataModule
from tasks.data.formats.yolo import YoloDataModule
from tasks.data.shapes import SHAPE_CLASSES, ensure_shapes
from tasks.evaluation.detection_evaluator import detection_evaluator
from tests.support import TINY_SHAPES, compose_config, run_script

OPTIONS = {"num_workers": 0, "augment": "none", "batch_size": 2}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny shapes in all three layouts: the same pixels and boxes."""
    base = tmp_path_factory.mktemp("layouts")
    return {layout: ensure_shapes(base / layout, TINY_SHAPES, layout) for layout in ("coco", "voc_folder", "yolo")}


def _modules(layouts: dict[str, Path]) -> dict:
    coco = CocoDataModule(
        layouts["coco"],
        train_images="train2017",
        train_annotations="annotations/instances_train2017.json",
        val_images="val2017",
        val_annotations="annotations/instances_val2017.json",
        **OPTIONS,
    )
    voc = VocFolderDataModule(
        layouts["voc_folder"], train_dir="train", val_dir="val", class_names=SHAPE_CLASSES, **OPTIONS
    )
    return {"coco": coco, "voc_folder": voc, "yolo": YoloDataModule(layouts["yolo"], **OPTIONS)}


def _jittered_predictions(datamodule, seed: int = 0) -> list[dict]:
    """Each validation image's boxes moved a little, scored at random, some with the wrong class:
    predictions whose metrics depend on every box, the same for every layout."""
    rng = np.random.default_rng(seed)
    out = []
    for record in datamodule.val_set.records:
        boxes = record.boxes + rng.normal(0, 1.5, record.boxes.shape)
        labels = np.where(rng.random(len(boxes)) < 0.2, 1 + (record.labels % 4), record.labels)
        out.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                    "scores": torch.tensor(rng.random(len(boxes)), dtype=torch.float32)})  # fmt: skip
    return out


def test_the_three_layouts_give_the_same_index_and_metrics(layouts: dict[str, Path]) -> None:
    modules = _modules(layouts)
    stats = {}
    for name, datamodule in modules.items():
        datamodule.setup()
        assert datamodule.class_names == list(SHAPE_CLASSES)
        evaluator = detection_evaluator(**datamodule.evaluation_inputs())
        records = list(datamodule.val_set.records)
        for record, detections in zip(records, _jittered_predictions(datamodule), strict=True):
            evaluator.update([detections], [{"image_id": record.image_id}])
        stats[name] = evaluator.compute().scalars
    reference = modules["coco"]
    for name in ("voc_folder", "yolo"):
        for split in ("train_set", "val_set"):
            a, b = getattr(reference, split).index, getattr(modules[name], split).index
            np.testing.assert_array_equal(a.box_offsets, b.box_offsets)
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
            np.testing.assert_array_equal(a.widths, b.widths)
        assert stats[name] == pytest.approx(stats["coco"], abs=1e-9), name
    assert 0.2 < stats["coco"]["map"] < 0.95  # the jitter makes the metrics depend on the boxes


def _xml(filename: str, size: tuple[int, int], objects: list[tuple[str, list]]) -> str:
    rows = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, (x1, y1, x2, y2) in objects
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>{rows}</annotation>"
    )


def _image(path: Path, size: tuple[int, int] = (80, 60)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)


def _labelimg_folder(root: Path) -> Path:
    """Side by side, as LabelImg leaves it: a .png whose XML says .tif, float coordinates, a box
    leaving the image, a JPEG in upper case, a stray notes file, and an image not yet labelled."""
    _image(root / "a.png")
    (root / "a.xml").write_text(
        _xml("a.tif", (80, 60), [("Alive", [1.5, 2.5, 20.5, 30.5]), ("Dead", [10, 10, 90, 50])])
    )
    _image(root / "b.JPG")
    (root / "b.xml").write_text(_xml("b.jpg", (80, 60), [("Tree", [5, 5, 15, 15])]))
    _image(root / "c.png")
    (root / "c.xml").write_text(_xml("c.png", (80, 60), []))
    _image(root / "unlabelled.png")
    (root / "notes.txt").write_text("labelled by hand")
    return root


def test_voc_folder_pairs_by_name_and_reads_what_labelimg_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _labelimg_folder(tmp_path / "photos")
    datamodule = VocFolderDataModule(root, val_fraction=0.34, split_file=tmp_path / "split.json", **OPTIONS)
    findings, class_names = datamodule.inspect()
    assert class_names == ["Alive", "Dead", "Tree"]  # collected from the XML files, sorted
    by_check = {(f.severity, f.check): f.message for f in findings}
    assert "1 images under" in by_check[INFO, "image without XML"]
    assert "unlabelled.png" in by_check[INFO, "image without XML"]
    assert "leaves the 80x60 image" in by_check[REPAIRED, "box outside image"]
    assert not [f for f in findings if f.severity == ERROR]
    datamodule.setup()
    assert "clipped 1 boxes to their image, dropped 0 boxes under one pixel" in caplog.text
    records = {Path(r.path).name: r for r in [*datamodule.train_set.records, *datamodule.val_set.records]}
    assert sorted(records) == ["a.png", "b.JPG", "c.png"]
    # 1-based inclusive pixels: xmin=1.5 is 0.5 px into the image; xmax=20.5 ends at edge 20.5
    np.testing.assert_allclose(records["a.png"].boxes, [[0.5, 1.5, 20.5, 30.5], [9, 9, 80, 50]])
    assert records["c.png"].boxes.shape == (0, 4)


def test_zero_based_files_keep_their_coordinates_and_the_doctor_says_which_they_are(tmp_path: Path) -> None:
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    for name in ("x", "y"):
        _image(root / "images" / f"{name}.jpg")
        (root / "annotations" / f"{name}.xml").write_text(_xml(f"{name}.jpg", (80, 60), [("car", [0, 0, 10, 12])]))
    one_based = VocFolderDataModule(root, val_fraction=0.5, **OPTIONS)
    hint = [f.message for f in one_based.inspect()[0] if f.check == "coordinate origin"]
    assert hint and "2 boxes start at pixel 0" in hint[0] and "dataset.one_based=false" in hint[0]
    zero_based = VocFolderDataModule(root, val_fraction=0.5, one_based=False, **OPTIONS)
    assert not [f for f in zero_based.inspect()[0] if f.check in ("coordinate origin", "box outside image")]
    zero_based.setup()
    np.testing.assert_array_equal(zero_based.train_set.records[0].boxes, [[0, 0, 10, 12]])


def test_unknown_class_is_one_line_with_the_names_found_and_the_fix(tmp_path: Path) -> None:
    root = _labelimg_folder(tmp_path / "photos")
    datamodule = VocFolderDataModule(root, class_names=["Tree"], val_fraction=0.34, **OPTIONS)
    errors = [f.message for f in datamodule.inspect()[0] if f.severity == ERROR]
    assert len(errors) == 2  # one per unknown name, not one per object
    assert "class 'Alive' (1 object, first in" in errors[0] and "the files use ['Alive', 'Dead', 'Tree']" in errors[0]
    assert (
        "dataset.class_names=null" in errors[0] and "dataset.class_map='{Alive: <one of the class names>}'" in errors[0]
    )
    with pytest.raises(DatasetError, match="'Dead'"):
        datamodule.setup()


def test_class_map_merges_names(tmp_path: Path) -> None:
    root = _labelimg_folder(tmp_path / "photos")
    datamodule = VocFolderDataModule(root, class_map={"Alive": "Tree", "Dead": "Tree"}, val_fraction=0.34, **OPTIONS)
    datamodule.setup()
    assert datamodule.class_names == ["Tree"]
    labels = [r.labels.tolist() for r in [*datamodule.train_set.records, *datamodule.val_set.records]]
    assert sorted(labels) == [[], [1], [1, 1]]


def test_an_xml_without_its_image_names_both(tmp_path: Path) -> None:
    root = _labelimg_folder(tmp_path / "photos")
    (root / "b.JPG").unlink()
    _image(root / "a.jpg")  # two images named a
    _image(root / "d.png")
    (root / "d.xml").write_text(_xml("d.png", (80, 60), [("Tree", [1, 1, 10, 10])]))
    findings, _ = VocFolderDataModule(root, class_names=["Tree"], val_fraction=0.34, **OPTIONS).inspect()
    errors = sorted(f.message for f in findings if f.severity == ERROR)
    assert errors == [
        f"{root / 'a.xml'} has 2 images (['a.jpg', 'a.png']) of the same name in {root}",
        f"{root / 'b.xml'} has no image of the same name in {root}",
    ]


def _ten_cars(root: Path) -> Path:
    """A folder of 10 images with one VOC XML box each (no validation folder: a split is drawn)."""
    for k in range(10):
        _image(root / f"{k:02d}.png")
        (root / f"{k:02d}.xml").write_text(_xml(f"{k:02d}.png", (80, 60), [("car", [1, 1, 10, 10])]))
    return root


def test_val_fraction_draws_a_seeded_split_written_and_read_back(tmp_path: Path) -> None:
    root = _ten_cars(tmp_path / "data")
    split_file = tmp_path / "run" / "data_split.json"

    def val_names(**options) -> list[str]:
        datamodule = VocFolderDataModule(root, **{**OPTIONS, "val_fraction": 0.2, **options})
        datamodule.setup()
        train = {Path(r.path).name for r in datamodule.train_set.records}
        val = {Path(r.path).name for r in datamodule.val_set.records}
        assert not train & val and len(train | val) == 10
        return sorted(val)

    first = val_names(split_file=split_file)
    assert len(first) == 2 and val_names() == first  # the same seed draws the same images
    assert val_names(split_seed=1) != first
    assert json.loads(split_file.read_text())["val"] == first
    content = json.loads(split_file.read_text())
    content["val"] = ["03.png", "04.png", "05.png"]
    content["train"] = [n for n in content["train"] + first if n not in content["val"]]
    split_file.write_text(json.dumps(content))
    assert val_names(split_file=split_file) == ["03.png", "04.png", "05.png"]  # the file is read back
    (root / "03.png").unlink()
    (root / "03.xml").unlink()
    with pytest.raises(ValueError, match=r"names 1 images that are gone, e.g. \['03.png'\]"):
        val_names(split_file=split_file)


def test_a_drawn_split_travels_in_the_data_state_and_wins_over_a_new_draw(tmp_path: Path) -> None:
    """A checkpoint records the drawn split (the data module's state): evaluation or calibration in another
    run directory, even with another split_seed, reads the same validation images, or stops naming the
    images that are gone."""
    root = _ten_cars(tmp_path / "data")
    trained = VocFolderDataModule(root, val_fraction=0.2, **OPTIONS)
    trained.setup()
    state = trained.state_dict()
    val = sorted(Path(r.path).name for r in trained.val_set.records)
    later = VocFolderDataModule(root, val_fraction=0.3, split_seed=7, split_file=tmp_path / "other.json", **OPTIONS)
    later.load_state_dict(state)
    later.setup()
    assert sorted(Path(r.path).name for r in later.val_set.records) == val
    (root / f"{val[0][:2]}.xml").unlink()
    (root / val[0]).unlink()
    gone = VocFolderDataModule(root, val_fraction=0.2, **OPTIONS)
    gone.load_state_dict(state)
    with pytest.raises(ValueError, match=rf"the checkpoint's split names 1 images that are gone.*{val[0]}"):
        gone.setup()


def test_a_resumed_run_whose_split_differs_from_its_checkpoint_stops(tmp_path: Path) -> None:
    root = _ten_cars(tmp_path / "data")
    trained = VocFolderDataModule(root, val_fraction=0.2, **OPTIONS)
    trained.setup()
    state = trained.state_dict()
    other = VocFolderDataModule(root, val_fraction=0.2, split_seed=3, **OPTIONS)
    other.setup()  # as Lightning does before restoring a checkpoint's states
    with pytest.raises(ValueError, match=r"validation split.*differs from the checkpoint's"):
        other.load_state_dict(state)


def test_no_validation_split_asks_for_val_fraction(tmp_path: Path) -> None:
    root = _labelimg_folder(tmp_path / "photos")
    with pytest.raises(ValueError, match="pass dataset.val_fraction=0.2"):
        VocFolderDataModule(root, **OPTIONS).setup()


def _yolo(root: Path, labels: dict[str, str], names: str = "[car, person]", val: str = "images/val") -> Path:
    for name, text in labels.items():
        split = "val" if name.startswith("v") else "train"
        _image(root / "images" / split / f"{name}.jpg", (100, 50))
        if text is not None:
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split / f"{name}.txt").write_text(text)
    (root / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: {val}\nnames: {names}\n")
    return root


def test_yolo_rows_empty_and_missing_label_files(tmp_path: Path) -> None:
    root = _yolo(
        tmp_path / "yolo",
        {"t1": "0 0.5 0.5 0.2 0.4\n1 0.05 0.1 0.2 0.2\n", "t2": "", "t3": None, "v1": "1 0.5 0.5 1.0 1.0\n"},
        names="{0: car, 1: person}",
    )
    (root / "labels" / "train" / "gone.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    datamodule = YoloDataModule(root, **OPTIONS)
    findings, class_names = datamodule.inspect()
    assert class_names == ["car", "person"]
    by_check = {(f.severity, f.check): f.message for f in findings}
    assert by_check[INFO, "missing label file"].startswith("1 images have no label file")
    assert "gone.txt" in by_check[INFO, "label file without image"]
    assert "clipped" in by_check[REPAIRED, "box outside image"]  # the second row starts at x = -5
    datamodule.setup()
    records = {Path(r.path).stem: r for r in datamodule.train_set.records}
    np.testing.assert_allclose(records["t1"].boxes, [[40, 15, 60, 35], [0, 0, 15, 10]])
    assert records["t1"].labels.tolist() == [1, 2]
    assert records["t2"].boxes.shape == records["t3"].boxes.shape == (0, 4)
    np.testing.assert_allclose(datamodule.val_set.records[0].boxes, [[0, 0, 100, 50]])


def test_yolo_labels_in_a_misnamed_folder_stop_the_run_naming_where_they_were_looked_for(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo", {"t1": "0 0.5 0.5 0.2 0.4\n", "t2": "1 0.5 0.5 0.2 0.2\n", "v1": "0 0.5 0.5 1 1\n"})
    (root / "labels").rename(root / "label")  # one letter off: Ultralytics' rule finds no label file
    searched = r"no training image has an object.*labels were looked for in .*labels/train"
    with pytest.raises(DatasetError, match=searched):
        YoloDataModule(root, **OPTIONS).setup()


def test_yolo_split_with_most_label_files_missing_warns_with_the_count_and_folder(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    labels = {"t1": "0 0.5 0.5 0.2 0.4\n", "t2": None, "t3": None, "t4": None, "v1": "0 0.5 0.5 1 1\n"}
    root = _yolo(tmp_path / "yolo", labels)
    datamodule = YoloDataModule(root, **OPTIONS)
    with caplog.at_level("WARNING"):
        datamodule.setup()
    folder = str(root / "labels" / "train")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "no label file" in r.getMessage()]
    assert len(warned) == 1 and "3 of 4 images" in warned[0] and folder in warned[0]
    findings = {(f.severity, f.check): f.message for f in datamodule.inspect()[0]}
    assert folder in findings[WARNING, "missing label file"]


def test_yolo_faults_name_the_file_and_line(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo", {"t1": "0 0.5 0.5 0.2 0.4\n2 0.5 0.5 0.1 0.1\n0 50 20 10 10\n0 0.5\n", "v1": ""})
    errors = sorted(f.message for f in YoloDataModule(root, **OPTIONS).inspect()[0] if f.severity == ERROR)
    label = root / "labels" / "train" / "t1.txt"
    assert errors[0].startswith(
        f"{label} line 2: class id 2 is outside data.yaml's names (ids 0..1: ['car', 'person'])"
    )
    assert errors[1].startswith(f"{label} line 3: coordinates [50.0, 20.0, 10.0, 10.0] exceed 1")
    assert errors[2].startswith(f"{label} line 4: 2 values")
    with pytest.raises(DatasetError, match="class id 2"):
        YoloDataModule(root, **OPTIONS).setup()


def test_yolo_polygons_give_instance_masks(tmp_path: Path) -> None:
    triangle = "0 0.1 0.2 0.5 0.2 0.1 0.8\n"  # (10, 10), (50, 10), (10, 40) in a 100x50 image
    root = _yolo(tmp_path / "yolo", {"t1": triangle, "v1": triangle})
    datamodule = YoloDataModule(root, masks=True, **OPTIONS)
    datamodule.setup()
    image, target = datamodule.train_set[0]
    np.testing.assert_allclose(target["boxes"], [[10, 10, 50, 40]])
    mask = target["masks"][0].numpy().astype(bool)
    assert mask[12, 12] and not mask[38, 48] and 500 < mask.sum() < 700  # about the triangle's area, 600
    ground_truth = datamodule.val_set.ground_truth()
    annotation = ground_truth.loadAnns(ground_truth.getAnnIds())[0]
    assert 500 < annotation["area"] < 700 and annotation["segmentation"]


def test_yolo_box_rows_cannot_train_masks(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo", {"t1": "0 0.5 0.5 0.2 0.4\n", "v1": ""})
    with pytest.raises(DatasetError, match="line 1: a box without a polygon"):
        YoloDataModule(root, masks=True, **OPTIONS).setup()


def test_yolo_without_val_uses_val_fraction_and_class_names_override(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo", {f"t{k}": "1 0.5 0.5 0.2 0.2\n" for k in range(5)}, val="")
    datamodule = YoloDataModule(root, val_fraction=0.2, class_map={"person": "human"}, **OPTIONS)
    datamodule.setup()
    assert datamodule.class_names == ["car", "human"] and (len(datamodule.train_set), len(datamodule.val_set)) == (4, 1)


def test_split_summary_counts_images_boxes_and_classes(layouts: dict[str, Path], tmp_path: Path) -> None:
    datamodule = _modules(layouts)["yolo"]
    datamodule.setup()
    index = datamodule.train_set.index
    expected = f"train: {len(index)} images, {len(index.boxes)} boxes, {len(set(index.labels.tolist()))} classes"
    assert split_summary("train", datamodule.train_set) == expected
    root = shutil.copytree(layouts["yolo"], tmp_path / "one")
    for label in (root / "labels").rglob("*.txt"):
        label.write_text("".join(f"0 {line.split(' ', 1)[1]}\n" for line in label.read_text().splitlines()[:1]))
    single = YoloDataModule(root, **OPTIONS)
    single.setup()
    assert (
        split_summary("val", single.val_set)
        == f"val: {TINY_SHAPES.num_val} images, {TINY_SHAPES.num_val} boxes, 1 class"
    )


@pytest.mark.slow
def test_check_dataset_ends_with_a_line_per_split(layouts: dict[str, Path], tmp_path: Path) -> None:
    args = ["task=detection", "dataset=yolo", f"dataset.root={layouts['yolo']}", "dataset.num_workers=0",
            "task.model.min_size=64", "task.model.max_size=64", "task.model.anchor_sizes=[32,64,128,256,512]",
            f"hydra.run.dir={tmp_path}"]  # fmt: skip
    result = run_script("check_dataset.py", args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    datamodule = _modules(layouts)["yolo"]
    datamodule.setup()
    assert lines[-2:] == [split_summary("train", datamodule.train_set), split_summary("val", datamodule.val_set)]
    assert "training boxes, sqrt(w*h) in input pixels after the resize" in result.stdout
    assert "smaller than the smallest anchor (32 px)" in result.stdout  # 64 px inputs, the COCO anchors


@pytest.mark.parametrize("dataset", ["voc", "voc_folder", "yolo"])
def test_class_map_and_names_are_given_on_the_command_line(dataset: str, tmp_path: Path) -> None:
    overrides = [f"dataset={dataset}", "dataset.root=/data", "dataset.class_map={Alive: Tree, Dead: Tree}",
                 "dataset.class_names=null"]  # fmt: skip
    cfg = compose_config(overrides, tmp_path)
    assert cfg.dataset.class_map == {"Alive": "Tree", "Dead": "Tree"} and cfg.dataset.class_names is None


def test_an_image_whose_size_cannot_be_read_stops_the_run_or_is_left_out(tmp_path: Path) -> None:
    root = _yolo(tmp_path / "yolo", {"t1": "0 0.5 0.5 0.2 0.4\n", "t2": "0 0.5 0.5 0.2 0.4\n", "v1": ""})
    broken = root / "images" / "train" / "t2.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match=f"{broken}: its header cannot be read"):
        YoloDataModule(root, **OPTIONS).setup()
    lenient = YoloDataModule(root, skip_bad_images=True, **OPTIONS)
    lenient.setup()
    assert [Path(r.path).name for r in lenient.train_set.records] == ["t1.jpg"]
