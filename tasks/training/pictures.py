"""What the model sees and how the run goes, as pictures: at each validation, the same validation images
with the ground truth beside the predictions; at the end of training, the loss and metric curves."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image

from tasks.evaluation.drawing import draw_item, grid, spread
from tasks.kinds import task_kind
from tasks.kinds.base import PictureOptions
from tasks.training.loggers import log_image

log = logging.getLogger(__name__)
GAP = 4  # pixels between the ground truth and the prediction of one image


class RunPictures(Callback):
    """``count`` validation images (spread evenly over the split, the same ones every time) drawn with
    their ground truth (left) and the model's predictions (right, detections scoring at least
    ``score_threshold``), into ``<output_dir>/val_predictions/step_<step>.png`` and every logger that
    takes images; ``count`` 0: none. ``curves``: ``<output_dir>/curves.png`` (and ``.json``) when
    training ends, from the values logged at each logging step and validation (kept in checkpoints, so
    a resumed run draws its whole history)."""

    def __init__(
        self,
        output_dir: str,
        task: str,
        count: int = 8,
        score_threshold: float = 0.3,
        size: int = 256,
        curves: bool = True,
    ) -> None:
        self.output_dir, self.kind = Path(output_dir), task_kind(task)
        self.count, self.score_threshold, self.size, self.curves = count, score_threshold, size, curves
        self.history: dict[str, list[list[float]]] = {}  # logged name -> [step, value] pairs
        self.stuff_names: list[str] = []  # panoptic data: its stuff classes, named in the pictures

    # -- curves ------------------------------------------------------------------------------
    def _record(self, trainer: L.Trainer, names: list[str]) -> None:
        for name in names:
            value = trainer.callback_metrics.get(name)
            if value is not None and torch.isfinite(value):
                self.history.setdefault(name, []).append([trainer.global_step, float(value)])

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step % max(trainer.log_every_n_steps, 1) == 0:
            self._record(trainer, ["train/loss"])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        self._record(trainer, [name for name in trainer.callback_metrics if name.startswith("val/")])
        if self.count and trainer.is_global_zero:
            self._draw_predictions(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self.curves and trainer.is_global_zero and self.history):
            return
        from tasks.evaluation.plots import curves_picture  # matplotlib is imported where charts are drawn

        monitor = trainer.checkpoint_callback.monitor if trainer.checkpoint_callback else None
        picture = curves_picture(self.history, monitor)
        if picture is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            picture.save(self.output_dir / "curves.png")
            (self.output_dir / "curves.json").write_text(json.dumps(self.history))
            log_image(trainer.loggers, "plots/curves", np.asarray(picture), trainer.global_step)
            log.info("loss and metric curves: %s", self.output_dir / "curves.png")

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict.get("history", {})

    # -- validation pictures --------------------------------------------------------------------
    def _draw_predictions(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dataset = trainer.datamodule.val_set
        positions = spread(len(dataset), self.count)
        count = len(positions)
        class_names = list(trainer.datamodule.class_names)
        self.stuff_names = list(getattr(trainer.datamodule, "stuff_names", []))
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            pairs = [self._pair(pl_module, *dataset[i], class_names) for i in positions]
        pl_module.train(was_training)
        columns = 2 if count > 3 else max(count, 1)
        sheet = grid(pairs, cell=(2 * self.size + GAP + 4, self.size + 4), columns=columns)
        path = self.output_dir / "val_predictions" / f"step_{trainer.global_step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
        log_image(trainer.loggers, "val/predictions", np.asarray(sheet), trainer.global_step)

    def _pair(self, module: L.LightningModule, image: torch.Tensor, target: dict, class_names: list[str]) -> np.ndarray:
        """The item's ground truth and the model's prediction, side by side, each ``size`` pixels long."""
        truth = draw_item(image, target, class_names, self.size, self.stuff_names)
        options = PictureOptions(class_names, self.score_threshold, self.size, self.stuff_names, target.get("label"))
        predicted = self.kind.draw_prediction(module, image.to(module.device), options)
        height = max(truth.shape[0], predicted.shape[0])
        sheet = Image.new("RGB", (truth.shape[1] + GAP + predicted.shape[1], height), (32, 32, 32))
        sheet.paste(Image.fromarray(truth), (0, 0))
        sheet.paste(Image.fromarray(predicted), (truth.shape[1] + GAP, 0))
        return np.asarray(sheet)
