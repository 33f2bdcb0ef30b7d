"""The benchmarks' own checks: what they measure is what they name, and their verdicts can be false."""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import Dataset

from tasks.benchmarks.eval_and_data_speed import STATS_TOLERANCE, largest_difference
from tasks.benchmarks.inference_speed import detections_equal, headline
from tasks.benchmarks.throughput import Throughput
from tasks.data.loader import training_loader
from tasks.evaluation.coco_eval import COCO_STAT_NAMES


class _SlowData(Dataset):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __len__(self) -> int:
        return 24

    def __getitem__(self, index: int) -> torch.Tensor:
        time.sleep(self.seconds)
        return torch.full((4,), float(index))


def _images_and_targets(items: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[None]]:
    return items, [None] * len(items)


class _Tiny(L.LightningModule):
    def __init__(self, data_seconds: float) -> None:
        super().__init__()
        self.layer, self.data_seconds = torch.nn.Linear(4, 1), data_seconds

    def training_step(self, batch: tuple[list[torch.Tensor], list], batch_idx: int) -> torch.Tensor:
        return self.layer(torch.stack(batch[0])).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return training_loader(
            _SlowData(self.data_seconds), 2, seed=0, trainer=self.trainer, collate_fn=_images_and_targets
        )


class _SlowHook(L.Callback):
    """Another callback's work between steps: not the data loader's."""

    def on_train_batch_start(self, *args) -> None:
        time.sleep(0.02)


def _throughput(tmp_path: Path, data_seconds: float) -> dict[str, float]:
    meter = Throughput(warmup=2)
    trainer = L.Trainer(
        max_steps=10, callbacks=[_SlowHook(), meter], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    module = _Tiny(data_seconds)
    trainer.fit(module)
    return meter.results(module)


@pytest.mark.slow
def test_throughput_counts_the_data_loader_wait_alone(tmp_path: Path) -> None:
    slow_data = _throughput(tmp_path / "a", data_seconds=0.02)  # 40 ms of loading a step, 20 of a hook
    assert slow_data["measured_images"] == 16  # steps 2-9, 2 images each
    assert 0.45 < slow_data["data_wait_fraction"] < 0.8
    fast_data = _throughput(tmp_path / "b", data_seconds=0.0)  # the hook's 20 ms a step is not waiting for data
    assert fast_data["data_wait_fraction"] < 0.1


def test_evaluation_backends_must_agree_within_the_tolerance() -> None:
    stats = {name: 0.25 for name in COCO_STAT_NAMES}
    assert largest_difference(stats, dict(stats)) == 0.0
    assert largest_difference(stats, {**stats, "mar_100": 0.25 + 3e-9}) > STATS_TOLERANCE


def _detections(boxes: list[list[float]], scores: list[float], labels: list[int]) -> dict[str, torch.Tensor]:
    return {"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}


def test_detections_are_equal_only_with_their_scores() -> None:
    reference = [_detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.06], [1, 2])]
    reordered = [_detections([[5, 5, 20, 20], [0, 0, 10, 10.005]], [0.06, 0.9], [2, 1])]
    assert detections_equal(reference, reordered)[0]  # order and 0.005 px do not matter
    rescored = [_detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.06, 0.9], [1, 2])]
    assert not detections_equal(reference, rescored)[0]  # the same boxes with other scores differ
    relabelled = [_detections([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.06], [2, 1])]
    assert not detections_equal(reference, relabelled)[0]
    moved = [_detections([[0, 0, 10, 10], [5, 5, 20, 20.5]], [0.9, 0.06], [1, 2])]
    assert not detections_equal(reference, moved)[0]


def test_the_headline_is_the_fastest_engine_whether_or_not_it_is_equal() -> None:
    seconds = {"torchvision eager": 4.0, "a": 2.0, "b": 1.0}
    equality = {"torchvision eager": (True, ""), "a": (True, ""), "b": (False, "3 detections instead of 4")}
    assert headline(seconds, equality) == ("b", 4.0, False)
    nothing_equal = {name: (False, "") for name in seconds}
    assert headline(seconds, nothing_equal) == ("b", 4.0, False)
    with pytest.raises(ValueError, match="no engine"):
        headline({"torchvision eager": 4.0}, {"torchvision eager": (True, "")})


def test_gmacs_count_convolutions_and_matrix_products_by_hand() -> None:
    import torch

    from tasks.benchmarks.machine import gemm_peak_gmacs, gmacs_of

    conv, linear = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Linear(800, 10)
    macs = 8 * 3 * 9 * 10 * 10 + 800 * 10  # per output: 3x3x3 products; then 800 per output of the linear layer
    assert gmacs_of(lambda x: linear(conv(x).flatten(1)), torch.rand(1, 3, 10, 10)) * 1e9 == macs
    assert gemm_peak_gmacs(size=256, repeats=2, warm_up_seconds=0.1) > 0
