"""Every backbone config: contract matches real tensors, detection losses train, freezing works.

Parametrized over ``conf/backbone/*.yaml``: a new backbone yaml is tested without editing this file.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead

from backbones import TimmBackbone
from heads import build_faster_rcnn
from heads.deeplab import build_deeplab
from tests.support import BACKBONE_CONFIGS, BACKBONES, backbone_from_yaml

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


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0], [30.0, 30.0, 60.0, 62.0]]), "labels": torch.tensor([1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]


@pytest.mark.parametrize("name", BACKBONES)
def test_contract_matches_tensors(name: str) -> None:
    backbone = backbone_from_yaml(name).eval()
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        features = backbone(x)
    shapes = backbone.output_shape()
    assert list(features) == list(shapes)
    for feature_name, feature in features.items():
        spec = shapes[feature_name]
        assert feature.shape[1] == spec.channels
        assert (x.shape[-2] / feature.shape[-2], x.shape[-1] / feature.shape[-1]) == (spec.stride, spec.stride)


@pytest.mark.parametrize("name", BACKBONES)
def test_detection_training_step(name: str) -> None:
    torch.manual_seed(0)
    model = build_faster_rcnn(backbone_from_yaml(name), num_classes=3, **TINY_HEAD).train()
    losses = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)], _targets())
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    body = model.backbone.body
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in body.parameters())


@pytest.mark.parametrize("name", BACKBONES)
def test_segmentation_forward(name: str) -> None:
    model = build_deeplab(
        backbone_from_yaml(name), num_classes=3, variant="v3plus", channels=32, atrous_rates=[1, 2, 3]
    )
    out = model.eval()(torch.rand(2, 3, 64, 96))
    assert out["out"].shape == (2, 3, 64, 96) and out["aux"].shape == (2, 3, 64, 96)


@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("trainable_stages", [0, 2])
def test_frozen_stages_get_no_gradient(name: str, trainable_stages: int) -> None:
    backbone = backbone_from_yaml(name, trainable_stages=trainable_stages).train()
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
    plain = build_faster_rcnn(backbone_from_yaml("resnet18"), num_classes=3, **TINY_HEAD)
    normed = build_faster_rcnn(backbone_from_yaml("resnet18"), num_classes=3, fpn_norm="bn", **TINY_HEAD)
    fpn_norms = [m for m in normed.backbone.fpn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(fpn_norms) == 8  # one after each lateral and each output conv of the 4 levels
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.backbone.fpn.modules())
    assert normed.backbone.output_shape() == plain.backbone.output_shape()
    with pytest.raises(ValueError, match="'ln'"):
        build_faster_rcnn(backbone_from_yaml("resnet18"), num_classes=3, fpn_norm="ln", **TINY_HEAD)


@pytest.mark.parametrize(
    ("extra", "levels"), [("maxpool", ["p3", "p4", "p5", "p6"]), ("p6p7", ["p3", "p4", "p5", "p6", "p7"])]
)
def test_fpn_levels_width_and_extra_blocks(extra: str, levels: list[str]) -> None:
    model = build_faster_rcnn(
        backbone_from_yaml("resnet18"),
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
        build_faster_rcnn(backbone_from_yaml("resnet18"), num_classes=3, **TINY_HEAD, fpn_levels=["c4", "c5"])


def _batch_norms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("name", BACKBONES)
def test_group_norm_reaches_backbone_fpn_and_box_head(name: str) -> None:
    torch.manual_seed(0)
    backbone = backbone_from_yaml(name, norm="gn")
    assert backbone.norm == "gn" and not _batch_norms(backbone)
    model = build_faster_rcnn(backbone, num_classes=3, **TINY_HEAD).train()
    assert model.backbone.norm == "gn" and any(isinstance(m, nn.GroupNorm) for m in model.backbone.fpn.modules())
    head = model.roi_heads.box_head
    assert isinstance(head, FastRCNNConvFCHead) and any(isinstance(m, nn.GroupNorm) for m in head.modules())
    # GroupNorm normalises each image alone: one image per batch trains
    losses = model([torch.rand(3, 64, 64)], _targets()[:1])
    assert torch.isfinite(sum(losses.values()))
    plain = build_faster_rcnn(backbone_from_yaml(name), num_classes=3, **TINY_HEAD)
    assert isinstance(plain.roi_heads.box_head, TwoMLPHead) and not any(
        isinstance(m, nn.GroupNorm) for m in plain.backbone.fpn.modules()
    )


@pytest.mark.parametrize("name", BACKBONES)
def test_sync_batchnorm_conversion_keeps_frozen_stages_frozen(name: str) -> None:
    backbone = backbone_from_yaml(name, norm="bn", trainable_stages=2)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(backbone).train()  # what trainer.sync_batchnorm does
    stages = converted.stages()
    frozen, trainable = stages[:3], stages[3:]
    before = {k: v.clone() for k, v in converted.state_dict().items()}
    converted(torch.rand(2, 3, 64, 64))  # a training-mode forward (no process group: plain batch statistics)
    for stage in frozen:
        for module in stage:
            assert not _batch_norms(module) and all(not m.training for m in module.modules())
    has_batch_norm = bool(_batch_norms(backbone_from_yaml(name, norm="bn")))  # ConvNeXt normalises with LayerNorm
    synced = any(isinstance(m, nn.SyncBatchNorm) for stage in trainable for module in stage for m in module.modules())
    assert synced == has_batch_norm
    frozen_keys = {
        f"{prefix}.{key}"
        for prefix, module in converted.named_modules()
        if any(module is m for stage in frozen for m in stage)
        for key in module.state_dict()
    }
    after = converted.state_dict()
    assert frozen_keys and all(torch.equal(after[k], before[k]) for k in frozen_keys)
    assert any(not torch.equal(after[k], before[k]) for k in after if k.endswith("running_mean")) == has_batch_norm


def _randomise_statistics(module: nn.Module) -> None:
    generator = torch.Generator().manual_seed(0)
    for norm in _batch_norms(module):
        norm.running_mean.copy_(torch.randn(norm.num_features, generator=generator))
        norm.running_var.copy_(torch.rand(norm.num_features, generator=generator) + 0.5)
        if norm.affine:
            norm.weight.data.copy_(torch.randn(norm.num_features, generator=generator))


@pytest.mark.parametrize(
    "make",
    [*(lambda norm, n=n: backbone_from_yaml(n, norm=norm) for n in BACKBONE_CONFIGS),
     lambda norm: TimmBackbone("efficientnet_b0", norm=norm),  # fused BatchNormAct2d layers
     lambda norm: TimmBackbone("mobilenetv3_small_050", norm=norm)],
    ids=[*BACKBONE_CONFIGS, "timm-efficientnet_b0", "timm-mobilenetv3_small_050"],
)  # fmt: skip
def test_frozen_statistics_never_change_an_eval_forward(make) -> None:
    trainable = make("bn")
    _randomise_statistics(trainable)
    frozen = make("frozen_bn")
    frozen.load_state_dict(trainable.state_dict(), strict=False)
    frozen_norms = [m for m in frozen.modules() if type(m).__name__.startswith("FrozenBatchNorm")]  # timm's too
    assert not _batch_norms(frozen) and bool(frozen_norms) == bool(_batch_norms(trainable))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected, actual = trainable.eval()(image), frozen.eval()(image)
    for key in expected:  # float rounding grows through deep random networks: relative to the feature scale
        scale = float(expected[key].abs().max())
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-3, atol=1e-3 * scale)
