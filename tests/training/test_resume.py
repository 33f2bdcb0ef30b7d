"""Resuming keeps best-model tracking: metrics.json reports the best validation of the whole run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tasks.core.runner import build_datamodule, build_module, build_trainer, train
from tests.support import TINY_DETECTION, compose_config, run_script, shapes_overrides

SPOIL = "+callbacks.spoil._target_=tests.support.SpoilWeightsAfterResume"


def _args(shapes_root: Path, *extra: str) -> list[str]:
    steps = ["trainer.val_check_interval=2", "trainer.enable_progress_bar=false", "trainer.log_every_n_steps=1"]
    return ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), *steps, *extra]


def _validations(run: Path) -> dict[int, float]:
    """Validation loss by logged step, from the run's metrics.csv (the final validation of the best
    checkpoint is logged at the last step)."""
    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    return {int(row["step"]): float(row["val/loss"]) for row in rows if row.get("val/loss")}


@pytest.mark.slow
def test_resume_into_the_run_directory_keeps_the_best(shapes_root: Path, tmp_path: Path) -> None:
    outputs = [f"paths.log_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    run = tmp_path / "outputs" / "detection" / "train_2026-01-01_00-00-00"  # where the command would have put it
    train(compose_config([*_args(shapes_root, "trainer.max_steps=4"), *outputs], run))
    best_before = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    before = _validations(run)

    last = run / "checkpoints" / "last.ckpt"
    resumed = run_script("train.py", [*_args(shapes_root, "trainer.max_steps=8", SPOIL), *outputs, f"ckpt_path={last}"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert list((tmp_path / "outputs" / "detection").iterdir()) == [run]  # back in its own directory
    after = _validations(run)  # the log kept the rows written before the resume
    assert set(before) < set(after) and max(after) == 8
    spoiled = [loss for step, loss in after.items() if 4 < step < 8]
    assert len(spoiled) == 2 and min(spoiled) > 2 * max(before.values())  # far worse after the resume
    metrics = json.loads((run / "metrics.json").read_text())
    best = torch.load(metrics["checkpoint"], map_location="cpu", weights_only=False)
    assert best["global_step"] == best_before["global_step"] <= 4
    assert metrics["loss"] == pytest.approx(before[4], rel=1e-5)  # the best of run 1, scored again


@pytest.mark.slow
def test_resume_into_another_directory_carries_the_best_over(shapes_root: Path, tmp_path: Path) -> None:
    cfg = compose_config(_args(shapes_root, "trainer.max_steps=2"), tmp_path / "a")
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg)
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule)
    old_best = Path(trainer.checkpoint_callback.best_model_path)
    old_files = {p: p.stat().st_mtime_ns for p in old_best.parent.iterdir()}

    cfg = compose_config(
        _args(shapes_root, "trainer.max_steps=4", f"ckpt_path={old_best.parent / 'last.ckpt'}"), tmp_path / "b"
    )
    datamodule = build_datamodule(cfg)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(_spoiler())
    trainer.fit(build_module(cfg, datamodule), datamodule=datamodule, ckpt_path=cfg.ckpt_path)
    callback = trainer.checkpoint_callback
    new_best = Path(callback.best_model_path)
    assert new_best == tmp_path / "b" / "checkpoints" / "best.ckpt"
    assert torch.load(new_best, map_location="cpu", weights_only=False)["global_step"] == 2  # a copy of the old best
    assert {p: p.stat().st_mtime_ns for p in old_best.parent.iterdir()} == old_files  # old run untouched


def _spoiler():
    from tests.support import SpoilWeightsAfterResume

    return SpoilWeightsAfterResume()


@pytest.mark.slow
@pytest.mark.parametrize("into", ["another directory", "its own directory"])
def test_resume_when_the_best_checkpoint_is_gone(shapes_root: Path, tmp_path: Path, into: str) -> None:
    first = tmp_path / "a"
    train(compose_config(_args(shapes_root, "trainer.max_steps=2"), first))
    (first / "checkpoints" / "best.ckpt").unlink()
    run = tmp_path / "b" if into == "another directory" else first
    last = first / "checkpoints" / "last.ckpt"
    cfg = compose_config(_args(shapes_root, "trainer.max_steps=4", f"ckpt_path={last}"), run)
    with pytest.warns(UserWarning, match=f"best checkpoint so far \\({first / 'checkpoints' / 'best.ckpt'}.*is gone"):
        metrics = train(cfg)
    written = json.loads((run / "metrics.json").read_text())
    assert written["checkpoint"] == str(run / "checkpoints" / "best.ckpt") and Path(written["checkpoint"]).is_file()
    assert torch.load(written["checkpoint"], map_location="cpu", weights_only=True)["global_step"] == 4
    assert written["loss"] == pytest.approx(metrics["loss"])


def _learning_rates(run: Path) -> dict[int, float]:
    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    return {int(row["step"]): float(row["lr-AdamW"]) for row in rows if row.get("lr-AdamW")}


@pytest.mark.slow
@pytest.mark.parametrize("first_steps", [1, 3])
def test_a_run_resumed_to_train_longer_follows_the_longer_schedule(
    shapes_root: Path, tmp_path: Path, first_steps: int
) -> None:
    """The schedule is sized by the resumed run's own config (here a larger ``trainer.max_steps``):
    from the checkpoint's step on, its learning rates are those of a run that had that length from
    the start (1 step has no warm-up, 6 have: the schedules differ in kind, not only in length)."""
    longer = ["trainer.max_steps=6", "trainer.log_every_n_steps=1"]
    train(compose_config(_args(shapes_root, *longer), tmp_path / "whole"))
    train(compose_config(_args(shapes_root, f"trainer.max_steps={first_steps}"), tmp_path / "short"))
    last = tmp_path / "short" / "checkpoints" / "last.ckpt"
    train(compose_config(_args(shapes_root, *longer, f"ckpt_path={last}"), tmp_path / "longer"))
    start = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    whole, resumed = _learning_rates(tmp_path / "whole"), _learning_rates(tmp_path / "longer")
    assert sorted(resumed) == list(range(start, 6))
    assert resumed == pytest.approx({step: whole[step] for step in resumed}, rel=1e-12)
