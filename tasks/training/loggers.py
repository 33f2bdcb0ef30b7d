"""The run's loggers (the ``logger`` config group): Lightning's own, one or several, and its CSV
logger made to survive a resume."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

from tasks.common.errors import UserError


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, continuing an existing metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as file:
                header = file.readline().strip()
            self.metrics_keys = sorted(header.split(",")) if header else []


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the rows written before a resume."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


# the package each logger needs, and the extra that installs it
LOGGER_PACKAGES = {
    "TensorBoardLogger": ("tensorboard", "tensorboard"),
    "MLFlowLogger": ("mlflow", "mlflow"),
    "WandbLogger": ("wandb", "wandb"),
}


def build_loggers(config: DictConfig | None) -> list[Logger]:
    """One logger (a config with ``_target_``) or several (a mapping of such configs: ``logger=many``).
    A logger whose package is missing stops here, naming the extra that installs it."""
    if not config:
        return []
    configs = [config] if "_target_" in config else [c for c in config.values() if c]
    loggers = []
    for entry in configs:
        name = str(entry._target_).rsplit(".", 1)[-1]
        package, extra = LOGGER_PACKAGES.get(name, (None, None))
        if package is not None and importlib.util.find_spec(package) is None:
            raise UserError(f'logger {name} needs the {package} package: pip install -e ".[{extra}]" (or logger=csv)')
        loggers.append(instantiate(entry))
    return loggers


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as ``a.b.c: value`` pairs (the hyper-parameters every logger records)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node if isinstance(node, int | float | str | bool) or node is None else str(node)

    walk(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False), "")
    return flat


def log_image(loggers: list[Logger], key: str, picture: np.ndarray, step: int) -> None:
    """An HxWx3 uint8 picture to every logger that takes images (TensorBoard, MLflow, W&B); the CSV
    logger takes none (the picture is in the run's ``plots/`` folder anyway)."""
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.experiment.add_image(key, picture, global_step=step, dataformats="HWC")
        elif isinstance(logger, MLFlowLogger):
            logger.experiment.log_image(logger.run_id, picture, key=key.replace("/", "_"), step=step)
        elif isinstance(logger, WandbLogger):
            logger.log_image(key, [picture], step=step)


def close_loggers(loggers: list[Logger]) -> None:
    """End the W&B run (Lightning leaves it open until the process exits): the next run of a sweep in
    the same process starts its own."""
    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger.experiment.finish()
