"""The module's reported COCO stats (boxes and masks) equal pycocotools run directly on the same predictions."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from tasks.data.formats.coco import CocoDataModule, load_coco
from tasks.data.formats.masks import encode_mask
from tasks.evaluation.coco_eval import COCO_STAT_NAMES, coco_stats
from tasks.evaluation.detection_evaluator import detection_evaluator
from tasks.training.detection import DetectionModule
from tasks.training.instance_segmentation import InstanceSegmentationModule
from tests.support import CATEGORY_IDS, pycocotools_stats, random_ground_truth, random_predictions, write_coco_folder


class ReplayDetector(torch.nn.Module):
    """Returns precomputed detections, in the coordinates and labels the model itself would use."""

    def __init__(self, rows: list[dict], images: list[dict]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.queue = [(image, [r for r in rows if r["image_id"] == image["id"]]) for image in images]

    def forward(self, batch: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        out = []
        for tensor in batch:
            image, rows = self.queue.pop(0)
            sx, sy = tensor.shape[-1] / image["width"], tensor.shape[-2] / image["height"]
            boxes = torch.tensor(
                [[x * sx, y * sy, (x + w) * sx, (y + h) * sy] for x, y, w, h in (r["bbox"] for r in rows)],
                dtype=torch.float32,
            ).reshape(-1, 4)
            labels = torch.tensor([CATEGORY_IDS.index(r["category_id"]) + 1 for r in rows], dtype=torch.int64)
            out.append({"boxes": boxes, "labels": labels, "scores": torch.tensor([r["score"] for r in rows])})
        return out

    # heads.protocol.Detector: validation without losses, no cap, no masks, nothing to compile
    detections_per_img, predicts_masks = None, False

    def losses_and_detections(self, images: list[torch.Tensor], targets: list[dict]) -> tuple[None, list[dict]]:
        return None, self(images)

    def trunk(self) -> dict[str, torch.nn.Module]:
        return {}


def test_module_stats_equal_pycocotools(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, annotations = random_ground_truth(rng)
    for split in ("train2017", "val2017"):
        ann_file = write_coco_folder(tmp_path, [dict(i) for i in images], [dict(a) for a in annotations], split)
    rows = random_predictions(rng, images, annotations)
    # images go through a data-side resize, so predictions must be mapped back to the file size
    datamodule = CocoDataModule(tmp_path, batch_size=3, num_workers=0, augment="none", resize_longest=64)
    datamodule.setup()
    module = DetectionModule(
        ReplayDetector(rows, images),
        optimizer=torch.optim.SGD,
        evaluator=detection_evaluator(**datamodule.evaluation_inputs()),
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    reported = trainer.validate(module, datamodule=datamodule, verbose=False)[0]

    stats = pycocotools_stats(load_coco(ann_file), rows)
    assert stats[1] > 0.1  # a non-trivial case
    for name, expected in zip(COCO_STAT_NAMES, stats, strict=True):
        assert reported[f"val/{name}"] == pytest.approx(expected, abs=1e-6), name


def test_no_detections_give_zeros_with_a_warning(tmp_path: Path) -> None:
    ann_file = write_coco_folder(
        tmp_path, [{"id": 1, "width": 32, "height": 32}], [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 10, 10]}]
    )
    with pytest.warns(UserWarning, match="no detections"):
        stats = coco_stats(load_coco(ann_file), [])
    assert stats == dict.fromkeys(COCO_STAT_NAMES, 0.0)


def _rectangle_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


class ReplayMaskDetector(ReplayDetector):
    """Also returns each row's mask (decoded at the file's size) as probabilities at the model's input size."""

    def forward(self, batch: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        pending = [self.queue[i] for i in range(len(batch))]
        out = super().forward(batch)
        for detections, tensor, (image, rows) in zip(out, batch, pending, strict=True):
            masks = [mask_utils.decode(r["segmentation"]) for r in rows]
            full = torch.tensor(np.stack(masks) if masks else np.zeros((0, image["height"], image["width"])))
            size = tuple(tensor.shape[-2:])
            detections["masks"] = F.interpolate(full[:, None].float(), size=size, mode="bilinear") if masks else full
        return out


def test_module_box_and_mask_stats_equal_pycocotools(tmp_path: Path) -> None:
    """Instance segmentation: the reported segm stats are pycocotools' on the written segmentations.json, and
    masks predicted at the model's (smaller) input size are scored in the file's pixels."""
    rng = np.random.default_rng(0)
    images, annotations = random_ground_truth(rng)
    for ann in annotations:
        ann["segmentation"] = _rectangle_polygon(*ann["bbox"])
    for split in ("train2017", "val2017"):
        ann_file = write_coco_folder(tmp_path, [dict(i) for i in images], [dict(a) for a in annotations], split)
    rows = random_predictions(rng, images, annotations)
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    for row in rows:
        polygon = mask_utils.frPyObjects(_rectangle_polygon(*row["bbox"]), *sizes[row["image_id"]])
        row["segmentation"] = encode_mask(mask_utils.decode(mask_utils.merge(polygon)))
    datamodule = CocoDataModule(tmp_path, batch_size=3, num_workers=0, augment="none", resize_longest=64, masks=True)
    datamodule.setup()
    evaluator = detection_evaluator(**datamodule.evaluation_inputs(), iou_types=["bbox", "segm"])
    module = InstanceSegmentationModule(
        ReplayMaskDetector(rows, images), optimizer=torch.optim.SGD, evaluator=evaluator
    )
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    reported = trainer.validate(module, datamodule=datamodule, verbose=False)[0]

    coco_gt = load_coco(ann_file)
    written = module.last_evaluation.files["segmentations.json"]
    assert len(written) == len(rows)
    for name, iou_type, results in (("", "bbox", rows), ("mask_", "segm", written)):
        stats = pycocotools_stats(coco_gt, results, iou_type)
        assert stats[1] > 0.1  # a non-trivial case
        for stat, expected in zip(COCO_STAT_NAMES, stats, strict=True):
            assert reported[f"val/{name}{stat}"] == pytest.approx(expected, abs=1e-6), name + stat
    # the masks went to 64 px and back: the file-size masks score close to the original rows
    assert reported["val/mask_map_50"] == pytest.approx(pycocotools_stats(coco_gt, rows, "segm")[1], abs=0.1)
