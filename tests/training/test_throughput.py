"""The progress bar's images per second and data-wait share against hand-timed steps."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from tasks.training import throughput
from tasks.training.throughput import Throughput


class _Module:
    def __init__(self) -> None:
        self.logged: dict[str, list[float]] = {}

    def log(self, name: str, value: float, **options) -> None:
        assert options["prog_bar"]
        self.logged.setdefault(name, []).append(value)


def test_images_per_second_and_data_wait_follow_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 1.0, 1.5, 2.5, 3.0, 3.5, 10.0, 11.0])
    monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
    callback, module, trainer = Throughput(smoothing=0.5), _Module(), SimpleNamespace(world_size=2)
    batch = ([torch.zeros(3, 8, 8)] * 3, [{}] * 3)  # 3 images a process, 2 processes
    for _ in range(3):
        callback.on_train_batch_start(trainer, module, batch, 0)
        callback.on_train_batch_end(trainer, module, None, batch, 0)
    # step 1 (0 -> 1) is left out; step 2: 0.5 s waiting, 1 s stepping, 6 images; step 3: 0.5 s and 0.5 s
    assert module.logged["train/img_s"] == pytest.approx([6 / 1.5, 0.5 * 6 / 1.5 + 0.5 * 6 / 1.0])
    assert module.logged["train/data_wait"] == pytest.approx([1 / 3, 0.5 * (1 / 3) + 0.5 * 0.5])
    callback.on_validation_start(trainer, module)  # the time spent validating is no wait for data
    callback.on_train_batch_start(trainer, module, batch, 0)
    callback.on_train_batch_end(trainer, module, None, batch, 0)
    assert len(module.logged["train/img_s"]) == 2
