"""A run stopped mid-epoch and resumed from its step checkpoint trains exactly as if it had never
stopped: the same loss at every later step and the same final metrics, with 0 or 2 loader workers.
(``tests/test_faults.py`` kills real processes with ``kill -9``; here runs stop in-process to keep
the suite short.)"""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tasks.common.errors import UserError
from tasks.core.runner import train
from tasks.training.checkpointing import align_validation_to_accumulation
from tests.support import TINY_DETECTION, Crash, compose_config, shapes_overrides

# 16 training images in batches of 4: 4 steps per epoch, 2 epochs. Step checkpoints every 3 steps
# (3, 6) besides those at validation (4, 8); the crash after step 7 leaves last.ckpt of step 6, in
# the middle of the second epoch.
CRASH = ["+callbacks.crash._target_=tests.support.CrashAtStep", "+callbacks.crash.step=7"]


def _config(shapes_root: Path, run: Path, workers: int, *extra: str):
    overrides = [
        "backbone=resnet18",
        *TINY_DETECTION,
        *shapes_overrides(shapes_root),
        f"dataset.num_workers={workers}",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "checkpoint_every_n_steps=3",
        *extra,
    ]
    return compose_config(overrides, run)


def _losses(*runs: Path) -> dict[int, float]:
    rows = [row for run in runs for row in csv.DictReader((run / "logs" / "metrics.csv").open())]
    return {int(row["step"]): float(row["train/loss"]) for row in rows if row.get("train/loss")}


def _scores(metrics: dict) -> dict:
    return {name: value for name, value in metrics.items() if name != "checkpoint"}


