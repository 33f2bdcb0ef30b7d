"""Learning-rate schedules built from torch's own schedulers, stepped every optimizer step.

A schedule's saved state is only the number of steps it has taken (``StepCountSchedule``): a run
resumed with another length (``trainer.max_steps``, epochs, batch size) rebuilds the schedule for
its own total and replays those steps, instead of restoring the old total with the old state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import (
    CosineAnnealingLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    PolynomialLR,
    SequentialLR,
)

DECAYS = ("cosine", "step", "poly")


def warmup_then_decay(
    optimizer: Optimizer,
    *,
    total_steps: int,
    warmup_steps: int = 100,
    warmup_fraction: float | None = None,
    warmup_factor: float = 0.001,
    decay: str = "cosine",
    milestones: Sequence[float] = (0.67, 0.89),
    gamma: float = 0.1,
    min_lr_ratio: float = 0.0,
    power: float = 0.9,
) -> LRScheduler:
    """Linear warm-up from ``warmup_factor * lr`` over ``warmup_steps``, then cosine, step, or
    poly decay (``lr * (1 - t / T) ** power``, DeepLab's schedule).

    Step ``milestones`` are fractions of ``total_steps``, so the same config fits any
    training length; so does ``warmup_fraction`` (e.g. 5 of 600 epochs), which replaces
    ``warmup_steps`` when set.
    """
    options = dict(
        warmup_steps=warmup_steps, warmup_fraction=warmup_fraction, warmup_factor=warmup_factor, decay=decay,
        milestones=milestones, gamma=gamma, min_lr_ratio=min_lr_ratio, power=power,
    )  # fmt: skip
    return StepCountSchedule(
        _warmup_then_decay(optimizer, total_steps, **options), partial(_rebuilt, optimizer, options)
    )


def _rebuilt(optimizer: Optimizer, options: dict, total_steps: int, max_warmup_fraction: float) -> LRScheduler:
    warmup = options["warmup_steps"] if options["warmup_fraction"] is None else options["warmup_fraction"] * total_steps
    capped = min(round(warmup), round(max_warmup_fraction * total_steps))
    return _warmup_then_decay(optimizer, total_steps, **{**options, "warmup_steps": capped, "warmup_fraction": None})


def _warmup_then_decay(
    optimizer: Optimizer,
    total_steps: int,
    *,
    warmup_steps: int,
    warmup_fraction: float | None,
    warmup_factor: float,
    decay: str,
    milestones: Sequence[float],
    gamma: float,
    min_lr_ratio: float,
    power: float,
) -> LRScheduler:
    if warmup_fraction is not None:
        warmup_steps = round(warmup_fraction * total_steps)
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r} must be one of {DECAYS}")
    warmup_steps = max(0, min(warmup_steps, total_steps - 1))
    remaining = max(1, total_steps - warmup_steps)
    if decay == "cosine":
        base_lr = min(group["lr"] for group in optimizer.param_groups)
        main: LRScheduler = CosineAnnealingLR(optimizer, T_max=remaining, eta_min=base_lr * min_lr_ratio)
    elif decay == "poly":
        main = PolynomialLR(optimizer, total_iters=remaining, power=power)
    else:
        steps = sorted({max(1, round(m * total_steps) - warmup_steps) for m in milestones})
        main = MultiStepLR(optimizer, milestones=steps, gamma=gamma)
    if warmup_steps == 0:
        return main
    warmup = LinearLR(optimizer, start_factor=warmup_factor, total_iters=warmup_steps)
    return SequentialLR(optimizer, [warmup, main], milestones=[warmup_steps])


class StepCountSchedule(LRScheduler):
    """``schedule`` (just built, at its first step), whose state is the number of steps taken.

    ``load_state_dict`` puts the schedule and its optimizer's learning rates back to where they
    were when it was built, then steps it that many times: the learning rates are those of this
    schedule at that step, whatever total the checkpoint's run had. Torch's schedulers compute
    each rate from the previous one, so replaying gives the same numbers as stepping did.
    """

    def __init__(self, schedule: LRScheduler, rebuild: Callable[..., LRScheduler] | None = None) -> None:
        # no super().__init__: it would step the optimizer
        self.schedule, self.optimizer, self._rebuild = schedule, schedule.optimizer, rebuild
        self.base_lrs = [group["initial_lr"] for group in self.optimizer.param_groups]
        self.last_epoch = schedule.last_epoch
        self._start = (schedule.state_dict(), [group["lr"] for group in self.optimizer.param_groups])

    def get_last_lr(self) -> list[float]:
        return self.schedule.get_last_lr()

    def get_lr(self) -> list[float]:
        return self.schedule.get_last_lr()

    def step(self, epoch: int | None = None) -> None:
        self.schedule.step()
        self.last_epoch = self.schedule.last_epoch  # torch's schedulers count their steps here

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # checkpoints of torch's schedulers themselves count their steps as last_epoch
        steps = int(state_dict.get("steps", state_dict.get("last_epoch", 0)))
        initial_state, initial_lrs = self._start
        self.schedule.load_state_dict(initial_state)
        self.last_epoch = self.schedule.last_epoch
        for group, lr in zip(self.optimizer.param_groups, initial_lrs, strict=True):
            group["lr"] = lr
        self._replay(steps)

    def _replay(self, steps: int) -> None:
        for _ in range(steps):
            self.step()

    def resize(self, total_steps: int, max_warmup_fraction: float = 0.1) -> None:
        """The same schedule over ``total_steps`` (warm-up capped at ``max_warmup_fraction`` of them), at the
        step it had reached: the learning rates become those the new length gives there (a time budget
        sizes the schedule once the step time is known)."""
        if self._rebuild is None:
            raise ValueError("this schedule was built without the options to rebuild it")
        steps = self.last_epoch
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"]
            group.pop("initial_lr")  # the rebuilt schedulers start afresh from the base rates
        self.schedule = self._rebuild(total_steps, max_warmup_fraction)
        self.last_epoch = self.schedule.last_epoch
        self._start = (self.schedule.state_dict(), [group["lr"] for group in self.optimizer.param_groups])
        self._replay(steps)
