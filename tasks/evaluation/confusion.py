"""Segmentation metrics from a confusion matrix: mIoU, pixel accuracy, mean class accuracy, IoU per class.

Counts are kept per image (sparse), so under DDP the images that the distributed sampler
repeated are counted once after gathering on rank 0, which sums the matrix and shares the metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from tasks.evaluation.evaluation import Evaluation
from tasks.evaluation.gather import from_rank_zero, gather_by_image_id


def confusion_matrix_metrics(matrix: np.ndarray, class_names: Sequence[str]) -> dict:
    """``matrix[t, p]`` counts pixels of true class t predicted as p.

    IoU of a class that neither occurs nor is predicted is undefined: it is left out of the
    mean (and of ``iou_per_class``) with a warning rather than counted as 0 or NaN.
    """
    matrix = matrix.astype(np.float64)
    true_positive = np.diag(matrix)
    per_true, per_predicted = matrix.sum(1), matrix.sum(0)
    union = per_true + per_predicted - true_positive
    present = union > 0
    absent = [name for name, seen in zip(class_names, present, strict=True) if not seen]
    if absent:
        warnings.warn(f"classes {absent} neither occur nor are predicted: left out of mIoU", stacklevel=2)
    iou = np.divide(true_positive, union, out=np.zeros_like(union), where=present)
    occurring = per_true > 0
    class_acc = np.divide(true_positive, per_true, out=np.zeros_like(per_true), where=occurring)
    total = matrix.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else 0.0,
        "pixel_acc": float(true_positive.sum() / total) if total else 0.0,
        "mean_class_acc": float(class_acc[occurring].mean()) if occurring.any() else 0.0,
        "iou_per_class": {name: float(v) for name, v, seen in zip(class_names, iou, present, strict=True) if seen},
    }


class ConfusionMatrixEvaluator:
    """Accumulate predictions (class index maps) against masks; ``ignore_index`` pixels do not count.
    Implements ``tasks.evaluation.evaluation.Evaluator``."""

    def __init__(self, class_names: Sequence[str], ignore_index: int = 255) -> None:
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        self.ignore_index = ignore_index
        self.last_result: dict = {}
        self._per_image: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def reset(self) -> None:
        self._per_image = {}

    def update(self, predictions: Sequence[torch.Tensor], targets: Sequence[Mapping]) -> None:
        """Class index maps at their mask's resolution, and the targets holding ``mask`` and ``image_id``."""
        for prediction, target in zip(predictions, targets, strict=True):
            mask, image_id = target["mask"], target["image_id"]
            valid = mask != self.ignore_index
            cells = mask[valid].long() * self.num_classes + prediction[valid].long()
            values, counts = torch.unique(cells, return_counts=True)
            self._per_image[int(image_id)] = (values.cpu().numpy(), counts.cpu().numpy())

    def matrix(self) -> np.ndarray | None:
        """The confusion matrix of every process's images (rank 0; None on the others)."""
        per_image = gather_by_image_id(self._per_image)
        if per_image is None:
            return None
        flat = np.zeros(self.num_classes**2, np.int64)
        for values, counts in per_image.values():
            np.add.at(flat, values, counts)
        return flat.reshape(self.num_classes, self.num_classes)

    def compute(self) -> Evaluation:
        """Scalar metrics and IoU per class (computed on rank 0, shared with every process)."""
        matrix = self.matrix()
        self.last_result = from_rank_zero(
            confusion_matrix_metrics(matrix, self.class_names) if matrix is not None else None
        )
        scalars = {k: v for k, v in self.last_result.items() if not isinstance(v, dict)}
        return Evaluation(scalars, self.per_class_table())

    def per_class_table(self) -> dict[str, dict[str, float]]:
        return {name: {"iou": iou} for name, iou in self.last_result.get("iou_per_class", {}).items()}
