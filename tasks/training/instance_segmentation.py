"""LightningModule for Mask R-CNN: detection's training and validation, scored on boxes and masks."""

from __future__ import annotations

from tasks.training.detection import DetectionModule


class InstanceSegmentationModule(DetectionModule):
    """Detection's steps (the model adds ``loss_mask`` in training and ``masks`` to its detections);
    validation reports the 12 COCO stats for boxes as ``val/<name>`` and for masks as ``val/mask_<name>``
    (the evaluator is built with ``iou_types: [bbox, segm]``)."""

    progress_metrics = ("map_50", "mask_map_50")
