"""A time budget (``trainer.max_time``, Lightning's DD:HH:MM:SS) that the schedule fits.

Lightning's own Timer stops training when the time is up, wherever the learning-rate schedule is: a
schedule sized for 12 epochs and cut at 10 minutes may never leave its warm-up. With a budget, this
callback times the first optimizer steps, works out how many steps the rest of the budget allows once
validations have their share, and sizes the schedule to end there (``StepCountSchedule.resize``: warm-up
and decay as fractions of the new length). Validations are spaced so that they, precise BN included,
cost at most ``validation_share`` of the time; training stops early enough for a last validation, so
``best.ckpt`` is chosen from the whole run.

Every process takes rank 0's measurements and decisions, so that DDP processes step and stop alike.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_info


def budget_left(trainer: L.Trainer) -> float | None:
    """Seconds of ``trainer.max_time`` left (a resumed run has spent some), or None without a budget."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return None if timer is None else timer.time_remaining()


def planned_steps(seconds: float, step_time: float, validation_share: float) -> int:
    """Optimizer steps that fit in ``seconds`` when validations take ``validation_share`` of them."""
    return max(1, math.floor(seconds * (1 - validation_share) / step_time))


def next_interval(done: int, wanted: int, multiple: int = 1) -> int:
    """Lightning validates after unit ``i`` (epoch or batch, 0-based) where ``(i + 1) % interval == 0``: the
    smallest interval, a multiple of ``multiple``, of at least ``wanted`` whose next validation after unit
    ``done`` comes ``wanted`` units later or more (a shorter one could fall due at once)."""
    interval = wanted
    while interval % multiple or interval * math.ceil((done + 2) / interval) - 1 - done < wanted:
        interval += 1
    return interval


class TimeBudget(L.Callback):
    """Fit the schedule and the validations to ``trainer.max_time``; inactive without it.

    Args:
        measure_steps: optimizer steps timed (after the first, which pays for start-up) before the plan.
        validation_share: the most of the budget validations (with precise BN) may take.
        clock: seconds, monotonic (tests pass a fake one).
    """

    def __init__(
        self, measure_steps: int = 10, validation_share: float = 0.1, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not 0 < validation_share < 1:
            raise ValueError(f"callbacks.time_budget.validation_share={validation_share} must be in (0, 1)")
        self.measure_steps, self.validation_share, self.clock = measure_steps, validation_share, clock
        self.deadline: float | None = None
        self.step_time: float | None = None
        self.planned_total: int | None = None
        self.validation_time = 0.0  # the last validation's duration: what the final one is expected to take
        self._mark: tuple[float, int] | None = None  # (time, step) where timing started
        self._paused = 0.0  # validation time inside the timed steps
        self._validation_start: float | None = None
        self._training_since_validation = 0.0
        self._last_validation_end: float | None = None

    # -- the plan ------------------------------------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        left = budget_left(trainer)
        self.deadline = None if left is None else self.clock() + left
        self._last_validation_end = self.clock()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if self.deadline is None:
            return
        now, step = self.clock(), trainer.global_step
        if self.step_time is None:
            self._time_steps(trainer, now, step)
        stop = step >= (self.planned_total or math.inf) or now + self.validation_time >= self.deadline
        if trainer.strategy.broadcast(stop, src=0):
            trainer.check_val_every_n_epoch = 1  # the last validation runs where training stops
            trainer.should_stop = True

    def _time_steps(self, trainer: L.Trainer, now: float, step: int) -> None:
        if self._mark is None:
            if step >= 1:  # the first step pays for start-up (allocation, compilation, workers)
                self._mark, self._paused = (now, step), 0.0
            return
        start, first = self._mark
        if step - first < self.measure_steps:
            return
        step_time = (now - start - self._paused) / (step - first)
        self.step_time = float(trainer.strategy.broadcast(step_time, src=0))
        self._plan(trainer, now, step)

    def _plan(self, trainer: L.Trainer, now: float, step: int) -> None:
        left = self.deadline - now
        more = planned_steps(left, self.step_time, self.validation_share)
        limit = trainer.estimated_stepping_batches  # max_epochs/max_steps still end the run if sooner
        self.planned_total = int(min(step + more, limit))
        schedules = [config.scheduler for config in trainer.lr_scheduler_configs]
        for schedule in schedules:
            if hasattr(schedule, "resize"):
                schedule.resize(self.planned_total)
        rank_zero_info(
            f"time budget: {self.step_time:.3f} s an optimizer step, {left:.0f} s left: {more} more steps fit with "
            f"validations at most {self.validation_share:.0%} of the time; training ends at step {self.planned_total}"
            f"{' (the epoch or step limit)' if self.planned_total == limit else ''}"
            f"{', the learning-rate schedule sized to it' if schedules else ''}"
        )

    # -- the validations -----------------------------------------------------------------------
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.deadline is not None and not trainer.sanity_checking:
            self._validation_start = self.clock()
            self._training_since_validation = self._validation_start - self._last_validation_end

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._validation_start is None:
            return
        now = self.clock()
        self.validation_time = float(trainer.strategy.broadcast(now - self._validation_start, src=0))
        self._paused += self.validation_time
        self._validation_start, self._last_validation_end = None, now
        self._space_validations(trainer)

    def _space_validations(self, trainer: L.Trainer) -> None:
        """Validate less often where the last validation took more than its share of the time since the one
        before: the interval (epochs, or training batches) becomes the one whose training time, at the rate
        just measured, leaves the validation its share."""
        share, training = self.validation_share, max(self._training_since_validation, 1e-9)
        if trainer.should_stop or self.validation_time <= share * (training + self.validation_time):
            return
        needed = self.validation_time * (1 - share) / share  # seconds of training between validations
        within_epoch = trainer.check_val_every_n_epoch is None or trainer.val_check_batch < trainer.num_training_batches
        if within_epoch:
            per_batch = training / int(trainer.val_check_batch)
            accumulate = trainer.accumulate_grad_batches  # validations stay between optimizer steps
            wanted = accumulate * math.ceil(needed / per_batch / accumulate)
            if trainer.check_val_every_n_epoch is not None and wanted >= trainer.num_training_batches:
                trainer.val_check_batch = trainer.num_training_batches
                epochs = math.ceil(wanted / trainer.num_training_batches)
                trainer.check_val_every_n_epoch = next_interval(trainer.current_epoch, epochs)
                where = f"every {trainer.check_val_every_n_epoch} epochs"
            else:
                loop = trainer.fit_loop.epoch_loop
                done = loop.total_batch_idx if trainer.check_val_every_n_epoch is None else loop.batch_idx
                trainer.val_check_batch = next_interval(done, wanted, accumulate)
                where = f"every {trainer.val_check_batch} training batches"
        else:
            per_epoch = training / trainer.check_val_every_n_epoch
            wanted = math.ceil(needed / per_epoch)
            trainer.check_val_every_n_epoch = next_interval(trainer.current_epoch, wanted)
            where = f"every {trainer.check_val_every_n_epoch} epochs"
        rank_zero_info(
            f"time budget: a validation took {self.validation_time:.1f} s after {training:.1f} s of training: "
            f"validating {where}, so that validations take at most {share:.0%} of the time"
        )
