"""A run killed mid-epoch and resumed from its step checkpoint trains exactly as if it had never
stopped: the same loss at every later step and the same final metrics, with 0 or 2 loader workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_DETECTION, run_script, shapes_overrides

# 16 training images in batches of 4: 4 steps per epoch, 2 epochs. Step checkpoints every 3 steps
# (3, 6) besides those at validation (4, 8); the kill after step 7 leaves last.ckpt of step 6, in
# the middle of the second epoch.
KILL = ["+callbacks.kill._target_=tests.helpers.KillAtStep", "+callbacks.kill.step=7"]


def _args(shapes_root: Path, log_dir: Path, workers: int, *extra: str) -> list[str]:
    return [
        "backbone=resnet18",
        *TINY_DETECTION,
        *shapes_overrides(shapes_root),
        f"dataset.num_workers={workers}",
        "trainer.max_epochs=2",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        "checkpoint_every_n_steps=3",
        f"paths.log_dir={log_dir}",
        *extra,
    ]


def _losses(run: Path) -> dict[int, float]:
    rows = csv.DictReader((run / "logs" / "metrics.csv").open())
    return {int(row["step"]): float(row["train/loss"]) for row in rows if row.get("train/loss")}


def _run(args: list[str], log_dir: Path) -> Path:
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (log_dir / "detection").iterdir()
    return run


@pytest.fixture(scope="module")
def uninterrupted(shapes_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    log_dir = tmp_path_factory.mktemp("uninterrupted")
    return _run(_args(shapes_root, log_dir, workers=0), log_dir)


@pytest.mark.parametrize("workers", [0, 2])
def test_killed_run_resumes_exactly(shapes_root: Path, tmp_path: Path, uninterrupted: Path, workers: int) -> None:
    killed = run_script("train.py", _args(shapes_root, tmp_path, workers, *KILL))
    assert killed.returncode == 9, killed.stderr[-3000:]
    (run,) = (tmp_path / "detection").iterdir()
    last = run / "checkpoints" / "last.ckpt"  # the only one: validation and step checkpoints share it
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    resumed = _run(_args(shapes_root, tmp_path, workers, f"ckpt_path={last}"), tmp_path)

    # Lightning logs step k's loss as step k - 1; steps 0-6 come from the killed run, 6-7 from the
    # resumed one; the uninterrupted run loaded its data without workers
    expected, losses = _losses(uninterrupted), _losses(resumed)
    assert sorted(expected) == sorted(losses) == list(range(8))
    assert losses == expected
    metrics = json.loads((resumed / "metrics.json").read_text())
    reference = json.loads((uninterrupted / "metrics.json").read_text())
    assert {k: v for k, v in metrics.items() if k != "checkpoint"} == {
        k: v for k, v in reference.items() if k != "checkpoint"
    }
