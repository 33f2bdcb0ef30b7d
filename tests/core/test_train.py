"""End to end: the train command, resume, config composition, and start-up errors."""

from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from tasks import PROJECT_ROOT
from tasks.core.runner import build_datamodule, build_module, build_trainer, configure_torch, evaluate, train
from tasks.data.formats.coco import load_coco
from tasks.data.shapes import ensure_shapes
from tasks.evaluation.coco_eval import COCO_STAT_NAMES
from tasks.inference.predict import predict
from tests.support import (
    CPU_DDP,
    TINY_DETECTION,
    TINY_SHAPES,
    compose_config,
    pycocotools_stats,
    run_script,
    shapes_overrides,
    tiny_detection_for,
)


def _tiny(shapes_root: Path, *extra: str) -> list[str]:
    return ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), *extra]


@pytest.mark.slow
def test_train_command_writes_metrics_checkpoint_and_logs(shapes_root: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    # started from another directory: paths are anchored on the project root, not the working directory
    result = run_script(
        "train.py",
        [
            "task=detection",
            *_tiny(shapes_root, "trainer.max_steps=2", "trainer.log_every_n_steps=1"),
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(COCO_STAT_NAMES) <= set(metrics) and metrics["loss"] > 0  # validation loss next to mAP
    assert all(-1 <= metrics[name] <= 1 for name in COCO_STAT_NAMES)
    assert "map_50" in result.stdout
    assert Path(metrics["checkpoint"]).is_file() and Path(metrics["checkpoint"]).parent == run_dir / "checkpoints"
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    assert any(row.get("train/loss_classifier") for row in rows)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "data").exists()
    log = (run_dir / "train.log").read_text()
    assert "recipe detection_shapes applied (recipe=null leaves it out); it sets task.model.fpn_norm=bn" in log


@pytest.mark.slow
def test_coco_layout_folder_trains(shapes_root: Path, tmp_path: Path) -> None:
    # the generated shapes folder is a COCO 2017 layout, so dataset=coco reads it as it would real COCO
    overrides = [
        "task=detection",
        "dataset=coco",
        f"dataset.root={shapes_root}",
        "dataset.num_workers=0",
        "backbone=resnet18",
        "backbone.weights=none",  # the COCO recipe starts from ImageNet weights: offline here
        *TINY_DETECTION,
        "task.model.box_score_thresh=0.0",  # up to 100 boxes an image: recall is not zero after 2 steps
        "trainer.max_steps=2",
    ]
    metrics = train(compose_config(overrides, tmp_path))
    # the stats are pycocotools' own on the folder's json and the written predictions
    rows = json.loads((tmp_path / "predictions.json").read_text())
    coco_gt = load_coco(shapes_root / "annotations" / "instances_val2017.json")
    assert {row["image_id"] for row in rows} == set(coco_gt.getImgIds())  # every validation image predicted
    for name, value in zip(COCO_STAT_NAMES, pycocotools_stats(coco_gt, rows), strict=True):
        assert metrics[name] == pytest.approx(value, abs=1e-9), name
    assert metrics["map_50"] > 0 and metrics["mar_100"] > 0  # not a comparison of zeros


@pytest.mark.slow
def test_voc_layout_folder_trains(shapes_voc_root: Path, tmp_path: Path) -> None:
    overrides = [
        "task=detection",
        "dataset=voc",
        f"dataset.root={shapes_voc_root}",
        "dataset.num_workers=0",
        "dataset.class_names=[circle,square,triangle,cross]",
        "dataset.resize_longest=null",
        "backbone=resnet18",
        "backbone.weights=none",
        *TINY_DETECTION,
        "trainer.max_steps=2",
    ]
    train(compose_config(overrides, tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"voc07_map", "voc_map", "map_50"} <= set(metrics)


@pytest.mark.distributed
@pytest.mark.parametrize("model", ["faster_rcnn", "retinanet", "fcos"])
def test_two_process_ddp_training_with_grouped_batches(model: str, shapes_root: Path, tmp_path: Path) -> None:
    ddp = [*CPU_DDP, "dataset.group_aspect_ratio=true", "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"]
    run_dir = tmp_path / "run"
    args = ["backbone=resnet18", *tiny_detection_for(model), *shapes_overrides(shapes_root), *ddp]
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2
    assert "map_50" in json.loads((run_dir / "metrics.json").read_text())
    assert "total batch: 4 images x 2 processes x 1 accumulated" in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18d", "convnext_atto", "mobilenetv3_small_050"])
def test_any_timm_model_trains(shapes_root: Path, tmp_path: Path, model: str) -> None:
    cfg = compose_config(
        [*_tiny(shapes_root, "trainer.max_steps=2"), "backbone=timm", f"backbone.name={model}"], tmp_path
    )
    configure_torch(cfg)  # the run's own seeding: the same initial weights as train() builds
    initial = build_module(cfg, build_datamodule(cfg))
    before = {name: p.detach().clone() for name, p in initial.named_parameters()}
    trainable = {name for name, p in initial.named_parameters() if p.requires_grad}
    metrics = train(cfg)
    after = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    body = [name for name in before if ".backbone.body." in name]
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    # the gradient reached every trainable tensor of the timm model, and only those moved
    assert len(body) > 10 and {name for name in body if name in trainable} <= changed
    assert changed <= trainable and math.isfinite(metrics["loss"])


def test_checkpoint_of_this_project_loads_as_backbone_weights(shapes_root: Path, tmp_path: Path) -> None:
    first = compose_config(_tiny(shapes_root), tmp_path / "a")
    module = build_module(first, build_datamodule(first))
    checkpoint = tmp_path / "detector.ckpt"
    torch.save({"state_dict": module.state_dict(), "global_step": 1}, checkpoint)
    second = compose_config(_tiny(shapes_root, f"backbone.weights={checkpoint}"), tmp_path / "b")
    loaded = build_module(second, build_datamodule(second))
    torch.testing.assert_close(
        loaded.model.backbone.body.layer4[1].conv2.weight, module.model.backbone.body.layer4[1].conv2.weight
    )


@pytest.mark.slow
def test_wrong_root_stops_before_training_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no_coco_here"
    cfg = compose_config(["dataset=coco", f"dataset.root={missing}"], tmp_path)
    with pytest.raises(FileNotFoundError, match=f"dataset.root={missing} does not exist.*instances_train2017.json"):
        train(cfg)
    assert not (tmp_path / "checkpoints").exists()


def test_config_paths_overrides_and_recipe(tmp_path: Path) -> None:
    cfg = compose_config(["dataset.batch_size=3", "seed=5", "trainer.max_epochs=2"], tmp_path)
    assert cfg.paths.root_dir == str(PROJECT_ROOT)
    assert cfg.dataset.root == str(PROJECT_ROOT / "data" / "shapes")
    assert (cfg.dataset.batch_size, cfg.seed, cfg.trainer.max_epochs) == (3, 5, 2)
    assert cfg.task.model.min_size == 128  # the shapes recipe
    coco = compose_config(["dataset=coco"], tmp_path)
    assert coco.task.model.min_size == 800 and coco.task.model.anchor_sizes == [32, 64, 128, 256, 512]


def test_num_classes_is_checked_against_the_dataset(shapes_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(_tiny(shapes_root, "task.model.num_classes=7"), tmp_path)
    with pytest.raises(ValueError, match="num_classes=7 but the dataset declares 4 classes"):
        build_module(cfg, build_datamodule(cfg))
    cfg = compose_config(_tiny(shapes_root, "task.model.num_classes=4"), tmp_path)
    assert build_module(cfg, build_datamodule(cfg)).model.num_classes == 4


class _StopAt(L.Callback):
    """Simulates an interrupted run: saves a checkpoint at ``step`` and stops."""

    def __init__(self, step: int, path: Path) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


class _RecordStart(L.Callback):
    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        optimizer = trainer.optimizers[0]
        self.step = trainer.global_step
        self.weights = {k: v.clone() for k, v in module.state_dict().items()}
        self.optimizer_state = [
            {k: v.clone() for k, v in optimizer.state[p].items() if torch.is_tensor(v)}
            for p in optimizer.param_groups[0]["params"]
        ]
        self.lr = optimizer.param_groups[0]["lr"]


def _fit(cfg, *callbacks: L.Callback) -> L.Trainer:
    L.seed_everything(cfg.seed)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.callbacks.extend(callbacks)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    return trainer


@pytest.mark.slow
def test_resume_restores_model_optimizer_scheduler_and_step(shapes_root: Path, tmp_path: Path) -> None:
    steps = ["trainer.max_steps=6", "trainer.enable_progress_bar=false"]
    interrupted = tmp_path / "interrupted.ckpt"
    _fit(compose_config(_tiny(shapes_root, *steps), tmp_path / "a"), _StopAt(3, interrupted))
    saved = torch.load(interrupted, map_location="cpu", weights_only=False)

    record = _RecordStart()
    resumed = _fit(compose_config(_tiny(shapes_root, *steps, f"ckpt_path={interrupted}"), tmp_path / "b"), record)
    straight = _fit(compose_config(_tiny(shapes_root, *steps), tmp_path / "c"))

    assert record.step == saved["global_step"] == 3
    for key, value in saved["state_dict"].items():
        torch.testing.assert_close(record.weights[key], value, rtol=0, atol=0)
    saved_state = list(saved["optimizer_states"][0]["state"].values())
    assert len(record.optimizer_state) == len(saved_state) > 0
    for restored, expected in zip(record.optimizer_state, saved_state, strict=True):
        assert set(restored) == {k for k, v in expected.items() if torch.is_tensor(v)} != set()
        for key, value in restored.items():  # e.g. AdamW's moments (the shapes recipe), SGD's momentum
            torch.testing.assert_close(value, expected[key], rtol=0, atol=0)
    assert record.lr == pytest.approx(saved["optimizer_states"][0]["param_groups"][0]["lr"])
    assert resumed.global_step == straight.global_step == 6
    assert resumed.optimizers[0].param_groups[0]["lr"] == pytest.approx(straight.optimizers[0].param_groups[0]["lr"])


@pytest.mark.slow
def test_a_run_that_never_validated_validates_its_final_weights_as_the_best(shapes_root: Path, tmp_path: Path) -> None:
    # validation every 6 epochs, training ends after 2 (4 steps each)
    overrides = _tiny(shapes_root, "trainer.check_val_every_n_epoch=6", "trainer.max_epochs=2", "trainer.max_steps=-1")
    metrics = train(compose_config(overrides, tmp_path))
    written = json.loads((tmp_path / "metrics.json").read_text())
    best = tmp_path / "checkpoints" / "best.ckpt"
    assert written["checkpoint"] == str(best)
    saved = torch.load(best, map_location="cpu", weights_only=True)
    assert saved["global_step"] == 8  # the weights training ended with
    final = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], final["state_dict"][k]) for k in final["state_dict"])
    score = saved["callbacks"][next(k for k in saved["callbacks"] if k.startswith("RunCheckpoint"))]["best_model_score"]
    assert float(score) == pytest.approx(metrics["map"])


@pytest.mark.slow
def test_max_steps_on_the_command_line_wins_over_the_recipes_epochs(shapes_root: Path, tmp_path: Path) -> None:
    # the shapes recipe stops after 4 epochs: 16 steps of these 16 images in batches of 4
    run_dir = tmp_path / "run"
    steps = ["trainer.max_steps=20", "trainer.check_val_every_n_epoch=10", "trainer.enable_progress_bar=false"]
    result = run_script("train.py", [*_tiny(shapes_root, *steps), f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 20
    log = (run_dir / "train.log").read_text()
    assert "trainer.max_steps=20 from the command line ends the run: trainer.max_epochs=4 that the configs set" in log
    assert "training ends after 20 optimizer steps, at trainer.max_steps=20 (no epoch limit)" in log
    # what the recipe set and what the command line set are told apart
    assert "it sets task.model.anchor_sizes" not in log  # given on the command line (TINY_DETECTION)
    assert "; the command line overrides task.model.min_size=64 (recipe: 128)" in log
    assert "max_size=64 (recipe: 128)" in log and "task.module.optimizer.name=adamw" in log.split("overrides")[0]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["voc_folder", "yolo"])
def test_labelling_tool_layouts_train(layout: str, tmp_path: Path) -> None:
    """A labelling tool's folder, as a user points at it: no validation split of its own for the
    VOC folder (drawn with val_fraction and written to the run directory), class names from the files."""
    root = ensure_shapes(tmp_path / layout, TINY_SHAPES, layout)
    source = ["dataset.train_dir=train", "dataset.val_dir=null", "dataset.val_fraction=0.25"]
    overrides = [
        "task=detection",
        f"dataset={layout}",
        f"dataset.root={root}",
        "dataset.num_workers=0",
        "dataset.resize_longest=null",
        *(source if layout == "voc_folder" else []),
        "backbone=resnet18",
        *TINY_DETECTION,
        "trainer.max_steps=2",
    ]
    run_dir = tmp_path / "run"
    train(compose_config(overrides, run_dir))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"map_50", "map"} <= set(metrics)
    if layout == "voc_folder":
        split = json.loads((run_dir / "data_split.json").read_text())
        assert len(split["val"]) == TINY_SHAPES.num_train // 4 and not set(split["val"]) & set(split["train"])


@pytest.mark.slow
def test_tiled_training_validates_and_predicts_on_slices_alike(shapes_root: Path, tmp_path: Path) -> None:
    """Trained on 40 px tiles of the 64 px images: validation, evaluate.py and predict.py (which takes
    the tile size from the checkpoint) all slice the images, and find the same boxes."""
    tiles = ["dataset.tile.size=40", "dataset.tile.overlap=0.5", "dataset.tile.keep_empty=1.0"]
    overrides = _tiny(shapes_root, *tiles, "trainer.max_steps=3", "task.model.box_score_thresh=0.2")
    train(compose_config(overrides, tmp_path / "run"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    metrics = evaluate(compose_config([*overrides, f"ckpt_path={checkpoint}"], tmp_path / "eval"))
    rows = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert rows and max(r["bbox"][0] + r["bbox"][2] for r in rows) > 40  # boxes beyond the first tile
    coco_gt = load_coco(shapes_root / "annotations" / "instances_val2017.json")
    assert metrics["map_50"] == pytest.approx(pycocotools_stats(coco_gt, rows)[1], abs=1e-9)
    predicted = predict(
        compose_config(
            [f"ckpt_path={checkpoint}", f"input={shapes_root / 'val2017'}", "score_threshold=0.0"],
            tmp_path / "predict",
            "predict",
        )
    )
    names = {image["id"]: image["file_name"] for image in coco_gt.dataset["images"]}

    def key(file_name: str, row: dict) -> tuple:
        return file_name, row["category_id"], [round(v, 1) for v in row["bbox"]]

    evaluated = sorted((key(names[r["image_id"]], r), r["bbox"]) for r in rows)
    predicted = sorted((key(r["file_name"], r), r["bbox"]) for r in predicted)
    assert [k for k, _ in evaluated] == [k for k, _ in predicted]
    for (_, a), (_, b) in zip(evaluated, predicted, strict=True):
        assert a == pytest.approx(b, abs=1e-3)


@pytest.mark.slow
def test_yolo_polygons_train_instance_segmentation(tmp_path: Path) -> None:
    root = ensure_shapes(tmp_path / "yolo_seg", TINY_SHAPES, "yolo_seg")
    data = ["dataset=yolo", f"dataset.root={root}", "dataset.num_workers=0", "dataset.resize_longest=null"]
    overrides = ["task=instance_segmentation", *data, "backbone=resnet18", *TINY_DETECTION, "trainer.max_steps=2"]
    train(compose_config(overrides, tmp_path / "run"))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert {"map_50", "mask_map_50"} <= set(metrics)
    assert json.loads((tmp_path / "run" / "segmentations.json").read_text())  # masks predicted and scored


@pytest.mark.slow
def test_evaluation_of_a_drawn_split_scores_the_training_runs_validation_images(tmp_path: Path) -> None:
    """The split a voc_folder run drew travels in its checkpoint: evaluating it from another directory with
    another split_seed (which would draw other images) reproduces the run's own final predictions."""
    root = ensure_shapes(tmp_path / "folder", TINY_SHAPES, "voc_folder")
    data = ["dataset=voc_folder", f"dataset.root={root}", "dataset.train_dir=train", "dataset.val_fraction=0.25",
            "dataset.num_workers=0", "dataset.resize_longest=null", "dataset.batch_size=4"]  # fmt: skip
    overrides = ["backbone=resnet18", *TINY_DETECTION, *data, "trainer.max_steps=3", "task.model.box_score_thresh=0.0"]
    trained = train(compose_config(overrides, tmp_path / "run"))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    again = evaluate(compose_config([*overrides, f"ckpt_path={best}", "dataset.split_seed=9"],
                                    tmp_path / "eval"))  # fmt: skip
    rows = [json.loads((tmp_path / run / "predictions.json").read_text()) for run in ("run", "eval")]
    assert len(rows[0]) > 10 and rows[0] == rows[1]
    assert again["map"] == trained["map"] and not (tmp_path / "eval" / "data_split.json").exists()


@pytest.mark.slow
def test_a_time_budget_on_the_command_line_plans_the_run_and_ends_it_with_a_validation(
    shapes_root: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    budget = [
        "trainer.max_time=00:00:00:15",
        "callbacks.time_budget.measure_steps=3",
        "trainer.enable_progress_bar=false",
    ]
    started = time.monotonic()
    result = run_script("train.py", [*_tiny(shapes_root, *budget), f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    log = (run_dir / "train.log").read_text()
    assert (
        "trainer.max_time=00:00:00:15 from the command line ends the run: trainer.max_epochs=4 that the configs" in log
    )
    planned = int(re.search(r"time budget: .* training ends at step (\d+), the learning-rate schedule sized", log)[1])
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    trained = [int(row["step"]) for row in rows if row.get("train/loss")]
    validated = [(int(row["step"]), float(row["val/map"])) for row in rows if row.get("val/map")][:-1]  # in training
    assert 0 < max(trained) <= planned  # stopped at the plan, or before it at the deadline
    assert validated[-1][0] >= max(trained)  # the last validation scored the final weights
    saved = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    best = next(v for k, v in saved["callbacks"].items() if k.startswith("RunCheckpoint"))["best_model_score"]
    assert float(best) == pytest.approx(max(score for _, score in validated))  # chosen from the whole run
    assert time.monotonic() - started < 15 + 60  # the budget, and start-up and the final evaluation
