"""Prediction rows for ``predictions.json`` and the pictures drawn over each input image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from tasks.data.detection_dataset import mask_box_xywh
from tasks.data.formats.coco_panoptic import id_to_rgb
from tasks.evaluation.coco_eval import to_coco_results, to_segmentation_results
from tasks.evaluation.predictions import rescale_to_original

# overlays keep the input's format where it holds RGB; others (gif, pbm ...) become PNG
OVERLAY_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


def semantic_row(mask: np.ndarray, file_name: str, mask_file: str, class_names: Sequence[str]) -> dict:
    """Per image: the palette PNG written and the fraction of pixels of each class present."""
    counts = np.bincount(mask.ravel(), minlength=len(class_names))
    fractions = {class_names[k]: round(float(c) / mask.size, 6) for k, c in enumerate(counts) if c}
    return {"file_name": file_name, "mask_file": mask_file, "class_fractions": fractions}


def panoptic_row(
    panoptic: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float],
    file_name: str,
    panoptic_file: str,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    num_things: int,
) -> dict:
    """Per image, COCO's panoptic results format: the PNG written (``panoptic_file``) and its
    ``segments_info``, each segment with its category id and name, ``isthing``, score, area and box."""
    segments = []
    for segment_id, (label, score) in enumerate(zip(labels, scores, strict=True), start=1):
        pixels = panoptic == segment_id
        area = int(pixels.sum())
        if not area:
            continue
        segments.append(
            {
                "id": segment_id,
                "category_id": int(category_ids[label - 1]),
                "category_name": class_names[label - 1],
                "isthing": int(label <= num_things),
                "score": round(float(score), 5),
                "area": area,
                "bbox": mask_box_xywh(pixels),
            }
        )
    return {"file_name": file_name, "panoptic_file": panoptic_file, "segments_info": segments}


def save_panoptic_png(panoptic: np.ndarray, path: Path) -> None:
    """Segment ids as COCO's RGB encoding (id = R + 256 G + 256^2 B)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(panoptic)).save(path)


def save_picture(picture: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture).save(path)
