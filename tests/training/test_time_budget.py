"""The time budget (``trainer.max_time``) on a fake clock: the schedule sized to the steps the budget
allows, validations spaced to their share, training stopped in time for a last validation."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tasks.core.recipes import apply_command_line_limits
from tasks.training.schedules import warmup_then_decay
from tasks.training.time_budget import TimeBudget, next_interval, planned_steps
from tests.support import compose_config

STEP_SECONDS, VALIDATION_SECONDS, BUDGET_SECONDS = 1.0, 6.0, 120


def _learning_rates(total: int, steps: int, resize_at: int | None = None, new_total: int | None = None) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = warmup_then_decay(optimizer, total_steps=total, warmup_steps=50, decay="cosine")
    rates = []
    for step in range(steps):
        if step == resize_at:
            schedule.resize(new_total, max_warmup_fraction=0.1)
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return rates


def test_a_resized_schedule_is_the_schedule_of_its_new_length_from_the_step_it_reached() -> None:
    resized = _learning_rates(total=10_000, steps=120, resize_at=11, new_total=120)
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    # the new length's schedule, its warm-up capped at a tenth of it (12 steps instead of 50)
    fresh = _learning_rates(total=120, steps=120)
    fresh_capped = warmup_then_decay(optimizer, total_steps=120, warmup_steps=12, decay="cosine")
    expected = []
    for _ in range(120):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        fresh_capped.step()
    assert resized[11:] == pytest.approx(expected[11:], rel=1e-9, abs=1e-12)
    assert resized[:11] != pytest.approx(expected[:11])  # the steps before the plan ran the provisional schedule
    assert fresh[60] > expected[60]  # uncapped, 50 warm-up steps of 120 would still be climbing


def test_a_new_validation_interval_never_falls_due_at_once() -> None:
    # Lightning validates after unit i where (i + 1) % interval == 0
    assert next_interval(done=0, wanted=14) == 15  # 14 would validate again after unit 13: 13 units on
    assert next_interval(done=13, wanted=15) == 29  # 15..28 would fall due within 15 units of unit 13
    assert next_interval(done=5, wanted=4, multiple=2) == 6  # 4 falls due after unit 7; 6 after unit 11


def test_the_steps_a_budget_allows() -> None:
    assert planned_steps(100.0, 0.5, 0.1) == 180
    assert planned_steps(0.1, 1.0, 0.1) == 1


class _FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Ticker(L.Callback):
    """Training batches and validations take fixed fake times; records where validations happen."""

    def __init__(self, clock: _FakeClock) -> None:
        self.clock, self.validated_at = clock, []

    def on_train_batch_start(self, *args) -> None:
        self.clock.now += STEP_SECONDS

    def on_validation_start(self, trainer: L.Trainer, *args) -> None:
        self.clock.now += VALIDATION_SECONDS

    def on_validation_end(self, trainer: L.Trainer, *args) -> None:
        self.validated_at.append(trainer.global_step)


class _Regression(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        features, target = batch
        return nn.functional.mse_loss(self.layer(features), target)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", nn.functional.mse_loss(self.layer(batch[0]), batch[1]))

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1)
        from tasks.training.module import schedule_length

        schedule = warmup_then_decay(optimizer, total_steps=schedule_length(self.trainer), warmup_steps=500)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _data(batches: int) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batches * 2, 4, generator=generator)
    return DataLoader(TensorDataset(features, features.sum(1, keepdim=True)), batch_size=2)


def test_a_budget_sizes_the_schedule_spaces_validations_and_ends_with_one(tmp_path) -> None:
    clock = _FakeClock()
    budget, ticker = TimeBudget(measure_steps=10, validation_share=0.1, clock=clock), _Ticker(clock)
    trainer = L.Trainer(
        max_time={"seconds": BUDGET_SECONDS}, max_epochs=-1, max_steps=-1, callbacks=[budget, ticker],
        logger=False, enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Regression(), _data(4), _data(1))  # epochs of 4 steps, each validated at first
    assert budget.step_time == pytest.approx(STEP_SECONDS)
    # planned after 11 steps and one validation: what is left, less a tenth for validations, at a second a
    # step; training ends there, or a step or two before where the validations took more than their tenth
    assert budget.planned_total == 11 + math.floor((BUDGET_SECONDS - 11 - VALIDATION_SECONDS) * 0.9)
    assert budget.planned_total - 2 <= trainer.global_step <= budget.planned_total
    assert clock.now <= BUDGET_SECONDS
    assert ticker.validated_at[-1] == trainer.global_step  # the last validation scores the final weights
    validations = len(ticker.validated_at)
    assert (
        validations * VALIDATION_SECONDS <= 0.1 * BUDGET_SECONDS + 2 * VALIDATION_SECONDS
    )  # the first two ran unspaced
    assert trainer.check_val_every_n_epoch == 1  # set for the last validation
    schedule = trainer.lr_scheduler_configs[0].scheduler
    assert schedule.get_last_lr()[0] < 0.01 * 0.1  # the cosine reached its end: the schedule fits the budget


def test_without_a_budget_nothing_changes(tmp_path) -> None:
    budget = TimeBudget(clock=_FakeClock())
    trainer = L.Trainer(
        max_steps=6, callbacks=[budget], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(_Regression(), _data(4), _data(1))
    assert trainer.global_step == 6 and budget.planned_total is None


def test_a_budget_on_the_command_line_lifts_the_configured_limits(tmp_path) -> None:
    overrides = ["trainer.max_time=00:00:10:00"]
    cfg = compose_config(overrides, tmp_path)
    assert cfg.trainer.max_epochs > 0  # the recipe's epochs
    apply_command_line_limits(cfg, overrides)
    assert (cfg.trainer.max_epochs, cfg.trainer.max_steps, cfg.trainer.max_time) == (-1, -1, "00:00:10:00")
    both = ["trainer.max_time=00:00:10:00", "trainer.max_epochs=3"]
    cfg = compose_config(both, tmp_path)
    apply_command_line_limits(cfg, both)
    assert cfg.trainer.max_epochs == 3  # both given: whichever comes first
    assert math.isfinite(cfg.trainer.max_epochs)
