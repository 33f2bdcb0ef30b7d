"""The tiny trained checkpoints that the prediction, export and quantization tests share."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.core.runner import train
from tests.support import EXPORT_TASKS, compose_config, export_training_overrides


@pytest.fixture(scope="package")
def checkpoints(shapes_root: Path, shapes_voc_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint of each task after 3 steps, trained on a copy of the data that is deleted afterwards:
    nothing downstream may need the dataset."""
    found = {}
    for task in EXPORT_TASKS:
        folder = tmp_path_factory.mktemp(task)
        copies = {name: folder / "data" / name for name in ("shapes", "voc")}
        shutil.copytree(shapes_root, copies["shapes"])
        shutil.copytree(shapes_voc_root, copies["voc"])
        overrides = export_training_overrides(task, copies["shapes"], copies["voc"])
        train(compose_config([*overrides, "trainer.max_steps=3", "trainer.limit_val_batches=1"], folder / "run"))
        shutil.rmtree(folder / "data")
        found[task] = folder / "run" / "checkpoints" / "last.ckpt"
    return found
