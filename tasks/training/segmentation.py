"""LightningModule for semantic segmentation: cross-entropy (+ auxiliary), confusion-matrix metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tasks.data.formats.palette import save_palette_png
from tasks.training.module import TaskModule, float_images


class SegmentationModule(TaskModule):
    """Trains a model returning ``{"out": logits[, "aux": logits]}`` at input size.

    Args (besides those of :class:`tasks.training.module.TaskModule`):
        aux_weight: weight of the auxiliary head's loss.
        backbone_lr_mult: the backbone learns at this fraction of the head's rate (fine-tuning).
        ignore_index: mask value that neither loss nor metrics count.
        class_weights: cross-entropy weight per class (e.g. less for a background that covers
            most pixels); None weighs every pixel alike.
    """

    progress_metrics = ("miou",)

    def __init__(
        self,
        model: nn.Module,
        *,
        aux_weight: float = 0.4,
        backbone_lr_mult: float = 1.0,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        **options,
    ) -> None:
        super().__init__(model, **options)
        self.aux_weight, self.backbone_lr_mult, self.ignore_index = aux_weight, backbone_lr_mult, ignore_index
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        return self.model(self.to_memory_format(float_images(images)))

    recorded_component = "loss_out"  # val/loss has no auxiliary term

    def losses(self, batch: tuple[Tensor, list[dict]]) -> tuple[dict[str, Tensor], Tensor]:
        images, targets = batch
        masks = torch.stack([t["mask"] for t in targets])
        outputs = self(images)
        losses = {"loss_out": self._loss(outputs["out"], masks)}
        if "aux" in outputs:
            losses["loss_aux"] = self._loss(outputs["aux"], masks)
        return losses, losses["loss_out"] + self.aux_weight * losses.get("loss_aux", 0.0)

    def _loss(self, logits: Tensor, masks: Tensor) -> Tensor:
        return F.cross_entropy(logits, masks, weight=self.class_weights, ignore_index=self.ignore_index)

    def losses_and_predictions(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> tuple[tuple, list[Tensor]]:
        """The main head's loss and class maps at each mask's own resolution (padding cropped): masks of
        validation images keep their size, so the loss is the mean over every counted pixel of the batch."""
        images, targets = batch
        logits = self(images)["out"]
        predictions, loss_sum, pixels = [], logits.new_zeros(()), 0
        for image_logits, target in zip(logits, targets, strict=True):
            height, width = target["size"]
            mask = target["mask"]
            scores = F.interpolate(
                image_logits[None, :, :height, :width], size=mask.shape[-2:], mode="bilinear", align_corners=False
            )
            valid = int((mask != self.ignore_index).sum())
            if valid:
                loss_sum = loss_sum + self._loss(scores, mask[None]) * valid
                pixels += valid
            predictions.append(scores[0].argmax(0))
        return ({}, loss_sum / max(pixels, 1)), predictions

    def write_predictions(self, predictions: list[Tensor], targets: list[dict]) -> None:
        """Palette PNGs named by image id."""
        self.prediction_dir.mkdir(parents=True, exist_ok=True)
        for prediction, target in zip(predictions, targets, strict=True):
            save_palette_png(prediction.cpu().numpy(), self.prediction_dir / f"{target['image_id']}.png")

    def parameter_groups(self) -> list[dict]:
        backbone = [p for p in self.model.backbone.parameters() if p.requires_grad]
        backbone_ids = {id(p) for p in backbone}
        head = [p for p in self.model.parameters() if p.requires_grad and id(p) not in backbone_ids]
        return [{"params": head, "lr_mult": 1.0}, {"params": backbone, "lr_mult": self.backbone_lr_mult}]
