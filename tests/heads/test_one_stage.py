"""RetinaNet and FCOS: key for key and output for output torchvision's R50-FPN models; the validation pass
gives the training losses and the inference detections; COCO rows remapped by class name in every anchor
block; every backbone yaml trains with every one-stage model yaml."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torchvision.models.detection import (
    FCOS_ResNet50_FPN_Weights,
    RetinaNet_ResNet50_FPN_V2_Weights,
    RetinaNet_ResNet50_FPN_Weights,
    fcos_resnet50_fpn,
    retinanet_resnet50_fpn,
    retinanet_resnet50_fpn_v2,
)

from backbones import ResNetBackbone
from heads.one_stage import build_fcos, build_retinanet
from tests.support import BACKBONES, CONF_DIR, backbone_from_yaml

SIZE = dict(min_size=160, max_size=160, box_score_thresh=0.0)
V2 = dict(head_norm="gn", fpn_extra="p6p7_c5", box_loss="giou")  # conf/model/retinanet_v2.yaml
MODELS = {
    "retinanet": (build_retinanet, retinanet_resnet50_fpn, RetinaNet_ResNet50_FPN_Weights.COCO_V1),
    "retinanet_v2": (
        partial(build_retinanet, **V2),
        retinanet_resnet50_fpn_v2,
        RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1,
    ),
    "fcos": (build_fcos, fcos_resnet50_fpn, FCOS_ResNet50_FPN_Weights.COCO_V1),
}


def _model_config(model: str):
    """conf/model/<model>.yaml with its defaults (a variant such as retinanet_v2 builds on another yaml)."""
    with initialize_config_dir(config_dir=str(CONF_DIR / "model"), version_base="1.3"):
        return compose(model).task.model  # the files' package


ONE_STAGE_CONFIGS = sorted(
    p.stem for p in (CONF_DIR / "model").glob("*.yaml") if _model_config(p.stem)._target_.startswith("heads.one_stage.")
)


def _torchvision(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"score_thresh": 0.0, "min_size": 160, "max_size": 160}
    return MODELS[name][1](weights=None, weights_backbone=None, num_classes=91, **options)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[10.0, 12.0, 70.0, 60.0], [80.0, 30.0, 140.0, 120.0]]), "labels": torch.tensor([1, 5])},
        {"boxes": torch.tensor([[20.0, 20.0, 50.0, 90.0]]), "labels": torch.tensor([3])},
    ]


def _images() -> list[torch.Tensor]:
    return [torch.rand(3, 150, 170, generator=torch.Generator().manual_seed(i)) for i in range(2)]


@pytest.mark.parametrize("name", list(MODELS))
def test_state_dict_and_outputs_are_torchvisions(name: str) -> None:
    theirs = _torchvision(name).eval()
    ours = MODELS[name][0](ResNetBackbone("resnet50", norm="bn"), num_classes=90, fpn_norm="none", **SIZE)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    with torch.no_grad():
        theirs_out, ours_out = theirs(_images()), ours(_images())
    for theirs_det, ours_det in zip(theirs_out, ours_out, strict=True):
        assert len(ours_det["boxes"]) == len(theirs_det["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(ours_det[key], theirs_det[key], atol=1e-4, rtol=0)
    theirs.train()
    ours.train()
    torch.testing.assert_close(ours(_images(), _targets()), theirs(_images(), _targets()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_validation_gives_the_training_losses_and_the_inference_detections(name: str) -> None:
    """Frozen statistics: the backbone computes the same in both modes, so one pass must give both."""
    torch.manual_seed(0)
    model = MODELS[name][0](ResNetBackbone("resnet18", norm="frozen_bn"), num_classes=5, fpn_channels=64, **SIZE)
    model.eval()
    with torch.no_grad():
        losses, detections = model.losses_and_detections(_images(), _targets())
        expected_detections = model(_images())
        model.train()
        expected_losses = model(_images(), _targets())
    assert set(losses) == set(expected_losses) and len(losses) >= 2
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-6)
    for found, expected in zip(detections, expected_detections, strict=True):
        assert len(found["boxes"]) > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(found[key], expected[key])


@pytest.mark.parametrize("name", list(MODELS))
def test_coco_weights_pick_each_class_row_in_every_anchor_block(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import heads.detector_weights as detector_weights

    source = _torchvision(name).state_dict()
    asked = []
    monkeypatch.setattr(
        detector_weights, "torchvision_state_dict", lambda weights, **_: asked.append(weights) or dict(source)
    )
    names = ["dog", "person", "car"]  # torchvision's rows 18, 1, 3
    model = MODELS[name][0](ResNetBackbone("resnet50", norm="bn"), num_classes=3, weights="coco", class_names=names)
    assert asked == [MODELS[name][2]]
    ours, rows = model.state_dict(), [0, 18, 1, 3]
    anchors = 9 if name.startswith("retinanet") else 1
    for suffix in ("weight", "bias"):
        key = f"head.classification_head.cls_logits.{suffix}"
        picked = source[key].reshape(anchors, 91, *source[key].shape[1:])[:, rows]
        torch.testing.assert_close(ours[key], picked.reshape(ours[key].shape), rtol=0, atol=0)
    for key, value in source.items():
        if "cls_logits" not in key:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def _tiny_model(model: str, backbone: str) -> torch.nn.Module:
    config = _model_config(model)
    config.backbone = None
    options = dict(num_classes=5, min_size=64, max_size=64, fpn_channels=32, anchor_sizes=[8, 16, 32, 64, 128])
    return instantiate(config, backbone=backbone_from_yaml(backbone), **options)


@pytest.mark.slow
@pytest.mark.parametrize("model", ONE_STAGE_CONFIGS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_trains_two_steps_with_every_one_stage_model(model: str, backbone: str) -> None:
    torch.manual_seed(0)
    detector = _tiny_model(model, backbone).train()
    optimizer = torch.optim.SGD([p for p in detector.parameters() if p.requires_grad], lr=1e-3)
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 64)]
    targets = [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    before = [p.detach().clone() for p in detector.backbone.body.parameters() if p.requires_grad]
    for _ in range(2):
        optimizer.zero_grad()
        total = sum(detector(images, targets).values())
        assert torch.isfinite(total)
        total.backward()
        optimizer.step()
    after = [p for p in detector.backbone.body.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # the body learns
    assert all(torch.isfinite(p).all() for p in after)


def test_the_one_stage_configs_are_found() -> None:
    assert ONE_STAGE_CONFIGS == ["fcos", "retinanet", "retinanet_v2"]
    assert Path(CONF_DIR / "model" / "retinanet.yaml").is_file()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize(("head_norm", "groupnorms"), [("gn", 8), ("none", 0)])
def test_head_norm_puts_groupnorm_after_each_head_conv(name: str, head_norm: str, groupnorms: int) -> None:
    """Four convs in each of the classification and box heads: eight GroupNorms, or none."""
    model = MODELS[name][0](ResNetBackbone("resnet18"), num_classes=3, fpn_channels=64, head_norm=head_norm)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.head.modules()) == groupnorms
    model.train()
    boxes = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([1])}
    assert all(torch.isfinite(v) for v in model([torch.rand(3, 64, 64)], [boxes]).values())
