"""LightningModule that trains a torchvision-style detector and scores it with COCO mAP."""

from __future__ import annotations

import torch
from torch import Tensor

from heads.protocol import check_detector
from tasks.evaluation.predictions import capped_message, count_capped, rescale_to_original
from tasks.evaluation.slicing import Slicing, predict_images_sliced
from tasks.kinds import task_kind
from tasks.training.module import TaskModule, float_images, rank_zero_warn


class DetectionModule(TaskModule):
    """Logs every loss component; validation reports the 12 COCO stats as ``val/<name>``.

    ``model`` returns a loss dict in training and detections in eval; ``slicing``: validation runs
    it on tiles of each image (``tasks.evaluation.slicing``), where ``task``'s kind can merge them;
    the other arguments are those of :class:`tasks.training.module.TaskModule`.
    """

    progress_metrics = ("map", "map_50")

    def __init__(self, model, *, task: str = "detection", slicing: Slicing | None = None, **options) -> None:
        task_kind(task).check_slicing(slicing)
        super().__init__(check_detector(model), **options)
        self.slicing = slicing
        self._capped = [0, 0]  # validation images that reached the detection cap, validation images

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._capped = [0, 0]

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        capped, total = self._capped
        if capped:
            cap = self.model.detections_per_img
            rank_zero_warn(capped_message(capped, total, cap, "task.model.box_detections_per_img"))

    def forward(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return self.model(float_images(images))

    def detect(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections in the input images' pixels: on tiles, merged (``slicing``), or on the whole images."""
        images = float_images(images)
        if self.slicing is not None:
            return predict_images_sliced(self.model, images, self.slicing, self.model.detections_per_img)
        return self.model(images)

    def losses(self, batch: tuple[list[Tensor], list[dict]]) -> tuple[dict[str, Tensor], Tensor] | None:
        images, targets = batch
        images = float_images(images)
        if self.model.training:
            losses = self.model(images, targets)
        else:
            losses = self.model.losses_and_detections(images, targets)[0]
        return None if losses is None else (losses, sum(losses.values()))

    def losses_and_predictions(
        self, batch: tuple[list[Tensor], list[dict]], batch_idx: int
    ) -> tuple[tuple[dict[str, Tensor], Tensor] | None, list[dict[str, Tensor]]]:
        """Losses and detections in one pass (none of the losses when sliced: tiles of full-resolution
        images merged), the detections in the original images' pixels."""
        images, targets = batch
        images = float_images(images)
        losses = None
        if self.slicing is not None:
            detections = self.detect(images)
        else:
            # proposal sampling draws random numbers: a private, per-batch seeded stream keeps the
            # validation loss repeatable and leaves the training random state untouched
            devices = [self.device.index] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(batch_idx)
                losses, detections = self.model.losses_and_detections(images, targets)
        self._capped[0] += count_capped(detections, self.model.detections_per_img)
        self._capped[1] += len(detections)
        rescale_to_original(detections, images, targets)
        # None: an exported model scored, which computes no losses
        return (None if losses is None else (losses, sum(losses.values()))), detections
