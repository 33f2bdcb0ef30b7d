"""Precise BatchNorm statistics: the plain average of batch statistics, recomputed in a real run
before validation, and the warning when eval and train mode disagree."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tasks.core.runner import build_datamodule, build_module, build_trainer
from tasks.training.precise_bn import PreciseBatchNorm, recompute_statistics, trainable_batchnorms
from tests.support import TINY_DETECTION, TINY_SEGMENTATION, compose_config, shapes_overrides, shapes_seg_overrides


def test_statistics_are_the_average_of_the_batches_statistics() -> None:
    torch.manual_seed(0)
    layer = nn.BatchNorm1d(3, momentum=0.1)
    layer.running_mean.fill_(50.0)  # stale statistics
    batches = [torch.randn(8, 3) * (k + 1) + k for k in range(4)]
    used = recompute_statistics(layer.train(), layer, batches)
    assert used == 4 and layer.momentum == 0.1
    torch.testing.assert_close(layer.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(layer.running_var, torch.stack([b.var(0) for b in batches]).mean(0))


def _fit(root: Path, tmp_path: Path, *extra: str):
    overrides = ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(root), "trainer.max_steps=4",
                 "task.model.fpn_norm=bn", "callbacks.precise_bn.num_batches=3", *extra]  # fmt: skip
    cfg = compose_config(overrides, tmp_path)
    datamodule = build_datamodule(cfg)
    module, trainer = build_module(cfg, datamodule), build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


def _statistics(module) -> list[torch.Tensor]:
    return [
        buffer.clone() for layer in trainable_batchnorms(module) for buffer in (layer.running_mean, layer.running_var)
    ]


@pytest.mark.slow
def test_a_run_validates_with_statistics_recomputed_from_its_weights(shapes_root: Path, tmp_path: Path) -> None:
    trainer, module = _fit(shapes_root, tmp_path / "on")  # batches of 4: on by default
    callback = next(c for c in trainer.callbacks if isinstance(c, PreciseBatchNorm))
    assert trainable_batchnorms(module) and callback.active(trainer, module)
    after_validation = _statistics(module)
    module.train()  # the same step draws the same batches: recomputing gives the statistics validation used
    recompute_statistics(module, module.losses, callback._batches(trainer, module))
    for a, b in zip(after_validation, _statistics(module), strict=True):
        torch.testing.assert_close(a, b)
    _, plain = _fit(shapes_root, tmp_path / "off", "callbacks.precise_bn.enabled=false")
    assert any(not torch.allclose(a, b) for a, b in zip(after_validation, _statistics(plain), strict=True))


@pytest.mark.slow
def test_running_statistics_far_from_the_batches_warn(shapes_root: Path, tmp_path: Path) -> None:
    trainer, module = _fit(shapes_root, tmp_path, "callbacks.precise_bn.enabled=false")
    callback = next(c for c in trainer.callbacks if isinstance(c, PreciseBatchNorm))
    for layer in trainable_batchnorms(module):
        layer.running_var.fill_(1e-4)  # as if trained on other data
    before = _statistics(module)
    with pytest.warns(UserWarning, match=r"running statistics \(eval mode, .*\) is .* times the loss"):
        callback._compare_modes(trainer, module)
    for a, b in zip(before, _statistics(module), strict=True):  # the comparison leaves them as they were
        torch.testing.assert_close(a, b)


def test_layers_the_forward_never_reaches_keep_their_statistics() -> None:
    torch.manual_seed(0)
    reached, unreached = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    model = nn.ModuleDict({"reached": reached, "unreached": unreached}).train()
    unreached.running_mean.fill_(5.0)
    unreached.running_var.fill_(7.0)
    unreached.num_batches_tracked.fill_(11)
    batches = [torch.randn(8, 3) for _ in range(3)]
    recompute_statistics(model, reached, batches)  # the forward stops before the second layer
    assert torch.equal(unreached.running_mean, torch.full((3,), 5.0))
    assert torch.equal(unreached.running_var, torch.full((3,), 7.0))
    assert int(unreached.num_batches_tracked) == 11
    torch.testing.assert_close(reached.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))


def _segmentation_parts(voc_root: Path, tmp_path: Path, *extra: str):
    cfg = compose_config([*TINY_SEGMENTATION, *shapes_seg_overrides(voc_root), "backbone.norm=bn", *extra], tmp_path)
    datamodule = build_datamodule(cfg)
    datamodule.setup()
    module = build_module(cfg, datamodule)
    trainer = SimpleNamespace(
        datamodule=datamodule, global_step=0, global_rank=0, strategy=SimpleNamespace(batch_to_device=lambda b: b)
    )
    return PreciseBatchNorm(enabled=True, num_batches=6, seed=0), trainer, module


def test_no_batch_of_one_where_the_data_module_refuses_them(shapes_voc_root: Path, tmp_path: Path) -> None:
    # 16 training images in batches of 3: 6 batches would end with one image, which ASPP cannot normalise
    callback, trainer, module = _segmentation_parts(shapes_voc_root, tmp_path, "dataset.batch_size=3")
    assert trainer.datamodule.drop_last_batch
    sizes = [len(images) for images, _ in callback._batches(trainer, module)]
    assert sizes == [3] * 5


def test_modes_are_compared_on_a_batch_train_mode_can_normalise(shapes_voc_root: Path, tmp_path: Path) -> None:
    # the VOC and COCO segmentation configs validate one image at a time
    callback, trainer, module = _segmentation_parts(shapes_voc_root, tmp_path, "dataset.val_batch_size=1")
    for layer in trainable_batchnorms(module):
        layer.running_var.fill_(0.25)  # each layer doubles what it normalises in eval mode
    with pytest.warns(UserWarning, match=r"running statistics \(eval mode"):
        callback._compare_modes(trainer, module)
