"""A callback that measures training speed: images per second, peak memory, and the share of the
time the training loop waited for the data loader.

Add it to any run: ``+callbacks.throughput._target_=tasks.benchmarks.throughput.Throughput``. It
prints one line at the end of training (rank 0) and writes ``throughput.json`` into the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only


def _sync(module: L.LightningModule) -> None:
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


def _peak_memory_gb(module: L.LightningModule) -> float:
    if module.device.type == "cuda":
        return torch.cuda.max_memory_allocated(module.device) / 1024**3
    try:  # the process's peak resident memory
        status = Path("/proc/self/status").read_text().splitlines()
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024**2
    except (OSError, StopIteration):
        return float("nan")


class Throughput(L.Callback):
    """Times every training step after ``warmup`` steps: from the end of one step to the start of
    the next the loop waits for data; from start to end it computes."""

    def __init__(self, warmup: int = 10) -> None:
        self.warmup = warmup
        self.images, self.waiting, self.computing = 0, 0.0, 0.0
        self._step_end: float | None = None
        self._step_start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        now = time.perf_counter()
        if self._step_end is not None and trainer.global_step >= self.warmup:
            self.waiting += now - self._step_end
        self._step_start = now

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _sync(module)
        now = time.perf_counter()
        if trainer.global_step > self.warmup:
            self.computing += now - self._step_start
            self.images += len(batch[0])
        self._step_end = now

    def results(self, module: L.LightningModule) -> dict[str, float]:
        total = self.waiting + self.computing
        return {
            "images_per_s": self.images / total if total else float("nan"),
            "peak_memory_gb": _peak_memory_gb(module),
            "data_wait_fraction": self.waiting / total if total else float("nan"),
            "measured_images": self.images,
        }

    @rank_zero_only
    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        figures = self.results(module)
        shown = (
            f"{name}={value:.3f}" if isinstance(value, float) else f"{name}={value}" for name, value in figures.items()
        )
        print("throughput: " + " ".join(shown))
        Path(trainer.default_root_dir).mkdir(parents=True, exist_ok=True)
        (Path(trainer.default_root_dir) / "throughput.json").write_text(json.dumps(figures, indent=2))
