"""Per-batch seeding: what a training step draws at random is a function of (seed, epoch, batch, rank)."""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from tasks.data.sampling import derive_seed


class SeedEachBatch(Callback):
    """Seeds torch, numpy and python at each training batch from (seed, epoch, batch, rank).

    What a step draws at random (the RPN's and RoI heads' sampling of anchors and proposals,
    dropout, stochastic depth) is then the same in a run resumed from a checkpoint as in the
    uninterrupted run, without saving random states into checkpoints. The data order and the
    augmentations are seeded the same way by the training loader.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        seed = derive_seed(self.seed, trainer.current_epoch, batch_idx, trainer.global_rank)
        torch.manual_seed(seed)  # CUDA devices too
        np.random.seed(seed % 2**32)
        random.seed(seed)
