"""Every detection model yaml implements the detector protocol (heads/protocol.py) that training and
inference rely on, and a model that does not is refused when the detection module is built."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from heads.protocol import Detector
from tasks.training.detection import DetectionModule
from tests.heads.test_models import MODELS
from tests.support import compose_config

SMALL = {"num_classes": 3, "min_size": 64, "max_size": 64, "output_stride": None, "stuff_names": ["sky", "sea"]}


def _build(model: str, tmp_path: Path) -> torch.nn.Module:
    cfg = compose_config([f"model={model}", "backbone=resnet18", "~recipe"], tmp_path)
    return instantiate(cfg.task.model, **{k: v for k, v in SMALL.items() if k in cfg.task.model})


def _targets(model: torch.nn.Module) -> list[dict[str, torch.Tensor]]:
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0]])
    target = {"boxes": box, "labels": torch.tensor([1])}
    target["masks"] = torch.zeros(1, 64, 64, dtype=torch.uint8)
    target["masks"][:, 8:40, 8:40] = 1
    target["sem_seg"] = torch.ones(64, 64, dtype=torch.int64)
    return [target, {k: v.clone() for k, v in target.items()}]


@pytest.mark.parametrize("model", MODELS)
def test_detectors_implement_the_protocol_and_the_others_are_refused(model: str, tmp_path: Path) -> None:
    network = _build(model, tmp_path)
    options = {"optimizer": torch.optim.SGD}
    if not isinstance(network, Detector):  # segmenters and classifiers: the detection module says what is missing
        with pytest.raises(TypeError, match="lacks losses_and_detections, detections_per_img"):
            DetectionModule(network, **options)
        return
    DetectionModule(network, **options)
    network.detections_per_img = 7
    assert network.detections_per_img == 7
    submodules = set(map(id, network.modules()))
    assert network.trunk() and all(id(part) in submodules for part in network.trunk().values())
    images = list(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    network.eval()
    with torch.no_grad():
        losses, detections = network.losses_and_detections(images, _targets(network))
        plain = network(images)
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert len(detections) == 2 and all(len(d["boxes"]) <= 7 for d in plain)
    assert network.predicts_masks == ("masks" in plain[0])
