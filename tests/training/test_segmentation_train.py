"""Segmentation end to end: train and evaluate commands, and carrying a detection backbone over."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones import ResNetBackbone
from tasks.core.runner import build_datamodule, build_module, evaluate, train
from tests.support import (
    TINY_DETECTION,
    TINY_SEGMENTATION,
    compose_config,
    shapes_overrides,
    shapes_seg_overrides,
)


@pytest.mark.slow
def test_train_then_evaluate_with_masks(shapes_voc_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    overrides = [*TINY_SEGMENTATION, *shapes_seg_overrides(shapes_voc_root), "trainer.enable_progress_bar=false"]
    train(compose_config([*overrides, "trainer.max_steps=3"], tmp_path / "train"))
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert {"miou", "pixel_acc", "mean_class_acc", "per_class", "loss"} <= set(metrics)
    assert 0 <= metrics["miou"] <= 1 and set(metrics["per_class"]) <= {
        "background",
        "circle",
        "square",
        "triangle",
        "cross",
    }
    capsys.readouterr()
    evaluate(compose_config([*overrides, f"ckpt_path={metrics['checkpoint']}", "save_masks=true"], tmp_path / "eval"))
    printed = capsys.readouterr().out
    assert "iou" in printed and "background" in printed
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["miou"] == pytest.approx(metrics["miou"], abs=1e-9)
    masks = sorted((tmp_path / "eval" / "masks").glob("*.png"))
    assert len(masks) == 8 and Image.open(masks[0]).mode == "P"
    assert set(np.unique(np.array(Image.open(masks[0])))) <= {0, 1, 2, 3, 4}


def _task_overrides(task: str, shapes_root: Path, voc_root: Path) -> list[str]:
    if task == "segmentation":
        return [*TINY_SEGMENTATION, *shapes_seg_overrides(voc_root), "backbone.norm=bn"]
    return [f"task={task}", "backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root)]


def _resnet_body(module: torch.nn.Module) -> torch.nn.Module:
    """The ResNet itself, under whatever feature pyramid the task put on it."""
    return next(m for m in module.modules() if isinstance(m, ResNetBackbone))


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("detection", "segmentation"),
        ("instance_segmentation", "segmentation"),
        ("segmentation", "instance_segmentation"),
        ("detection", "instance_segmentation"),
    ],
)
def test_backbone_moves_unchanged_between_tasks(
    shapes_root: Path, shapes_voc_root: Path, tmp_path: Path, source: str, target: str
) -> None:
    source_cfg = compose_config(_task_overrides(source, shapes_root, shapes_voc_root), tmp_path)
    trained = build_module(source_cfg, build_datamodule(source_cfg))
    torch.manual_seed(3)
    for parameter in trained.parameters():  # weights no fresh model would have
        parameter.data.normal_()
    checkpoint = tmp_path / f"{source}.ckpt"
    torch.save({"state_dict": trained.state_dict(), "global_step": 7}, checkpoint)

    target_cfg = compose_config(
        [*_task_overrides(target, shapes_root, shapes_voc_root), f"backbone.init={checkpoint}"], tmp_path
    )
    received = build_module(target_cfg, build_datamodule(target_cfg))
    # BatchNorm's step counter exists only where the target trains its statistics
    sent, ours = (
        {k: v for k, v in _resnet_body(m).state_dict().items() if not k.endswith("num_batches_tracked")}
        for m in (trained, received)
    )
    assert set(sent) == set(ours)
    for key, value in sent.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_backbone_learns_slower_when_asked(shapes_voc_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(
        [
            *TINY_SEGMENTATION,
            *shapes_seg_overrides(shapes_voc_root),
            "task.module.backbone_lr_mult=0.1",
            "task.module.optimizer.lr=0.01",
            "task.module.scheduler=null",
        ],
        tmp_path,
    )
    module = build_module(cfg, build_datamodule(cfg))
    optimizer = module.configure_optimizers()["optimizer"]
    lrs = sorted(group["lr"] for group in optimizer.param_groups)
    assert lrs == pytest.approx([0.001, 0.01])


def _voc2012_segmentation(shapes_voc_root: Path, folder: Path) -> Path:
    """The shapes as VOC2012 ships its segmentation data: train and val image sets in one year."""
    devkit = folder / "VOCdevkit"
    shutil.copytree(shapes_voc_root / "VOC2012", devkit / "VOC2012")
    source, target = shapes_voc_root / "VOC2007", devkit / "VOC2012"
    val_ids = (source / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for file_id in val_ids:
        shutil.copy(source / "JPEGImages" / f"{file_id}.jpg", target / "JPEGImages")
        shutil.copy(source / "SegmentationClass" / f"{file_id}.png", target / "SegmentationClass")
    (target / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(val_ids) + "\n")
    return devkit


@pytest.mark.slow
def test_voc_segmentation_trains_and_validates_with_its_shipped_defaults(shapes_voc_root: Path, tmp_path: Path) -> None:
    """dataset=voc_seg validates one image at a time, and precise BN is on for its batches of 4: nothing
    but the model's size and the run's length is overridden."""
    devkit = _voc2012_segmentation(shapes_voc_root, tmp_path)
    overrides = [
        "task=segmentation", "dataset=voc_seg", f"dataset.root={devkit}", "backbone=resnet18", "backbone.weights=none",
        "dataset.crop_size=64", "dataset.num_workers=0", "trainer.max_steps=2", "trainer.val_check_interval=2",
        "callbacks.precise_bn.num_batches=2", "trainer.enable_progress_bar=false",
    ]  # fmt: skip
    cfg = compose_config(overrides, tmp_path / "run")
    assert cfg.dataset.val_batch_size == 1 and cfg.callbacks.precise_bn.enabled == "auto"
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["miou"] <= 1 and metrics["checkpoint"].endswith("best.ckpt")
