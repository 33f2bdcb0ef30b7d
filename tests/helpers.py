"""Callbacks that tests inject into real runs (``+callbacks.NAME._target_=tests.helpers.X``)."""

from __future__ import annotations

import lightning as L
import torch


class SpoilWeightsAfterResume(L.Callback):
    """On a resumed run only, add large noise to every weight: validations after the resume are
    then far worse than those before, as when a run diverges after an interruption."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            return
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 3)
