"""Panoptic segmentation: a segment map per image, things and stuff, from the PyTorch model only."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor, nn

from tasks.data.detection_dataset import mask_box_xywh
from tasks.data.formats.coco_panoptic import id_to_rgb
from tasks.evaluation import drawing
from tasks.evaluation.predictions import rescale_to_original
from tasks.kinds.base import PictureOptions, PredictedImage, PredictOptions, TaskKind, fitted_picture
from tasks.kinds.detection import detector_normalisation
from tasks.kinds.files import PredictionFiles


class PanopticKind(TaskKind):
    """Predicted by the PyTorch engine: the merge of instances and stuff into one segment map walks
    a data-dependent number of segments, which the traced exporters cannot express."""

    name = "panoptic_segmentation"
    capped = True
    export_refusal = "its merge of instances and stuff into one segment map is not a traceable graph"

    def input_normalisation(self, model: nn.Module) -> tuple[list[float], list[float], dict]:
        return detector_normalisation(model)

    def draw_prediction(self, module: nn.Module, image: Tensor, picture: PictureOptions) -> np.ndarray:
        """The merged segments (the merge has applied its own score threshold)."""
        found = module.detect([image])[0]
        canvas = fitted_picture(image, picture.size)
        panoptic = drawing.fit_item(image.cpu(), {"sem_seg": found["panoptic"].cpu()}, picture.size)[1]["sem_seg"]
        names = [*picture.class_names, *picture.stuff_names]
        labels, scores = found["segment_labels"].cpu(), found["segment_scores"].cpu()
        return drawing.draw_panoptic(canvas, panoptic, labels, names, len(picture.class_names), scores)

    def write(
        self, files: PredictionFiles, item: PredictedImage, metadata: dict, options: PredictOptions
    ) -> list[dict]:
        """The segment map as a COCO panoptic PNG, its overlay, and its ``segments_info`` row (the merge
        chose the segments: ``score_threshold`` does not apply)."""
        found = dict(item.found)
        rescale_to_original([found], [item.model_input], [{"orig_size": item.image.shape[:2]}])
        panoptic = found["panoptic"].numpy()
        things = metadata["class_names"]
        names = [*things, *metadata.get("stuff_names", [])]
        category_ids = [*(metadata.get("category_ids") or range(1, len(things) + 1))]
        category_ids += metadata.get("stuff_category_ids") or range(len(things) + 1, len(names) + 1)
        png = files.name("panoptic", item.relative, ".png")
        save_panoptic_png(panoptic, files.output_dir / png)
        labels, scores = found["segment_labels"], found["segment_scores"]
        picture = drawing.draw_panoptic(item.image, found["panoptic"], labels, names, len(things), scores)
        files.save_overlay(picture, item.relative)
        segments = segments_info(panoptic, labels.tolist(), scores.tolist(), names, category_ids, len(things))
        return [{"file_name": item.relative.as_posix(), "panoptic_file": png.as_posix(), "segments_info": segments}]


def segments_info(
    panoptic: np.ndarray,
    labels: Sequence[int],
    scores: Sequence[float],
    class_names: Sequence[str],
    category_ids: Sequence[int],
    num_things: int,
) -> list[dict]:
    """COCO's panoptic results format for one image: each segment present with its category id and
    name, ``isthing``, score, area and box."""
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
    return segments


def save_panoptic_png(panoptic: np.ndarray, path: Path) -> None:
    """Segment ids as COCO's RGB encoding (id = R + 256 G + 256^2 B)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(id_to_rgb(panoptic)).save(path)
