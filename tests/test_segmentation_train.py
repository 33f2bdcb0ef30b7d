"""Segmentation end to end: train and evaluate commands, and carrying a detection backbone over."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from backbones import FeaturePyramid
from tasks.runner import build_datamodule, build_module
from tests.conftest import (
    TINY_DETECTION,
    TINY_SEGMENTATION,
    compose_config,
    run_script,
    shapes_overrides,
    shapes_seg_overrides,
)


def test_train_then_evaluate_with_masks(shapes_voc_root: Path, tmp_path: Path) -> None:
    overrides = [*TINY_SEGMENTATION, *shapes_seg_overrides(shapes_voc_root)]
    train = run_script("train.py", [*overrides, "trainer.max_steps=3", f"hydra.run.dir={tmp_path / 'train'}"])
    assert train.returncode == 0, train.stderr[-3000:]
    metrics = json.loads((tmp_path / "train" / "metrics.json").read_text())
    assert {"miou", "pixel_acc", "mean_class_acc", "per_class", "loss"} <= set(metrics)
    assert 0 <= metrics["miou"] <= 1 and set(metrics["per_class"]) <= {
        "background",
        "circle",
        "square",
        "triangle",
        "cross",
    }
    evaluate = run_script(
        "evaluate.py",
        [*overrides, f"ckpt_path={metrics['checkpoint']}", "save_masks=true", f"hydra.run.dir={tmp_path / 'eval'}"],
    )
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "iou" in evaluate.stdout and "background" in evaluate.stdout
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["miou"] == pytest.approx(metrics["miou"], abs=1e-9)
    masks = sorted((tmp_path / "eval" / "masks").glob("*.png"))
    assert len(masks) == 8 and Image.open(masks[0]).mode == "P"
    assert set(np.unique(np.array(Image.open(masks[0])))) <= {0, 1, 2, 3, 4}


def test_detection_backbone_arrives_unchanged_in_segmentation(
    shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    detection_cfg = compose_config(["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root)], tmp_path)
    detection = build_module(detection_cfg, build_datamodule(detection_cfg))
    torch.manual_seed(3)
    for parameter in detection.parameters():  # weights no fresh model would have
        parameter.data.normal_()
    checkpoint = tmp_path / "detection.ckpt"
    torch.save({"state_dict": detection.state_dict(), "global_step": 7}, checkpoint)

    seg_cfg = compose_config(
        [*TINY_SEGMENTATION, *shapes_seg_overrides(shapes_voc_root), f"backbone.init={checkpoint}", "backbone.norm=bn"],
        tmp_path,
    )
    segmentation = build_module(seg_cfg, build_datamodule(seg_cfg))
    body = {
        k.removeprefix("model.backbone.body."): v
        for k, v in detection.state_dict().items()
        if k.startswith("model.backbone.body.")
    }
    resnet = segmentation.model.backbone
    resnet = resnet.body if isinstance(resnet, FeaturePyramid) else resnet  # the shapes recipe adds a FPN
    ours = resnet.state_dict()
    assert set(body) == set(ours)
    for key, value in body.items():
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
