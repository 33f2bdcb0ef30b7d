"""The logger group: TensorBoard and several loggers at once write the run's values and its config;
a logger whose package is missing stops at start-up naming the extra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tasks.common.errors import UserError
from tasks.core.runner import train
from tasks.training.loggers import build_loggers
from tests.support import TINY_DETECTION, compose_config, shapes_overrides


def _events(folder: Path) -> EventAccumulator:
    events = EventAccumulator(str(folder), size_guidance={"images": 0})
    events.Reload()
    return events


def _scalars(folder: Path) -> dict[str, list[float]]:
    events = _events(folder)
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
    # the validation pictures: one per validation, in TensorBoard as in plots/
    drawn = sorted((tmp_path / "plots" / "val_predictions").glob("step_*.png"))
    images = _events(tmp_path / "tensorboard").Images("val/predictions")
    assert [image.step for image in images] == [int(path.stem.removeprefix("step_")) for path in drawn] == [4]
    assert (images[0].width, images[0].height) == Image.open(drawn[0]).size
    # and the charts of the end
    tags = _events(tmp_path / "tensorboard").Tags()["images"]
    assert {"plots/curves", "plots/per_class", "plots/pr_curves", "plots/confusion_matrix"} <= set(tags)


def test_a_missing_logger_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config(["logger=tensorboard"], tmp_path)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(
        UserError, match=r'TensorBoardLogger needs the tensorboard package: pip install -e "\.\[tensorboard\]"'
    ):
        build_loggers(cfg.logger)


def _tiny_run(shapes_root: Path, tmp_path: Path, *overrides: str) -> None:
    train(compose_config(["backbone=resnet18", *TINY_DETECTION, *shapes_overrides(shapes_root), "trainer.max_steps=4",
                          "trainer.log_every_n_steps=1", *overrides], tmp_path))  # fmt: skip


@pytest.mark.slow
def test_mlflow_writes_params_metrics_and_pictures_to_a_local_store(shapes_root: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    _tiny_run(shapes_root, tmp_path, "logger=mlflow", f"paths.log_dir={tmp_path}/outputs")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/outputs/mlflow.db")
    (run,) = client.search_runs(client.get_experiment_by_name("detection").experiment_id)
    assert run.data.params["task.name"] == "detection" and run.data.params["trainer.max_steps"] == "4"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    rows = (tmp_path / "plots" / "curves.json").read_text()
    assert len(losses) == 4 and losses[-1] == pytest.approx(json.loads(rows)["train/loss"][-1][1], rel=1e-6)
    assert "val/map" in run.data.metrics and "val/fp_background" in run.data.metrics
    pictures = list((tmp_path / "outputs" / "mlartifacts").rglob("*.png"))
    assert any("val_predictions" in str(p) for p in pictures)


@pytest.mark.slow
def test_wandb_offline_writes_its_run_directory(shapes_root: Path, tmp_path: Path) -> None:
    _tiny_run(shapes_root, tmp_path, "logger=wandb")
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")  # W&B's own record file, read by `wandb sync`
    assert list((run_dir / "files" / "media").rglob("*.png"))  # the validation pictures
    content = records.read_bytes()
    assert b"task.name" in content and b"train/loss" in content and b"val/map" in content
