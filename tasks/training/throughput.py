"""Training speed in the progress bar and the logs: images per second over every process, and the share
of each step spent outside the training step (mostly waiting for the data loader)."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback


def batch_images(batch: Any) -> int:
    """Images in a batch: ``(images, targets)`` with images a list (detection) or a stacked tensor."""
    images = batch[0] if isinstance(batch, list | tuple) else batch
    return len(images)


class Throughput(Callback):
    """Logs ``train/img_s`` (images a second, this process's rate times the number of processes) and
    ``train/data_wait`` (the share of the time between two steps' ends spent before the step began:
    loading, collating and moving the batch; a share near 1 means the GPU starves: raise
    ``dataset.num_workers``). Both are averaged exponentially (``smoothing``); the first step after
    the start and after each validation is left out (loader workers starting)."""

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self._last_end: float | None = None
        self._start = 0.0
        self.images_per_s: float | None = None
        self.data_wait: float | None = None

    def _average(self, old: float | None, new: float) -> float:
        return new if old is None else self.smoothing * old + (1 - self.smoothing) * new

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        end = time.perf_counter()
        if self._last_end is not None:
            waited, stepped = self._start - self._last_end, end - self._start
            rate = batch_images(batch) * trainer.world_size / max(waited + stepped, 1e-9)
            self.images_per_s = self._average(self.images_per_s, rate)
            self.data_wait = self._average(self.data_wait, waited / max(waited + stepped, 1e-9))
            pl_module.log("train/img_s", self.images_per_s, prog_bar=True, batch_size=1)
            pl_module.log("train/data_wait", self.data_wait, prog_bar=True, batch_size=1)
        self._last_end = end

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the time spent validating is no wait for data
