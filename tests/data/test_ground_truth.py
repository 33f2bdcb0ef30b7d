"""The ground truth built from a detection index (VOC's, and any format without a COCO json of its
own): every box an annotation, ignored ones as crowd, the dataset's own category ids."""

from __future__ import annotations

import numpy as np

from tasks.data.detection_index import DetectionIndex
from tasks.data.ground_truth import coco_ground_truth


def test_index_to_coco_ground_truth_against_a_hand_written_one() -> None:
    index = DetectionIndex.build(
        [5, 9],
        [40, 30],
        [60, 50],
        ["a.jpg", "sub/b.png"],
        [2, 1],
        np.array([[0, 0, 10, 20], [5, 5, 25, 15], [1, 2, 4, 8]], np.float32),
        np.array([2, 1, 2]),
        np.array([False, True, False]),
    )
    coco = coco_ground_truth(index, category_ids=[3, 7], class_names=["cat", "dog"])
    assert coco.dataset["images"] == [
        {"id": 5, "width": 60, "height": 40, "file_name": "a.jpg"},
        {"id": 9, "width": 50, "height": 30, "file_name": "sub/b.png"},
    ]
    assert coco.dataset["annotations"] == [
        {"id": 1, "image_id": 5, "category_id": 7, "bbox": [0.0, 0.0, 10.0, 20.0], "area": 200.0, "iscrowd": 0},
        {"id": 2, "image_id": 5, "category_id": 3, "bbox": [5.0, 5.0, 20.0, 10.0], "area": 200.0, "iscrowd": 1},
        {"id": 3, "image_id": 9, "category_id": 7, "bbox": [1.0, 2.0, 3.0, 6.0], "area": 18.0, "iscrowd": 0},
    ]
    assert coco.loadCats(coco.getCatIds()) == [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    assert coco.getAnnIds(imgIds=[5], iscrowd=False) == [1]  # pycocotools sees the ignore region
