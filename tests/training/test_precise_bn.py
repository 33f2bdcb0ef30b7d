"""Precise BatchNorm statistics: the plain average of batch statistics, recomputed in a real run
before validation, and the warning when eval and train mode disagree."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from tasks.core.runner import build_datamodule, build_module, build_trainer
from tasks.training.precise_bn import PreciseBatchNorm, recompute_statistics, trainable_batchnorms
from tests.support import TINY_DETECTION, compose_config, shapes_overrides


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
    recompute_statistics(module, module.batch_loss, callback._batches(trainer, module))
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
