"""Builds the run from a composed config: datamodule, task module, trainer; fits and evaluates."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> L.LightningDataModule:
    """Instantiate and set up the data now, so bad paths stop the run before any training."""
    datamodule = instantiate(cfg.dataset)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def resolve_num_classes(configured: int | None, datamodule: L.LightningDataModule) -> int:
    found = datamodule.num_classes
    if configured is not None and configured != found:
        raise ValueError(
            f"task.model.num_classes={configured} but the dataset declares {found} categories "
            f"({datamodule.class_names}); num_classes counts object categories without background. "
            f"Set task.model.num_classes={found} or null (taken from the dataset)."
        )
    return found


def build_module(cfg: DictConfig, datamodule: L.LightningDataModule) -> L.LightningModule:
    num_classes = resolve_num_classes(cfg.task.model.get("num_classes"), datamodule)
    model = instantiate(cfg.task.model, num_classes=num_classes)
    return instantiate(cfg.task.module, model=model, evaluator=datamodule.build_evaluator())


def build_trainer(cfg: DictConfig) -> L.Trainer:
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c]
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    return instantiate(cfg.trainer, callbacks=callbacks, logger=logger)


def existing_checkpoint(path: str | None) -> str | None:
    if path is not None and not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist: pass a .ckpt written by a previous run")
    return path


def best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    if callback is None:
        return None
    return callback.best_model_path or callback.last_model_path or None


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then evaluate the best checkpoint on the validation split and write ``metrics.json``."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = build_datamodule(cfg)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg)
    trainer.fit(module, datamodule=datamodule, ckpt_path=existing_checkpoint(cfg.ckpt_path))
    checkpoint = best_checkpoint(trainer)
    results = trainer.validate(module, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)
    metrics = {name.removeprefix("val/"): float(value) for name, value in results[0].items()}
    report(metrics, Path(cfg.paths.output_dir), checkpoint)
    return metrics


@rank_zero_only
def report(metrics: dict[str, float], output_dir: Path, checkpoint: str | None) -> None:
    width = max(map(len, metrics), default=0)
    lines = [f"{name:<{width}}  {value:.4f}" for name, value in metrics.items()]
    print(f"\nValidation metrics ({checkpoint or 'final weights'}):\n" + "\n".join(lines))
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps({**metrics, "checkpoint": checkpoint}, indent=2))
    log.info("metrics written to %s", output_dir / "metrics.json")
