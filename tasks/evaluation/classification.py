"""Classification metrics: top-1 and top-k accuracy, accuracy per class, and the confusion matrix
(as numbers and as a picture).

Results are kept per image id, so under DDP the images the distributed sampler repeated count
once after gathering on rank 0, which computes the metrics and shares them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tasks.evaluation.evaluation import Evaluation
from tasks.evaluation.gather import from_rank_zero, gather_by_image_id

CONFUSION_PICTURE = "confusion_matrix.png"


def classification_metrics(labels: np.ndarray, ranked: np.ndarray, num_classes: int) -> dict:
    """``labels[i]`` the true class of image i, ``ranked[i]`` its k best predicted classes, best first
    (``topk``: the share of images whose class is among them).

        Accuracy per class is the share of that class's images predicted as it (recall); classes with
        no image are left out of ``mean_class_acc``.
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, ranked[:, 0]), 1)
    images = matrix.sum(1)
    per_class = np.divide(np.diag(matrix), images, out=np.zeros(num_classes), where=images > 0)
    return {
        "top1": float((ranked[:, 0] == labels).mean()) if len(labels) else 0.0,
        "topk": float((ranked == labels[:, None]).any(1).mean()) if len(labels) else 0.0,
        "mean_class_acc": float(per_class[images > 0].mean()) if (images > 0).any() else 0.0,
        "per_class_acc": per_class.tolist(),
        "images_per_class": images.tolist(),
        "matrix": matrix,
    }


class ClassificationEvaluator:
    """Accumulates logits against labels; reports ``top1``, ``mean_class_acc`` and, with more than
    ``top_k`` classes, ``top<k>`` (``top5``): with fewer, every image's class is among the k best
    and the figure is always 1. Implements ``tasks.evaluation.evaluation.Evaluator``."""

    def __init__(self, class_names: Sequence[str], top_k: int = 5) -> None:
        self.class_names = list(class_names)
        self.top_k = top_k if len(self.class_names) > top_k else None
        self.k = self.top_k or 1
        self._per_image: dict[int, tuple[int, np.ndarray]] = {}

    def reset(self) -> None:
        self._per_image = {}

    def update(self, logits: torch.Tensor, targets: Sequence[Mapping]) -> None:
        """A batch's logits and its targets holding ``label`` and ``image_id``."""
        ranked = logits.detach().float().topk(self.k, dim=1).indices.cpu().numpy()
        for row, target in zip(ranked, targets, strict=True):
            self._per_image[int(target["image_id"])] = (int(target["label"]), row)

    def compute(self) -> Evaluation:
        per_image = gather_by_image_id(self._per_image)
        result = None
        if per_image is not None:
            ordered = [per_image[i] for i in sorted(per_image)]
            labels = np.array([label for label, _ in ordered], np.int64)
            ranked = np.stack([row for _, row in ordered]) if ordered else np.zeros((0, self.k), np.int64)
            result = classification_metrics(labels, ranked, len(self.class_names))
        result = from_rank_zero(result)
        scalars = {"top1": result["top1"], "mean_class_acc": result["mean_class_acc"]}
        if self.top_k is not None:
            scalars[f"top{self.top_k}"] = result["topk"]
        per_class = {
            name: {"accuracy": acc, "images": float(count)}
            for name, acc, count in zip(
                self.class_names, result["per_class_acc"], result["images_per_class"], strict=True
            )
        }
        matrix = result["matrix"]
        files = {
            "confusion_matrix.json": {"class_names": self.class_names, "matrix": matrix.tolist()},
            CONFUSION_PICTURE: confusion_picture(matrix, self.class_names),
        }
        return Evaluation(scalars, per_class, files)


def _font(size: int) -> ImageFont.ImageFont:
    try:  # DejaVu where installed: it draws non-ASCII class names that Pillow's own font lacks
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        pass
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def confusion_picture(matrix: np.ndarray, class_names: Sequence[str], max_side: int = 2400) -> Image.Image:
    """Rows true classes, columns predicted ones; each cell shaded by its share of the row (white 0,
    dark blue 1). Names and counts are written while cells are large enough to hold them."""
    count = len(class_names)
    cell = int(np.clip(max_side // max(count, 1), 1, 40))
    labelled = cell >= 12
    font = _font(max(8, min(14, cell // 2)))
    margin = min(220, max((int(font.getlength(n)) for n in class_names), default=0) + 12) if labelled else 8
    side = margin + cell * count
    picture = Image.new("RGB", (side + 8, side + 8), "white")
    draw = ImageDraw.Draw(picture)
    totals = np.maximum(matrix.sum(1, keepdims=True), 1)
    shares = matrix / totals
    for true in range(count):
        for predicted in range(count):
            share = float(shares[true, predicted])
            colour = tuple(int(255 - share * (255 - c)) for c in (8, 48, 107))
            x, y = margin + predicted * cell, margin + true * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
            if labelled and cell >= 24 and matrix[true, predicted]:
                text = str(int(matrix[true, predicted]))
                draw.text((x + 2, y + cell // 3), text, fill="white" if share > 0.5 else "black", font=font)
    if labelled:
        for k, name in enumerate(class_names):
            shown = name if font.getlength(name) <= margin - 8 else name[: max(1, (margin - 8) // 7)] + "…"
            draw.text((4, margin + k * cell + cell // 4), shown, fill="black", font=font)
            column = Image.new("RGB", (margin, cell), "white")
            ImageDraw.Draw(column).text((4, cell // 4), shown, fill="black", font=font)
            picture.paste(column.rotate(90, expand=True), (margin + k * cell, 0))
    return picture
