"""LightningModule for semantic segmentation: cross-entropy (+ auxiliary), confusion-matrix metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tasks.data.shapes import voc_palette
from tasks.metrics.confusion import ConfusionMatrixEvaluator


class SegmentationModule(L.LightningModule):
    """Trains a model returning ``{"out": logits[, "aux": logits]}`` at input size.

    Args:
        model: the segmentation network (takes float images in [0, 1]).
        optimizer: partial optimizer, called with parameter groups.
        scheduler: partial scheduler, called with the optimizer and ``total_steps``; stepped per step.
        evaluator: confusion-matrix metrics on the validation set.
        aux_weight: weight of the auxiliary head's loss.
        backbone_lr_mult: the backbone learns at this fraction of the head's rate (fine-tuning).
        ignore_index: mask value that neither loss nor metrics count.
        class_weights: cross-entropy weight per class (e.g. less for a background that covers
            most pixels); None weighs every pixel alike.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: Callable[[Iterable], Optimizer],
        scheduler: Callable[..., LRScheduler] | None = None,
        evaluator: ConfusionMatrixEvaluator | None = None,
        aux_weight: float = 0.4,
        backbone_lr_mult: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.evaluator = evaluator
        self.aux_weight, self.backbone_lr_mult, self.ignore_index = aux_weight, backbone_lr_mult, ignore_index
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        self.last_metrics: dict = {}
        self.prediction_dir: Path | None = None  # set to write predicted masks as palette PNGs

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(images.float() / 255 if images.dtype == torch.uint8 else images)

    def training_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> Tensor:
        images, targets = batch
        masks = torch.stack([t["mask"] for t in targets])
        outputs = self(images)
        losses = {"loss_out": self._loss(outputs["out"], masks)}
        if "aux" in outputs:
            losses["loss_aux"] = self._loss(outputs["aux"], masks)
        total = losses["loss_out"] + self.aux_weight * losses.get("loss_aux", 0.0)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, batch_size=len(images))
        self.log("train/loss", total, prog_bar=True, batch_size=len(images))
        return total

    def _loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        return F.cross_entropy(logits, masks, weight=self.class_weights, ignore_index=self.ignore_index)

    def on_validation_epoch_start(self) -> None:
        if self.evaluator is not None:
            self.evaluator.reset()

    def validation_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)["out"]
        predictions, loss_sum, pixels = [], logits.new_zeros(()), 0
        for image_logits, target in zip(logits, targets, strict=True):
            height, width = target["size"]
            mask = target["mask"]
            # crop the padding, then compare at the mask's own resolution
            scores = F.interpolate(
                image_logits[None, :, :height, :width], size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
            valid = int((mask != self.ignore_index).sum())
            if valid:
                loss_sum = loss_sum + self._loss(scores, mask[None]) * valid
                pixels += valid
            predictions.append(scores[0].argmax(0))
        self.log("val/loss", loss_sum / max(pixels, 1), batch_size=len(images), sync_dist=True)
        masks, ids = [t["mask"] for t in targets], [t["image_id"] for t in targets]
        if self.evaluator is not None:
            self.evaluator.update(predictions, masks, ids)
        if self.prediction_dir is not None:
            self._save_masks(predictions, ids)

    def _save_masks(self, predictions: list[Tensor], image_ids: list[int]) -> None:
        self.prediction_dir.mkdir(parents=True, exist_ok=True)
        for prediction, image_id in zip(predictions, image_ids, strict=True):
            mask = Image.fromarray(prediction.to(torch.uint8).cpu().numpy().astype(np.uint8), mode="P")
            mask.putpalette(voc_palette())
            mask.save(self.prediction_dir / f"{image_id}.png")

    def on_validation_epoch_end(self) -> None:
        if self.evaluator is None:
            return
        metrics = self.evaluator.compute()  # identical on every rank: counts gathered from all of them
        self.last_metrics = dict(self.evaluator.last_result)
        for name, value in metrics.items():
            self.log(f"val/{name}", value, prog_bar=name == "miou", sync_dist=True)

    def configure_optimizers(self) -> dict:
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        groups = [{"params": head, "lr_mult": 1.0}]
        if backbone:
            groups.append({"params": backbone, "lr_mult": self.backbone_lr_mult})
        optimizer = self.optimizer_factory(groups)
        for group in optimizer.param_groups:
            group["lr"] *= group["lr_mult"]
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
