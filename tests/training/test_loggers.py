"""The logger group: TensorBoard and several loggers at once write the run's values and its config;
a logger whose package is missing stops at start-up naming the extra."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tasks.common.errors import UserError
from tasks.core.runner import train
from tasks.training.loggers import build_loggers
from tests.support import TINY_DETECTION, compose_config, shapes_overrides


def _scalars(folder: Path) -> dict[str, list[float]]:
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


@pytest.mark.slow
def test_tensorboard_and_csv_together_log_the_same_values_and_the_config(shapes_root: Path, tmp_path: Path) -> None:
    overrides = ["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), "trainer.max_steps=4",
                 "trainer.log_every_n_steps=1", "logger=many"]  # fmt: skip
    train(compose_config(overrides, tmp_path))
    scalars = _scalars(tmp_path / "tensorboard")
    assert len(scalars["train/loss"]) == 4 and "val/map" in scalars
    rows = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    csv_losses = [
        float(r.split(",")[header.index("train/loss")]) for r in rows[1:] if r.split(",")[header.index("train/loss")]
    ]
    assert csv_losses == pytest.approx(scalars["train/loss"], rel=1e-6)  # the same values in both
    for folder in (tmp_path / "tensorboard", tmp_path / "logs"):
        hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
        assert hparams["task.name"] == "detection" and hparams["trainer.max_steps"] == 4


def test_a_missing_logger_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config(["logger=tensorboard"], tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(
        UserError, match=r'TensorBoardLogger needs the tensorboard package: pip install -e "\.\[tensorboard\]"'
    ):
        build_loggers(cfg.logger)
