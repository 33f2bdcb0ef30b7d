"""``tasks/show_dataset.py``: a grid of a split's images with their ground truth drawn, as the loader
delivers them (after augmentation and tiling) or as the files hold them: the first thing to look at
when a model learns nothing (boxes shifted by a pixel convention, classes swapped, masks misaligned)."""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig

from tasks.common.errors import UserError
from tasks.evaluation.drawing import draw_item, grid, spread

log = logging.getLogger(__name__)


def show_dataset(cfg: DictConfig) -> Path:
    """Write ``dataset_<split>.png`` into the run directory and return its path."""
    if cfg.split not in ("train", "val"):
        raise UserError(f"split={cfg.split} must be train or val")
    datamodule = instantiate(cfg.dataset, **cfg.task.get("dataset_options", {}))
    datamodule.setup()
    dataset = datamodule.train_set if cfg.split == "train" else datamodule.val_set
    if not cfg.augmented:
        dataset = datamodule.unaugmented(cfg.split)
    positions = spread(len(dataset), int(cfg.count))
    count = len(positions)
    size = int(cfg.cell_size) - 4
    stuff_names = getattr(datamodule, "stuff_names", ())  # panoptic data names its stuff apart
    pictures = [draw_item(*dataset[int(i)], datamodule.class_names, size, stuff_names) for i in positions]
    path = Path(cfg.paths.output_dir) / f"dataset_{cfg.split}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    grid(pictures, int(cfg.cell_size), int(cfg.columns)).save(path)
    state = "as the training loader delivers them" if cfg.augmented else "as the files hold them"
    log.info("%d of %d %s images %s, ground truth drawn: %s", count, len(dataset), cfg.split, state, path)
    return path