@pytest.fixture(scope="module")
def uninterrupted(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("uninterrupted")
    return run, train(_config(shapes_root, run, workers=0))


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_stopped_run_resumes_exactly(shapes_root: Path, tmp_path: Path, uninterrupted, workers: int) -> None:
    with pytest.raises(Crash):
        train(_config(shapes_root, tmp_path / "stopped", workers, *CRASH))
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"  # the only one: validation and steps share it
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    metrics = train(_config(shapes_root, tmp_path / "resumed", workers, f"ckpt_path={last}"))

    # Lightning logs step k's loss as step k - 1: steps 0-6 come from the stopped run, 6-7 from the
    # resumed one; the uninterrupted run loaded its data without workers
    reference_run, reference_metrics = uninterrupted
    expected, losses = _losses(reference_run), _losses(tmp_path / "stopped", tmp_path / "resumed")
    assert sorted(expected) == sorted(losses) == list(range(8))
    assert losses == expected
    assert _scores(metrics) == _scores(reference_metrics)


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_resume_from_a_validation_between_accumulated_batches(shapes_root: Path, tmp_path: Path) -> None:
    """Validation every 3 batches with 2 batches per optimizer step would checkpoint half a window
    (its gradient is not in the checkpoint); it is moved to every 2 batches, so the run resumed from
    that checkpoint ends with the uninterrupted run's weights."""
    accumulate = ["trainer.accumulate_grad_batches=2", "trainer.val_check_interval=3", "trainer.max_epochs=1"]
    crash = ["+callbacks.crash._target_=tests.support.CrashAtStep", "+callbacks.crash.step=2"]
    train(_config(shapes_root, tmp_path / "whole", 0, *accumulate, "checkpoint_every_n_steps=0"))
    with pytest.raises(Crash):
        train(_config(shapes_root, tmp_path / "stopped", 0, *accumulate, *crash, "checkpoint_every_n_steps=0"))
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"  # the validation's, inside the first epoch
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 1
    train(_config(shapes_root, tmp_path / "resumed", 0, *accumulate, f"ckpt_path={last}", "checkpoint_every_n_steps=0"))
    whole, resumed = (
        _weights(tmp_path / "whole" / "checkpoints" / "last.ckpt"),
        _weights(tmp_path / "resumed" / "checkpoints" / "last.ckpt"),
    )
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


def _trainer(every: float, batches: int, per_epoch: int | None = 1) -> SimpleNamespace:
    return SimpleNamespace(
        accumulate_grad_batches=4, val_check_batch=every, val_check_interval=every,
        num_training_batches=batches, check_val_every_n_epoch=per_epoch,
    )  # fmt: skip


def test_validations_are_moved_between_optimizer_steps() -> None:
    for every, batches, expected in ((10, 50, 8), (3, 50, 4), (12, 50, 12), (50, 50, 50), (float("inf"), 50, None)):
        trainer = _trainer(every, batches)
        align_validation_to_accumulation(trainer)
        assert trainer.val_check_batch == (every if expected is None else expected)
    with pytest.raises(
        UserError, match="an epoch of 50 batches is not a multiple of trainer.accumulate_grad_batches=4"
    ):
        align_validation_to_accumulation(_trainer(8, 50, per_epoch=None))
    align_validation_to_accumulation(_trainer(8, 48, per_epoch=None))


def _whole_stopped_resumed(shapes_root: Path, tmp_path: Path, workers: int, extra: list[str]) -> None:
    """Runs ``whole`` (uninterrupted, no workers), ``stopped`` (crashed after step 7, its last.ckpt of step 6)
    and ``resumed`` (from that checkpoint) with ``extra`` overrides under ``tmp_path``."""
    train(_config(shapes_root, tmp_path / "whole", 0, *extra))
    with pytest.raises(Crash):
        train(_config(shapes_root, tmp_path / "stopped", workers, *extra, *CRASH))
    last = tmp_path / "stopped" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    train(_config(shapes_root, tmp_path / "resumed", workers, *extra, f"ckpt_path={last}"))


@pytest.mark.slow
def test_a_tiled_run_resumes_exactly(shapes_root: Path, tmp_path: Path) -> None:
    """Tiles (4 of 48 px per 64 px image) augmented by scale jitter: two runs with one seed train on the
    same tiles, and one stopped after step 7 and resumed with loader workers continues exactly."""
    tiled = ["dataset.tile.size=48", "dataset.tile.keep_empty=1.0", "dataset.augment=scale_jitter",
             "trainer.max_epochs=-1", "trainer.max_steps=9", "trainer.val_check_interval=4"]  # fmt: skip
    _whole_stopped_resumed(shapes_root, tmp_path, 2, tiled)
    expected, losses = _losses(tmp_path / "whole"), _losses(tmp_path / "stopped", tmp_path / "resumed")
    assert sorted(expected) == sorted(losses) == list(range(9))
    assert losses == expected
    whole, resumed = (_weights(tmp_path / run / "checkpoints" / "last.ckpt") for run in ("whole", "resumed"))
    assert all(torch.equal(whole[name], resumed[name]) for name in whole)


@pytest.mark.slow
def test_a_run_with_the_weights_average_resumes_exactly(shapes_root: Path, tmp_path: Path) -> None:
    """With callbacks.ema on, a run stopped after step 7 and resumed from step 6 ends with the uninterrupted
    run's average (best.ckpt's weights) and training weights (current_model_state), bit for bit."""
    ema = ["callbacks.ema.enabled=true", "callbacks.ema.ramp_updates=4", "trainer.max_epochs=-1", "trainer.max_steps=9",
           "trainer.val_check_interval=4"]  # fmt: skip
    _whole_stopped_resumed(shapes_root, tmp_path, 0, ema)
    whole, resumed = (
        torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        for run in ("whole", "resumed")
    )
    assert whole["global_step"] == resumed["global_step"] == 9
    for key in ("state_dict", "current_model_state"):  # the average, and the weights training goes on from
        assert all(torch.equal(whole[key][name], resumed[key][name]) for name in whole[key]), key
    assert not all(torch.equal(whole["state_dict"][n], whole["current_model_state"][n]) for n in whole["state_dict"])
