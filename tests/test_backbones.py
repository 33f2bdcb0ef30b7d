"""Every backbone config: contract matches real tensors, detection losses train, freezing works.

Parametrized over ``conf/backbone/*.yaml``: a new backbone yaml is tested without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from heads import build_faster_rcnn
from heads.deeplab import build_deeplab
from tests.conftest import BACKBONE_CONFIGS, CONF_DIR

TINY_HEAD = dict(
    min_size=64,
    max_size=64,
    anchor_sizes=[8, 16, 32, 64, 128],
    fpn_channels=32,
    representation_size=64,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    box_batch_size_per_image=16,
)


def _backbone(name: str, **overrides):
    cfg = OmegaConf.load(CONF_DIR / "backbone" / f"{name}.yaml")
    return instantiate(OmegaConf.merge(cfg, overrides))


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_contract_matches_tensors(name: str) -> None:
    backbone = _backbone(name).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        features = backbone(x)
    shapes = backbone.output_shape()
    assert list(features) == list(shapes)
    for feature_name, feature in features.items():
        spec = shapes[feature_name]
        assert feature.shape[1] == spec.channels
        assert (x.shape[-2] / feature.shape[-2], x.shape[-1] / feature.shape[-1]) == (spec.stride, spec.stride)


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_detection_training_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(_backbone(name), num_classes=3, **TINY_HEAD).train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)], _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    body = model.backbone.body
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in body.parameters())


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
def test_segmentation_forward(name: str) -> None:
    model = build_deeplab(_backbone(name), num_classes=3, variant="v3plus", channels=32, atrous_rates=[1, 2, 3])
    out = model.eval()(torch.rand(2, 3, 64, 96))
    assert out["out"].shape == (2, 3, 64, 96) and out["aux"].shape == (2, 3, 64, 96)


@pytest.mark.parametrize("name", BACKBONE_CONFIGS)
@pytest.mark.parametrize("trainable_stages", [0, 2])
def test_frozen_stages_get_no_gradient(name: str, trainable_stages: int) -> None:
    backbone = _backbone(name, trainable_stages=trainable_stages).train()
    image = torch.rand(2, 3, 64, 64, requires_grad=True)  # so a graph exists even when all is frozen
    sum(f.mean() for f in backbone(image).values()).backward()
    stages = backbone.stages()
    assert len(stages) == 5 and all(stages)
    for index, stage in enumerate(stages):
        trainable = index >= len(stages) - trainable_stages
        for parameter in (p for module in stage for p in module.parameters()):
            assert parameter.requires_grad == trainable
            assert (parameter.grad is not None) == trainable
        # frozen stages also keep their normalisation statistics
        assert all(not m.training for m in stage) or trainable


def test_fpn_norm_adds_batchnorm_without_changing_the_contract() -> None:
    plain = build_faster_rcnn(_backbone("resnet18"), num_classes=3, **TINY_HEAD)
    normed = build_faster_rcnn(_backbone("resnet18"), num_classes=3, fpn_norm="bn", **TINY_HEAD)
    fpn_norms = [m for m in normed.backbone.fpn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(fpn_norms) == 8  # one after each lateral and each output conv of the 4 levels
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.backbone.fpn.modules())
    assert normed.backbone.output_shape() == plain.backbone.output_shape()
    with pytest.raises(ValueError, match="'gn'"):
        build_faster_rcnn(_backbone("resnet18"), num_classes=3, fpn_norm="gn", **TINY_HEAD)


@pytest.mark.parametrize(
    ("extra", "levels"), [("maxpool", ["p3", "p4", "p5", "p6"]), ("p6p7", ["p3", "p4", "p5", "p6", "p7"])]
)
def test_fpn_levels_width_and_extra_blocks(extra: str, levels: list[str]) -> None:
    model = build_faster_rcnn(
        _backbone("resnet18"),
        num_classes=3,
        **{**TINY_HEAD, "fpn_channels": 48, "anchor_sizes": [16, 32, 64, 128, 256][: len(levels)]},
        fpn_levels=["c3", "c4", "c5"],
        fpn_extra=extra,
    )
    shapes = model.backbone.output_shape()
    assert list(shapes) == levels and {s.channels for s in shapes.values()} == {48}
    assert [s.stride for s in shapes.values()] == [2 ** int(name[1]) for name in levels]
    losses = model.train()([torch.rand(3, 64, 64)], _targets()[:1])
    assert torch.isfinite(sum(losses.values()))
    with pytest.raises(ValueError, match="one size per level"):
        build_faster_rcnn(_backbone("resnet18"), num_classes=3, **TINY_HEAD, fpn_levels=["c4", "c5"])
