"""LightningModule for Panoptic FPN: detection's training and validation, scored with PQ."""

from __future__ import annotations

from tasks.training.detection import DetectionModule


class PanopticModule(DetectionModule):
    """Detection's steps: the model adds ``loss_mask`` and ``loss_sem_seg`` in training and the merged
    ``panoptic`` map to its detections; validation reports ``val/pq``, ``val/sq``, ``val/rq`` and their
    things and stuff parts."""

    progress_metrics = ("pq", "pq_things", "pq_stuff")
