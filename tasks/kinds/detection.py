"""Detection and instance segmentation: boxes, labels, scores (and mask probabilities) per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor, nn

from tasks.evaluation import drawing
from tasks.evaluation.coco_eval import to_coco_results, to_segmentation_results
from tasks.evaluation.predictions import rescale_to_original
from tasks.kinds.base import PictureOptions, PredictedImage, PredictOptions, TaskKind
from tasks.kinds.files import PredictionFiles


class DetectorGraph(nn.Module):
    """One image (3 x H x W) in; boxes (xyxy, the input's pixels), labels (1..K), scores and, for
    Mask R-CNN, mask probabilities (N x 1 x H x W) out."""

    input_name = "image"

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector
        self.output_names = ["boxes", "labels", "scores"] + (["masks"] if detector.predicts_masks else [])

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        detections = self.detector([image])[0]
        return tuple(detections[name] for name in self.output_names)


class DetectionKind(TaskKind):
    """A detector takes a list of images (each its own size) and returns detections per image; an
    exported one takes one image a call. Boxes of tiles merge (``sliceable``) for plain detection."""

    capped = True

    def __init__(self, name: str, *, sliceable: bool = False) -> None:
        self.name, self.sliceable = name, sliceable

    def graph(self, model: nn.Module) -> nn.Module:
        return DetectorGraph(model).eval()

    def input_normalisation(self, model: nn.Module) -> tuple[list[float], list[float], dict | None]:
        return detector_normalisation(model)

    def dynamic_axes(self, graph: nn.Module) -> dict[str, dict[int, str]]:
        axes = {graph.input_name: {1: "height", 2: "width"}}
        axes.update({name: {0: "detections"} for name in ("boxes", "labels", "scores")})
        if "masks" in graph.output_names:
            axes["masks"] = {0: "detections", 2: "height", 3: "width"}
        return axes

    def draw_prediction(self, module: nn.Module, image: Tensor, picture: PictureOptions) -> np.ndarray:
        found = module.detect([image])[0]
        keep = found["scores"] >= picture.score_threshold
        found = {name: value[keep].cpu() for name, value in found.items()}
        if "masks" in found:
            found["masks"] = found["masks"][:, 0]  # N x H x W, as ground truth masks, to be resized alike
        chw = drawing.as_uint8_chw(image)
        fitted, found = drawing.fit_item(chw, found, picture.size)
        if "masks" in found:
            found["masks"] = found["masks"][:, None]
        return drawing.draw_detections(fitted.permute(1, 2, 0).numpy(), found, picture.class_names, mask_threshold=0.5)

    def write(
        self, files: PredictionFiles, item: PredictedImage, metadata: dict, options: PredictOptions
    ) -> list[dict]:
        names = metadata["class_names"]
        detections = kept_detections(item.found, item.model_input, item.image, options.score_threshold)
        files.save_overlay(
            drawing.draw_detections(item.image, detections, names, options.mask_threshold), item.relative
        )
        ids = metadata.get("category_ids")
        return detection_rows(detections, item.relative.as_posix(), names, ids, options.mask_threshold)


def detector_normalisation(model: nn.Module) -> tuple[list[float], list[float], dict]:
    """torchvision's detectors normalise and resize inside, in their ``transform``."""
    transform = model.transform
    sizes = {"min_size": list(transform.min_size), "max_size": transform.max_size}
    return list(transform.image_mean), list(transform.image_std), sizes


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
