"""Prediction rows for ``predictions.json`` and the pictures drawn over each input image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from tasks.data.formats.palette import voc_palette
from tasks.evaluation.coco_eval import to_coco_results, to_segmentation_results
from tasks.evaluation.predictions import rescale_to_original

# overlays keep the input's format where it holds RGB; others (gif, pbm ...) become PNG
OVERLAY_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_ALPHA = 0.5


def class_colours(count: int) -> list[tuple[int, int, int]]:
    """The VOC palette colour of each class index (0: black), as in the segmentation PNGs."""
    palette = voc_palette()
    return [tuple(palette[3 * (k % 256) : 3 * (k % 256) + 3]) for k in range(count)]


def overlay_name(relative: Path) -> Path:
    suffix = relative.suffix.lower() if relative.suffix.lower() in OVERLAY_SUFFIXES else ".png"
    return relative.with_suffix(suffix)


def kept_detections(found: dict[str, Tensor], model_input: Tensor, original: np.ndarray, threshold: float) -> dict:
    """Detections scoring at least ``threshold``, with boxes (and masks) in the original upright image."""
    keep = found["scores"] >= threshold
    detections = {name: value[keep] for name, value in found.items()}
    rescale_to_original([detections], [model_input], [{"orig_size": original.shape[:2]}])
    return detections


def detection_rows(
    detections: dict[str, Tensor],
    file_name: str,
    class_names: Sequence[str],
    category_ids: Sequence[int] | None,
    mask_threshold: float,
) -> list[dict]:
    """One row per detection: file, the dataset's category id and name, [x, y, w, h], score, and an
    RLE ``segmentation`` for instance masks (COCO results format, keyed by file instead of image id)."""
    ids = list(category_ids or range(1, len(class_names) + 1))
    rows = to_coco_results(detections, 0, ids)
    masks = to_segmentation_results(detections, 0, ids, mask_threshold) if "masks" in detections else None
    labels = detections["labels"].tolist()
    result = []
    for k, (row, label) in enumerate(zip(rows, labels, strict=True)):
        entry = {"file_name": file_name, "category_id": row["category_id"], "category_name": class_names[label - 1]}
        entry.update(bbox=row["bbox"], score=row["score"])
        if masks is not None:
            entry["segmentation"] = masks[k]["segmentation"]
        result.append(entry)
    return result


def draw_detections(
    image: np.ndarray, detections: dict[str, Tensor], class_names: Sequence[str], mask_threshold: float
) -> np.ndarray:
    """Masks blended in their class colour, then boxes labelled with class name and score (ground
    truth, without ``scores``: the name only)."""
    picture = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    colours = class_colours(len(class_names) + 1)
    labels = detections["labels"].tolist()
    box_colours = [colours[label] for label in labels]
    if "masks" in detections and labels:
        masks = detections["masks"][:, 0] >= mask_threshold
        picture = draw_segmentation_masks(picture, masks, alpha=MASK_ALPHA, colors=box_colours)
    scores = detections["scores"].tolist() if "scores" in detections else [None] * len(labels)  # None: ground truth
    captions = [
        class_names[label - 1] + ("" if score is None else f" {score:.2f}")
        for label, score in zip(labels, scores, strict=True)
    ]
    width = max(1, round(min(image.shape[:2]) / 250))
    picture = draw_bounding_boxes(picture, detections["boxes"], labels=captions, colors=box_colours, width=width)
    return picture.permute(1, 2, 0).numpy()


def semantic_mask(logits: Tensor, original: np.ndarray) -> np.ndarray:
    """Class indices at the original image's size (logits upsampled bilinearly, then argmax)."""
    scores = F.interpolate(logits[None].float(), size=original.shape[:2], mode="bilinear", align_corners=False)
    return scores[0].argmax(0).to(torch.uint8).numpy()


def draw_semantic(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Each class present blended in its palette colour; class 0 (VOC's background, black) is left clear."""
    picture = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    present = [k for k in np.unique(mask).tolist() if k != 0]
    if not present:
        return image
    colours = class_colours(num_classes)
    masks = torch.from_numpy(np.stack([mask == k for k in present]))
    picture = draw_segmentation_masks(picture, masks, alpha=MASK_ALPHA, colors=[colours[k] for k in present])
    return picture.permute(1, 2, 0).numpy()


def semantic_row(mask: np.ndarray, file_name: str, mask_file: str, class_names: Sequence[str]) -> dict:
    """Per image: the palette PNG written and the fraction of pixels of each class present."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    fractions = {class_names[k]: round(float(c) / mask.size, 6) for k, c in enumerate(counts) if c}
    return {"file_name": file_name, "mask_file": mask_file, "class_fractions": fractions}


def save_picture(picture: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
