"""Every model yaml (conf/model/) builds on a small backbone and predicts; each task picks its model
by default and ``model=NAME`` swaps it. A new model is picked up from the folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from tests.support import CONF_DIR, compose_config

MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
TASK_MODELS = {
    "detection": "faster_rcnn",
    "instance_segmentation": "mask_rcnn",
    "segmentation": "deeplab",
    "classification": "classifier",
    "panoptic_segmentation": "panoptic_fpn",
}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_builds_and_predicts(model: str, tmp_path: Path) -> None:
    cfg = compose_config([f"model={model}", "backbone=resnet18", "~recipe"], tmp_path)
    small = {"num_classes": 3, "min_size": 64, "max_size": 64, "output_stride": None, "stuff_names": ["sky", "sea"]}
    network = instantiate(cfg.task.model, **{k: v for k, v in small.items() if k in cfg.task.model}).eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        outputs = network(list(images)) if isinstance(network, GeneralizedRCNN) else network(images)
    tensors = [t for o in outputs for t in o.values()] if isinstance(outputs, list) else (
        list(outputs.values()) if isinstance(outputs, dict) else [outputs]
    )  # fmt: skip
    assert tensors and all(torch.isfinite(t.float()).all() for t in tensors)


@pytest.mark.parametrize("task, model", TASK_MODELS.items())
def test_each_task_picks_its_model_and_model_swaps_it(task: str, model: str, tmp_path: Path) -> None:
    chosen = compose_config([f"task={task}", "~recipe"], tmp_path).task.model._target_
    assert chosen == compose_config([f"model={model}", "~recipe"], tmp_path).task.model._target_
    other = next(m for m in MODELS if m != model)
    swapped = compose_config([f"task={task}", f"model={other}", "~recipe"], tmp_path).task.model._target_
    assert swapped == compose_config([f"model={other}", "~recipe"], tmp_path).task.model._target_ != chosen
