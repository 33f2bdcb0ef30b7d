"""Classification: torchvision parity, metrics against hand-computed cases, class-folder and ImageNet
layouts, training and evaluation end to end, and carrying the trained backbone into the other tasks."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hydra.utils import instantiate
from PIL import Image

from backbones import ResNetBackbone
from heads.classifier import build_classifier
from tasks.core.runner import build_datamodule, build_module, evaluate, train
from tasks.data.classification import ImageFolderDataModule
from tasks.data.doctor import DatasetError
from tasks.data.imagenet import ImageNetDataModule, read_synset_mapping
from tasks.evaluation.classification import ClassificationEvaluator, classification_metrics
from tasks.training.classification import batch_mixer
from tests.support import (
    BACKBONES,
    TINY_CLASSIFICATION,
    TINY_DETECTION,
    TINY_SEGMENTATION,
    TINY_SHAPES,
    compose_config,
    run_script,
    shapes_overrides,
    shapes_seg_overrides,
)


# -- the model ------------------------------------------------------------------------------------
def test_resnet50_state_dict_is_torchvisions_key_for_key() -> None:
    ours = build_classifier(ResNetBackbone("resnet50", norm="bn"), num_classes=1000).eval()
    theirs = torchvision.models.resnet50().eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in theirs.state_dict().items()
    ]
    images = torch.rand(2, 3, 64, 80)
    normalised = (images - ours.image_mean) / ours.image_std  # torchvision's models take normalised input
    with torch.no_grad():
        ours.load_state_dict(theirs.state_dict())  # torchvision's weights load as they are
        torch.testing.assert_close(ours(images), theirs(normalised), rtol=0, atol=0)
        for parameter in ours.parameters():
            parameter.normal_(0, 0.05)
        reader = torchvision.models.resnet50().eval()
        reader.load_state_dict(ours.state_dict())  # and torchvision reads ours
        torch.testing.assert_close(reader(normalised), ours(images), rtol=0, atol=0)


def test_classifier_weights_file_loads_all_but_another_class_count(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    same = build_classifier(ResNetBackbone("resnet18", norm="bn"), num_classes=10, weights=str(path))
    torch.testing.assert_close(same.fc.weight, source.fc.weight)
    other = build_classifier(ResNetBackbone("resnet18", norm="bn"), num_classes=3, weights=str(path))
    torch.testing.assert_close(other.backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert other.fc.weight.shape == (3, 512)


@pytest.mark.parametrize("pool", ["avg", "max"])
def test_pool_reads_the_chosen_feature_map(pool: str) -> None:
    """``feature``/``pool`` against the backbone's own map, pooled by hand."""
    model = build_classifier(ResNetBackbone("resnet18", norm="bn"), num_classes=4, feature="c3", pool=pool).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        c3 = model.backbone((images - model.image_mean) / model.image_std)["c3"]
        pooled = c3.amax((2, 3)) if pool == "max" else c3.mean((2, 3))
        torch.testing.assert_close(model(images), model.fc(pooled))
    assert model.fc.in_features == 128  # channels from the backbone's contract
    with pytest.raises(ValueError, match="task.model.pool='median'"):
        build_classifier(ResNetBackbone("resnet18", norm="bn"), num_classes=4, pool="median")


