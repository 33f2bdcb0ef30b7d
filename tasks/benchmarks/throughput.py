"""A callback that measures training speed: images per second, peak memory, and the share of the
time the training loop was blocked waiting for the data loader.

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


def _loader_wait(trainer: L.Trainer) -> float | None:
    """Seconds the training loader has kept the loop waiting (``ResumableLoader.seconds_waited``:
    the time inside its ``next()``, which covers decoding, augmenting and collating, or waiting for
    the workers that do; not the copy to the device nor other callbacks' hooks)."""
    return getattr(trainer.train_dataloader, "seconds_waited", None)


class Throughput(L.Callback):
    """From the start of step ``warmup`` to the end of the last step: images per second, and the
    share of that wall time the training loop waited for its data loader."""

    def __init__(self, warmup: int = 10) -> None:
        self.warmup = warmup
        self.images = 0
        self._start: float | None = None
        self._end = 0.0
        self._wait_at_start: float | None = None
        self._wait_at_end: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if self._start is None and trainer.global_step >= self.warmup:
            _sync(module)
            self._start = time.perf_counter()
            # the batch being started was fetched before this moment: what the loop waits from here on
            self._wait_at_start = _loader_wait(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._start is None:
            return
        _sync(module)
        self._end = time.perf_counter()
        self.images += len(batch[0])
        self._wait_at_end = _loader_wait(trainer)

    def results(self, module: L.LightningModule) -> dict[str, float]:
        total = self._end - self._start if self._start is not None else 0.0
        measured = total > 0 and self._wait_at_start is not None and self._wait_at_end is not None
        waited = self._wait_at_end - self._wait_at_start if measured else float("nan")
        return {
            "images_per_s": self.images / total if total else float("nan"),
            "peak_memory_gb": _peak_memory_gb(module),
            "data_wait_fraction": waited / total if measured else float("nan"),
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
