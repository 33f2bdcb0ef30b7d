"""Warm-up then decay, against hand-computed learning rates."""

from __future__ import annotations

import math

import pytest
import torch

from tasks.training.optim import build_optimizer
from tasks.training.schedules import warmup_then_decay


def _lrs(steps: int, **kwargs) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = warmup_then_decay(optimizer, total_steps=steps, **kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_linear_warmup_then_cosine() -> None:
    lrs = _lrs(20, warmup_steps=4, warmup_factor=0.2)
    assert lrs[:4] == pytest.approx([0.1 * (0.2 + 0.8 * k / 4) for k in range(4)])
    assert lrs[4:] == pytest.approx([0.05 * (1 + math.cos(math.pi * k / 16)) for k in range(16)])


def test_step_decay_at_fractions_of_training() -> None:
    lrs = _lrs(100, warmup_steps=0, decay="step", milestones=[0.5, 0.75], gamma=0.1)
    assert lrs[49] == pytest.approx(0.1) and lrs[50] == pytest.approx(0.01) and lrs[75] == pytest.approx(0.001)


def test_unknown_decay_is_explained() -> None:
    with pytest.raises(ValueError, match="'linear'"):
        _lrs(5, decay="linear")


def test_optimizers_by_name() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = build_optimizer(params, name="sgd", lr=0.1, momentum=0.8)
    adamw = build_optimizer(params, name="adamw", lr=0.001, momentum=0.8, betas=[0.8, 0.9])
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["betas"] == (0.8, 0.9)
    with pytest.raises(ValueError, match="'adam'"):
        build_optimizer(params, name="adam", lr=0.1)
