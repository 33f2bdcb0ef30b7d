"""The pycocotools ground truth of a detection index: what COCO-style evaluation scores a split
against when its annotations are not a COCO json themselves (VOC, and any new format).

Every box of the index is an annotation; boxes marked ``ignored`` (VOC's difficult objects, crowd
regions) are ``iscrowd`` ones, pycocotools' only way to mark an ignore region. With masks in the
index, each annotation carries its segmentation and its area is the mask's; otherwise the box's.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from tasks.data.detection_index import DetectionIndex
from tasks.data.formats.masks import to_rle


def coco_ground_truth_dataset(index: DetectionIndex, category_ids: Sequence[int], class_names: Sequence[str]) -> dict:
    """A COCO-format dict (images, annotations, categories); index label k is ``category_ids[k - 1]``."""
    images, annotations = [], []
    for i in range(len(index)):
        image_id = int(index.image_ids[i])
        images.append(
            {
                "id": image_id,
                "width": int(index.widths[i]),
                "height": int(index.heights[i]),
                "file_name": index.file_name(i),
            }
        )
        start, end = int(index.box_offsets[i]), int(index.box_offsets[i + 1])
        first = len(annotations)
        for box, label, ignored in zip(
            index.boxes[start:end].tolist(),
            index.labels[start:end].tolist(),
            index.ignored[start:end].tolist(),
            strict=True,
        ):
            width, height = box[2] - box[0], box[3] - box[1]
            annotation = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": int(category_ids[label - 1]),
                "bbox": [box[0], box[1], width, height],
                "area": width * height,
                "iscrowd": int(ignored),
            }
            if index.has_masks:
                segmentation = index.segmentation(start + len(annotations) - first)
                if segmentation is not None:
                    rle = to_rle(segmentation, images[-1]["height"], images[-1]["width"])
                    annotation.update(segmentation=segmentation, area=float(mask_utils.area(rle)))
            annotations.append(annotation)
    categories = [{"id": int(c), "name": name} for c, name in zip(category_ids, class_names, strict=True)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_ground_truth(index: DetectionIndex, category_ids: Sequence[int], class_names: Sequence[str]) -> COCO:
    """``coco_ground_truth_dataset`` indexed by pycocotools, in memory."""
    coco = COCO()
    coco.dataset = coco_ground_truth_dataset(index, category_ids, class_names)
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
