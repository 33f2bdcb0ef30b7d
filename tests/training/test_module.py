"""The task modules' shared base: the linear learning-rate rule and the eval-mode loss check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tasks.training.module import TaskModule, scaled_lr


def test_linear_scaling_rule() -> None:
    assert scaled_lr(0.02, 16, 4) == (pytest.approx(0.005), "lr 0.005 = 0.02 x 4 / 16")
    assert scaled_lr(0.02, 16, 64)[0] == pytest.approx(0.08)
    assert scaled_lr(0.01, None, 8)[0] == 0.01  # no reference batch: as given


def _module(train_losses: list[float], val_losses: list[float]) -> TaskModule:
    module = TaskModule(nn.Linear(2, 2), optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1))
    module._trainer = SimpleNamespace(sanity_checking=False)
    for loss in train_losses:
        module.record_train_loss(torch.tensor(loss))
    for loss in val_losses:
        module.record_val_loss(torch.tensor(loss), weight=2)
    return module


def test_a_validation_loss_orders_of_magnitude_above_training_warns() -> None:
    with pytest.warns(
        UserWarning, match=r"validation loss 1\.5e\+32 is .* times the training loss 0\.75.*backbone\.norm=gn"
    ):
        _module([0.5, 1.0], [1.5e32]).check_loss_scale()
    with pytest.warns(UserWarning, match="validation loss nan"):
        _module([0.5], [float("nan")]).check_loss_scale()


def test_an_ordinary_gap_does_not_warn(recwarn: pytest.WarningsRecorder) -> None:
    _module([0.5, 1.0], [3.0, 5.0]).check_loss_scale()  # overfitting-sized gaps are no sign of broken statistics
    assert not [w for w in recwarn if "validation loss" in str(w.message)]
