"""An exponential moving average of the weights, its decay ramped up over the first updates.

A fixed decay of 0.9999 averages over about 10,000 steps: a run of a few hundred steps (a time budget on
a CPU) would validate weights still close to the random initialisation. The ramp ``decay x (1 - exp(-n /
ramp_updates))`` (YOLOv5's ModelEMA) starts by following the weights closely and averages over more of
them as training goes on. Lightning's ``WeightAveraging`` does the rest: validation, ``best.ckpt``'s
``state_dict`` (so evaluate, predict and export) use the average; training's own weights travel in the
checkpoint as ``current_model_state`` and a resumed run continues both.
"""

from __future__ import annotations

import math
from functools import partial

import lightning as L
from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor


def ramped_decay(updates: int, decay: float, ramp_updates: float | None) -> float:
    """The decay of the ``updates``-th update (1-based after the first, which copies the weights); a fixed
    ``decay`` where ``ramp_updates`` is None."""
    return decay if ramp_updates is None else decay * (1 - math.exp(-updates / ramp_updates))


def _ramped_average(
    average: Tensor, current: Tensor, updates: Tensor, *, decay: float, ramp_updates: float | None
) -> Tensor:
    weight = ramped_decay(int(updates), decay, ramp_updates)
    return average * weight + current * (1 - weight)


class ModelEMA(WeightAveraging):
    """EMA of every parameter and buffer (BatchNorm statistics too), updated every ``update_every_n_steps``
    optimizer steps from epoch ``update_starting_at_epoch`` on (the first update copies the weights:
    torchvision's reference restarts its EMA after the learning-rate warm-up), with the decay that
    ``ramped_decay`` gives."""

    def __init__(
        self,
        decay: float = 0.9999,
        ramp_updates: float | None = 2000,
        update_every_n_steps: int = 1,
        update_starting_at_epoch: int = 0,
    ) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"callbacks.ema.decay={decay} must be in (0, 1)")
        average = partial(_ramped_average, decay=decay, ramp_updates=ramp_updates)
        super().__init__(use_buffers=True, avg_fn=average)
        self.update_every_n_steps, self.update_starting_at_epoch = update_every_n_steps, update_starting_at_epoch
        self._epoch = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        self._epoch = trainer.current_epoch  # should_update is told the step only
        super().on_train_batch_end(trainer, pl_module, *args)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep training's own weights in the module (Lightning's callback copies the average over them): a
        checkpoint written as training ends then holds both as during training, and a run resumed from it
        goes on from the weights it trained. Validation, ``best.ckpt`` and what is scored after training use
        the average all the same."""

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        if step_idx is None or self._epoch < self.update_starting_at_epoch:
            return False
        return (step_idx + 1) % self.update_every_n_steps == 0


def ema_callback(enabled: bool = False, **options) -> ModelEMA | None:
    """``callbacks.ema``: the callback, or None (left out) unless ``enabled``."""
    return ModelEMA(**options) if enabled else None
