"""A run resumed with another batch size or another number of processes trains every image of the
interrupted epoch exactly once: the checkpoint records how many samples of the epoch's order were
consumed, not how many batches."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from tasks.core.runner import train
from tests.support import CPU_DDP, TINY_DETECTION, TINY_SHAPES, Crash, compose_config, run_script, shapes_overrides

RECORD = ["+callbacks.record._target_=tests.support.RecordTrainedImages"]
EPOCHS = 2  # 16 training images


def _args(shapes_root: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "backbone=resnet18",
        *TINY_DETECTION,
        *shapes_overrides(shapes_root),
        f"dataset.batch_size={batch_size}",
        f"trainer.max_epochs={EPOCHS}",
        "trainer.enable_progress_bar=false",
        *RECORD,
        *extra,
    ]


def _crash(step: int, every: int) -> list[str]:
    """Stop after optimizer step ``step``; checkpoints every ``every`` steps (the last one before the
    stop is written a step earlier: the crash callback runs before the checkpoint callbacks)."""
    return ["+callbacks.crash._target_=tests.support.CrashAtStep", f"+callbacks.crash.step={step}",
            f"checkpoint_every_n_steps={every}"]  # fmt: skip


def _trained(stopped: Path, resumed: Path) -> dict[int, Counter]:
    """Images trained per epoch: the stopped run's batches up to its last checkpoint, then the
    resumed run's, over every process."""
    saved_step = torch.load(stopped / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    epochs: dict[int, Counter] = {}
    for run, keep in ((stopped, lambda step: step <= saved_step), (resumed, lambda step: True)):
        for log in run.glob("trained_rank*.jsonl"):
            for row in map(json.loads, log.read_text().splitlines()):
                if keep(row["step"]):
                    epochs.setdefault(row["epoch"], Counter()).update(row["ids"])
    return epochs


def _assert_each_image_once(epochs: dict[int, Counter]) -> None:
    assert sorted(epochs) == list(range(EPOCHS))
    for epoch, counts in epochs.items():
        assert len(counts) == TINY_SHAPES.num_train and set(counts.values()) == {1}, (epoch, counts)


@pytest.mark.slow
@pytest.mark.parametrize(
    "crash, new_batch_size",
    [
        (_crash(4, 3), 8),  # saved after 3 of 4 batches: 12 images done, 4 left as one batch of 8
        (_crash(2, 1), 8),  # saved after 1 batch: 12 left, as 8 + 4
        (_crash(5, 4), 2),  # saved at the end of epoch 0: epoch 1 in 8 batches of 2
    ],
    ids=["12-done-then-8", "4-done-then-8", "epoch-end-then-2"],
)
def test_resume_with_another_batch_size(shapes_root: Path, tmp_path: Path, crash: list[str], new_batch_size) -> None:
    stopped, resumed = tmp_path / "stopped", tmp_path / "resumed"
    with pytest.raises(Crash):
        train(compose_config(_args(shapes_root, 4, *crash), stopped))
    last = stopped / "checkpoints" / "last.ckpt"
    train(compose_config(_args(shapes_root, new_batch_size, f"ckpt_path={last}"), resumed))
    _assert_each_image_once(_trained(stopped, resumed))


@pytest.mark.distributed
@pytest.mark.parametrize("before, after", [(1, 2), (2, 1)])
def test_resume_with_another_number_of_processes(shapes_root: Path, tmp_path: Path, before: int, after: int) -> None:
    ddp = lambda processes: CPU_DDP if processes == 2 else []  # noqa: E731
    stopped, resumed = tmp_path / "stopped", tmp_path / "resumed"
    first = run_script("train.py", [*_args(shapes_root, 4, *_crash(2, 1), *ddp(before)), f"hydra.run.dir={stopped}"])
    assert first.returncode != 0 and "stopped after step 2" in first.stderr, first.stderr[-3000:]
    last = stopped / "checkpoints" / "last.ckpt"
    second = run_script(
        "train.py", [*_args(shapes_root, 4, *ddp(after)), f"ckpt_path={last}", f"hydra.run.dir={resumed}"]
    )
    assert second.returncode == 0, second.stderr[-3000:]
    _assert_each_image_once(_trained(stopped, resumed))