@pytest.mark.parametrize("name", BACKBONES)
def test_stages_after_the_read_map_leave_training(name: str, tmp_path: Path) -> None:
    """Reading an early map, every parameter still trainable gets a gradient (DDP requires it), and
    a ResNet stops computing at that map."""
    cfg = compose_config(["task=classification", f"backbone={name}"], tmp_path)
    backbone = instantiate(cfg.backbone)
    first = next(iter(backbone.output_shape()))
    model = build_classifier(backbone, num_classes=3, feature=first)
    calls = []
    if isinstance(backbone, ResNetBackbone):
        backbone.layer4.register_forward_hook(lambda *_: calls.append(1))
        assert list(backbone.output_shape()) == [first]
    model(torch.rand(2, 3, 64, 64)).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for _, p in trainable)
    assert any(not p.requires_grad for p in model.backbone.parameters())  # the later stages
    assert not calls
    with torch.no_grad():  # built under no_grad: the same parameters leave training
        fresh = build_classifier(instantiate(cfg.backbone), num_classes=3, feature=first)
    assert [p.requires_grad for p in fresh.parameters()] == [p.requires_grad for p in model.parameters()]
    fresh.load_state_dict(model.state_dict())  # still saved and loaded whole


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_classifies(name: str, tmp_path: Path) -> None:
    cfg = compose_config(["task=classification", f"backbone={name}"], tmp_path)
    model = build_classifier(instantiate(cfg.backbone), num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    saved = model.state_dict()
    assert not any(key.startswith("backbone.") for key in saved)
    fresh = build_classifier(instantiate(cfg.backbone), num_classes=3)
    fresh.load_state_dict(saved)  # strict: the unnested keys find their way back
    torch.testing.assert_close(fresh.state_dict(), saved)


# -- metrics --------------------------------------------------------------------------------------
def test_metrics_against_a_hand_computed_case() -> None:
    labels = np.array([0, 0, 1, 1, 2, 2, 2])
    ranked = np.array([[0, 1], [1, 0], [1, 2], [2, 0], [2, 1], [2, 0], [0, 1]])
    result = classification_metrics(labels, ranked, 3)
    assert result["top1"] == pytest.approx(4 / 7)  # images 0, 2, 4, 5
    assert result["topk"] == pytest.approx(5 / 7)  # top-2 here: also image 1
    assert result["per_class_acc"] == pytest.approx([1 / 2, 1 / 2, 2 / 3])
    assert result["mean_class_acc"] == pytest.approx((1 / 2 + 1 / 2 + 2 / 3) / 3)
    assert result["matrix"].tolist() == [[1, 1, 0], [0, 1, 1], [1, 0, 2]]


def test_top5_only_with_more_than_5_classes(tmp_path: Path) -> None:
    evaluator = ClassificationEvaluator(["a", "b", "c"])
    logits = torch.tensor([[0.1, 0.5, 0.4], [0.9, 0.05, 0.05]])
    evaluator.update(logits, [{"label": 2, "image_id": 0}, {"label": 1, "image_id": 1}])
    evaluation = evaluator.compute()
    assert evaluation.scalars == {"top1": 0.0, "mean_class_acc": 0.0}  # top-3 of 3 classes would always be 1
    assert evaluation.per_class["c"] == {"accuracy": 0.0, "images": 1.0}
    picture = evaluation.files["confusion_matrix.png"]
    assert picture.size[0] > 3 * 12 and evaluation.files["confusion_matrix.json"]["matrix"][2] == [0, 1, 0]
    seven = ClassificationEvaluator([str(k) for k in range(7)])
    scores = torch.arange(7.0).repeat(3, 1)  # class 6 ranked first, then 5, 4 ...
    seven.update(scores, [{"label": label, "image_id": i} for i, label in enumerate((2, 1, 6))])
    assert seven.compute().scalars == pytest.approx({"top1": 1 / 3, "mean_class_acc": 1 / 3, "top5": 2 / 3})


def test_mixup_and_cutmix_give_class_probabilities() -> None:
    mixer = batch_mixer(4, mixup_alpha=0.2, cutmix_alpha=1.0)
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    torch.manual_seed(0)
    mixed, soft = mixer(images, labels)
    torch.manual_seed(0)
    again, _ = mixer(images, labels)
    assert soft.shape == (6, 4) and torch.allclose(soft.sum(1), torch.ones(6))
    assert not torch.equal(mixed, images) and torch.equal(mixed, again)  # seeded per batch: reproducible


# -- data -----------------------------------------------------------------------------------------
def _save(path: Path, image: Image.Image, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


def _image_folder(root: Path) -> dict[str, list[str]]:
    """Class folders with odd names, every image mode, an EXIF-rotated photo, clutter; returns the
    files each class should list."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    expected: dict[str, list[str]] = {}
    for split in ("train", "val"):
        folders = {"sq uare": [], "ünïcode 猫": [], "z-last": []}
        exif = rgb.getexif()
        exif[0x0112] = 6  # shown rotated by 90 degrees
        folders["sq uare"] += [
            _save(root / split / "sq uare" / "photo.JPG", rgb, exif=exif.tobytes()),
            _save(root / split / "sq uare" / "sub" / "gray.png", rgb.convert("L")),
        ]
        folders["ünïcode 猫"] += [
            _save(root / split / "ünïcode 猫" / "palette.gif", rgb.convert("P")),
            _save(root / split / "ünïcode 猫" / "alpha.png", rgb.convert("RGBA")),
        ]
        deep = Image.fromarray((np.arange(1200).reshape(40, 30) * 50).astype(np.uint16))
        folders["z-last"] += [
            _save(root / split / "z-last" / "16bit.png", deep),
            _save(root / split / "z-last" / "c.bmp", rgb),
        ]
        (root / split / "z-last" / "notes.txt").write_text("not an image")
        (root / split / "z-last" / ".DS_Store").write_bytes(b"\0")
        _save(root / split / "z-last" / ".hidden.png", rgb)
        _save(root / split / ".ipynb_checkpoints" / "x.png", rgb)  # a hidden folder is no class
        expected.update({f"{split}/{name}": sorted(str(p) for p in paths) for name, paths in folders.items()})
    return expected


def _data(root: Path, **options) -> ImageFolderDataModule:
    return ImageFolderDataModule(root, crop_size=24, val_resize=28, batch_size=2, num_workers=0, **options)


def test_image_folder_with_odd_names_modes_and_clutter(tmp_path: Path) -> None:
    expected = _image_folder(tmp_path)
    data = _data(tmp_path, cache_dir=tmp_path / "cache")
    data.setup()
    assert data.class_names == ["sq uare", "z-last", "ünïcode 猫"]  # sorted by name, as torchvision
    for split, dataset in (("train", data.train_set), ("val", data.val_set)):
        listed: dict[str, list[str]] = {}
        for path, label in dataset.records:
            listed.setdefault(f"{split}/{data.class_names[label]}", []).append(str(path))
        assert {k: sorted(v) for k, v in listed.items()} == {k: v for k, v in expected.items() if k.startswith(split)}
    images, targets = data.collate_fn([data.val_set[i] for i in range(len(data.val_set))])
    assert images.shape == (6, 3, 24, 24) and images.dtype == torch.uint8
    # the EXIF-rotated photo is decoded upright: 40 wide once rotated, its centre crop is the rotated pixels'
    photo = next(i for i, t in enumerate(targets) if t["file"].endswith("photo.JPG"))
    upright = np.array(Image.open(expected["val/sq uare"][0]).transpose(Image.Transpose.ROTATE_270))
    assert upright.shape[:2] == (30, 40) and targets[photo]["label"] == 0


def test_corrupt_file_stops_the_run_or_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _image_folder(tmp_path)
    broken = tmp_path / "train" / "z-last" / "broken.jpg"
    broken.write_bytes(Path(_image_folder_file(tmp_path)).read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"(?s)broken\.jpg.*skip_bad_images=true"):
        _data(tmp_path).setup()
    data = _data(tmp_path, skip_bad_images=True)
    with caplog.at_level(logging.WARNING):
        data.setup()
    assert "broken.jpg" in caplog.text
    assert not any(path == broken for path, _ in data.train_set.records) and len(data.train_set) == 6


def _image_folder_file(root: Path) -> Path:
    return root / "train" / "sq uare" / "photo.JPG"


def test_validation_class_unknown_to_training_is_named(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    _save(tmp_path / "val" / "stray class" / "a.png", Image.new("RGB", (8, 8)))
    with pytest.raises(DatasetError, match="stray class"):
        _data(tmp_path).setup()


def _imagenet(root: Path, *, flat_val: bool) -> None:
    wnids = ["n01440764", "n02012849", "n03126707"]
    mapping = ["n01440764 tench, Tinca tinca", "n02012849 crane", "n03126707 crane"]  # two cranes, as ILSVRC
    (root / "LOC_synset_mapping.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "LOC_synset_mapping.txt").write_text("\n".join(mapping) + "\n")
    for k, wnid in enumerate(wnids):
        for i in range(2):
            _save(root / "train" / wnid / f"{wnid}_{i}.JPEG", Image.new("RGB", (20, 16), (k * 80, i * 50, 9)))
    labels = {1: "n03126707", 2: "n01440764", 3: "n02012849", 4: "n03126707"}
    rows = ["ImageId,PredictionString"]
    for number, wnid in labels.items():
        image_id = f"ILSVRC2012_val_{number:08d}"
        folder = root / "val" if flat_val else root / "val" / wnid
        _save(folder / f"{image_id}.JPEG", Image.new("RGB", (16, 20), (number * 40, 0, 0)))
        rows.append(f"{image_id},{wnid} 10 12 40 50 {wnid} 1 2 3 4")
    (root / "LOC_val_solution.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("layout", ["flat_csv", "class_folders", "kaggle"])
def test_imagenet_layouts(tmp_path: Path, layout: str) -> None:
    images = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" if layout == "kaggle" else tmp_path
    _imagenet(images, flat_val=layout != "class_folders")
    if layout == "kaggle":  # the csv and the mapping sit at the top of the download
        for name in ("LOC_synset_mapping.txt", "LOC_val_solution.csv"):
            (images / name).rename(tmp_path / name)
    data = ImageNetDataModule(tmp_path, crop_size=16, val_resize=16, batch_size=2, num_workers=0)
    data.setup()
    assert data.class_names == ["tench", "crane (n02012849)", "crane (n03126707)"]
    by_file = {path.stem: label for path, label in data.val_set.records}
    assert by_file == {
        "ILSVRC2012_val_00000001": 2,
        "ILSVRC2012_val_00000002": 0,
        "ILSVRC2012_val_00000003": 1,
        "ILSVRC2012_val_00000004": 2,
    }
    first = next(i for i, (path, _) in enumerate(data.val_set.records) if path.stem.endswith("01"))
    image, target = data.val_set[first]
    assert target["label"] == 2 and image.shape == (3, 16, 16) and len(data.train_set) == 6


def test_imagenet_flat_val_without_its_csv_is_explained(tmp_path: Path) -> None:
    _imagenet(tmp_path, flat_val=True)
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(FileNotFoundError, match="LOC_val_solution.csv"):
        ImageNetDataModule(tmp_path, num_workers=0, batch_size=2).setup()


def test_synset_names_stay_unique(tmp_path: Path) -> None:
    path = tmp_path / "map.txt"
    path.write_text("n1 crane\nn2 crane\nn3 tench, Tinca tinca\n")
    assert read_synset_mapping(path) == {"n1": "crane (n1)", "n2": "crane (n2)", "n3": "tench"}


# -- end to end -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list[str]]:
    """A few steps on the tiny shapes in class folders, with label smoothing, mixup and cutmix."""
    root = tmp_path_factory.mktemp("cls")
    overrides = [
        *TINY_CLASSIFICATION,
        f"dataset.root={root / 'data'}",
        "task.module.mixup_alpha=0.2",
        "task.module.cutmix_alpha=1.0",
        "task.module.label_smoothing=0.1",
        "backbone.norm=bn",
        "task.model.feature=null",  # torchvision's classifier: the deepest map, average pooled
        "task.model.pool=avg",  # (the shapes recipe reads c3 through max pooling)
    ]
    train(compose_config([*overrides, "trainer.max_steps=4"], root / "run"))
    return root / "run", json.loads((root / "run" / "metrics.json").read_text()), overrides


@pytest.mark.slow
def test_train_writes_metrics_and_confusion_matrix(trained: tuple[Path, dict, list[str]]) -> None:
    run, metrics, _ = trained
    assert {"top1", "mean_class_acc", "per_class", "loss"} <= set(metrics)
    assert set(metrics["per_class"]) == {"circle", "cross", "square", "triangle"}
    assert "top5" not in metrics  # 4 classes: always 1
    matrix = json.loads((run / "confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == TINY_SHAPES.num_val
    assert sum(matrix[k][k] for k in range(4)) / TINY_SHAPES.num_val == pytest.approx(metrics["top1"])
    assert Image.open(run / "confusion_matrix.png").size[0] >= 4 * 12


@pytest.mark.slow
def test_evaluate_reproduces_and_torchvision_reads_the_checkpoint(
    trained: tuple[Path, dict, list[str]], tmp_path: Path
) -> None:
    _, metrics, overrides = trained
    evaluate(compose_config([*overrides, f"ckpt_path={metrics['checkpoint']}"], tmp_path))
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert again["top1"] == pytest.approx(metrics["top1"], abs=1e-9)
    state = torch.load(metrics["checkpoint"], weights_only=True)["state_dict"]
    reader = torchvision.models.resnet18(num_classes=4)
    reader.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "instance_segmentation", "segmentation", "segmentation_fpn"])
def test_transfer_loads_the_backbone(
    trained: tuple[Path, dict, list[str]],
    task: str,
    shapes_root: Path,
    shapes_voc_root: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    checkpoint = trained[1]["checkpoint"]
    if task.startswith("segmentation"):
        overrides = [*TINY_SEGMENTATION, *shapes_seg_overrides(shapes_voc_root)]
        overrides += ["task.model.features=fpn"] if task == "segmentation_fpn" else ["task.model.output_stride=8"]
    else:
        overrides = [f"task={task}", "backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root)]
    cfg = compose_config([*overrides, f"backbone.init={checkpoint}"], tmp_path)
    with caplog.at_level(logging.INFO):
        module = build_module(cfg, build_datamodule(cfg))
    per_module = r"\(bn1 \d+, conv1 1, layer1 \d+, layer2 \d+, layer3 \d+, layer4 \d+\)"
    loaded = rf"resnet18: loaded \d+ tensors {per_module} from \S+best\.ckpt"
    assert re.search(loaded, caplog.text)
    assert "no tensor left at initialisation" in caplog.text
    body = next(m for m in module.modules() if isinstance(m, ResNetBackbone))
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    for key, value in body.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[f"model.{key}"], rtol=0, atol=0)


@pytest.mark.slow
def test_dataset_doctor_names_the_corrupt_file(tmp_path: Path) -> None:
    _image_folder(tmp_path)
    (tmp_path / "val" / "sq uare" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    args = [
        "task=classification",
        "dataset=imagefolder",
        f"dataset.root={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    result = run_script("check_dataset.py", args)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "broken.png (sq uare) is unreadable" in result.stdout and "1 error(s)" in result.stdout


@pytest.mark.slow
def test_imagenet_recipe_trains(tmp_path: Path) -> None:
    """torchvision's recipe as composed for ImageNet (mixup, cutmix, TrivialAugmentWide, random erasing,
    EMA, no weight decay on norm layers), on a tiny ILSVRC layout and a small backbone."""
    _imagenet(tmp_path / "imagenet", flat_val=True)
    overrides = [
        "task=classification",
        "dataset=imagenet",
        f"dataset.root={tmp_path / 'imagenet'}",
        "backbone=resnet18",
        "dataset.crop_size=16",
        "dataset.val_resize=18",
        "dataset.val_crop_size=16",
        "dataset.batch_size=2",
        "dataset.num_workers=0",
        "callbacks.ema.update_every_n_steps=1",
        "callbacks.ema.update_starting_at_epoch=0",
        "trainer.max_steps=3",
        "trainer.enable_progress_bar=false",
    ]
    cfg = compose_config(overrides, tmp_path / "run")
    assert cfg.task.module.mixup_alpha == 0.2 and cfg.dataset.auto_augment == "ta_wide"
    module = build_module(cfg, build_datamodule(cfg))
    groups = module.optimizer_factory(module.parameter_groups()).param_groups
    assert [group["weight_decay"] for group in groups] == [2e-5, 0.0]
    assert len(groups[1]["params"]) == 2 * 20  # weight and bias of resnet18's 20 BatchNorm layers
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["top1"] <= 1 and "top5" not in metrics  # 3 classes
    state = torch.load(metrics["checkpoint"], weights_only=True)
    assert {"current_model_state", "averaging_state"} <= set(state)  # the EMA weights are the checkpoint's
    assert not torch.equal(state["state_dict"]["model.fc.weight"], state["current_model_state"]["model.fc.weight"])
