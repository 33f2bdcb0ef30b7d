"""The item format every detection dataset shares, whatever its annotation format."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision.ops import masks_to_boxes

from heads.ignore_regions import IGNORE_KEY
from tasks.data.augment import Pipeline
from tasks.data.detection_index import DetectionIndex, ImageRecord, IndexRecords
from tasks.data.formats.masks import decode_masks
from tasks.data.images import MAX_PIXELS, read_rgb

__all__ = ["DetectionDataset", "ImageRecord", "clip_boxes", "collate_detection"]


def clip_boxes(boxes: np.ndarray, width, height) -> tuple[np.ndarray, np.ndarray, int]:
    """Clip xyxy boxes to their image (``width``/``height``: one size, or one per box); returns
    (clipped boxes, mask of boxes at least one pixel wide and high, number of boxes that clipping
    changed)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    width, height = np.broadcast_to(width, len(boxes)), np.broadcast_to(height, len(boxes))
    clipped = np.clip(boxes, 0, np.stack([width, height, width, height], axis=1))
    keep = (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    changed = int((np.any(clipped != boxes, axis=1) & keep).sum())
    return clipped.astype(np.float32), keep, changed


class DetectionDataset(Dataset):
    """Items are ``(uint8 CHW image, target)`` with target keys ``boxes`` (xyxy), ``labels``
    (1..K), ``image_id`` and ``orig_size`` (h, w of the file on disk); with an index that has
    masks, also ``masks`` (N x H x W uint8, one per box, moved by the same augmentation).

    ``category_ids[label - 1]`` is the annotation file's id of label ``label``.
    ``ground_truth()`` builds the pycocotools ground truth that COCO-style evaluation scores
    against; only the process that evaluates calls it, and the training split never does.
    """

    def __init__(
        self,
        index: DetectionIndex,
        image_root: Path,
        *,
        category_ids: Sequence[int],
        class_names: Sequence[str],
        ground_truth: Callable[[], COCO],
        transforms: Pipeline | None = None,
        source: str = "",
    ) -> None:
        self.index = index
        self.image_root = Path(image_root)
        self.category_ids = list(category_ids)
        self.class_names = list(class_names)
        self.ground_truth = ground_truth
        self.transforms = transforms
        self.source = source
        self.max_pixels = MAX_PIXELS  # larger files are refused from their header

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    @cached_property
    def records(self) -> IndexRecords:
        return IndexRecords(self.index, self.image_root)

    def __len__(self) -> int:
        return len(self.index)

    def item_classes(self) -> list[tuple[int, ...]]:
        """The labels of the objects trained on in each image (repeat-factor sampling reads them)."""
        index, trained = self.index, ~np.asarray(self.index.ignored)
        labels = np.asarray(index.labels)
        return [
            tuple(sorted(set(labels[start:end][trained[start:end]].tolist())))
            for start, end in zip(index.box_offsets[:-1], index.box_offsets[1:], strict=True)
        ]

    def read(self, index: int) -> tuple[ImageRecord, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Item ``index`` as the file holds it: (record, HxWx3 image, boxes, labels, masks or None)."""
        record = self.index.record(index, self.image_root)
        image = self.read_image(record)
        masks = None if record.segmentations is None else decode_masks(record.segmentations, *image.shape[:2])
        return record, image, record.boxes, record.labels, masks

    def read_image(self, record: ImageRecord) -> np.ndarray:
        """The record's HxWx3 image, or an error naming its file and image id."""
        try:
            return read_rgb(record.path, self.max_pixels)
        except (OSError, ValueError) as err:
            raise OSError(f"cannot read image {record.path} (image_id {record.image_id}): {err}") from err

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.item(*self.read(index))

    def item(
        self,
        record: ImageRecord,
        image: np.ndarray,
        boxes,
        labels,
        masks,
        *,
        semantic: np.ndarray | None = None,
        ignore: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, dict]:
        """The augmented item of an image read by ``read`` (or a part of one: a tile). ``semantic``: a
        class per pixel (panoptic data), moved with the image as ``sem_seg`` (``semantic_target`` of
        the format turns it into training classes). ``ignore``: xyxy ignore regions (an object a tile
        cuts too much to train on), moved with the image as ``ignore_boxes`` (``heads.ignore_regions``)."""
        if self.transforms is not None:
            image, boxes, labels, masks, semantic, ignore = self._augment(image, boxes, labels, masks, semantic, ignore)
        target = {
            "boxes": torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4)),
            "labels": torch.as_tensor(np.asarray(labels, dtype=np.int64)),
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
            "file": str(record.path),  # named in error reports
        }
        if masks is not None:
            target["masks"] = torch.from_numpy(np.ascontiguousarray(masks))
        if semantic is not None:
            target["sem_seg"] = torch.from_numpy(self.semantic_target(np.asarray(semantic)))
        if ignore is not None:
            target[IGNORE_KEY] = torch.as_tensor(np.asarray(ignore, dtype=np.float32).reshape(-1, 4))
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), target

    @staticmethod
    def semantic_target(semantic: np.ndarray) -> np.ndarray:
        """The per-pixel training classes of a stored semantic map (formats that carry one say how)."""
        return semantic.astype(np.int64)

    def _augment(self, image: np.ndarray, boxes, labels, masks: np.ndarray | None, semantic=None, ignore=None) -> tuple:
        """The pipeline on image, boxes, masks and ignore regions together. A box the augmentation drops
        takes its mask with it (``box_ids`` says which boxes survived), and a box whose mask left the image
        goes too. With masks, boxes are then the masks' own extents: a crop that cuts an object leaves its
        box around the visible part, not around the cut rectangle of the old box. Ignore regions travel
        as boxes after the objects' (``box_ids`` from ``len(boxes)`` on)."""
        count = len(boxes)
        regions = np.zeros((0, 4)) if ignore is None else np.asarray(ignore, np.float64).reshape(-1, 4)
        data = {
            "image": image,
            "bboxes": np.concatenate([np.asarray(boxes, np.float64).reshape(-1, 4), regions]),
            "labels": np.concatenate([np.asarray(labels, np.int64).reshape(-1), np.zeros(len(regions), np.int64)]),
            "box_ids": np.arange(count + len(regions)),
        }
        if masks is not None and len(masks):
            data["masks"] = masks
        if semantic is not None:
            data["mask"] = semantic  # padding fills with 0, which formats keep for void
        out = self.transforms(**data)
        image, ids = out["image"], np.asarray(out["box_ids"], np.int64)
        moved, moved_labels = np.asarray(out["bboxes"], np.float64).reshape(-1, 4), np.asarray(out["labels"], np.int64)
        objects = ids < count
        boxes, labels, kept = moved[objects], moved_labels[objects], ids[objects]
        ignore = None if ignore is None else moved[~objects]
        semantic = None if semantic is None else np.asarray(out["mask"])
        if masks is None:
            return image, boxes, labels, None, semantic, ignore
        if not len(masks):
            return image, boxes, labels, np.zeros((0, *image.shape[:2]), np.uint8), semantic, ignore
        masks = np.asarray(out["masks"])[kept]
        visible = masks.any(axis=(1, 2))
        masks, labels = masks[visible], np.asarray(labels)[visible]
        return image, mask_extents(masks), labels, masks, semantic, ignore


def mask_extents(masks: np.ndarray) -> np.ndarray:
    """(N, 4) float32 xyxy boxes enclosing each non-empty mask, pixel edges included (COCO's convention)."""
    if not len(masks):
        return np.zeros((0, 4), np.float32)
    boxes = masks_to_boxes(torch.from_numpy(masks)).numpy()  # the extreme pixels' indices
    return (boxes + np.array([0, 0, 1, 1])).astype(np.float32)


def mask_box_xywh(mask: np.ndarray) -> list[int]:
    """COCO's ``[x, y, width, height]`` of one non-empty mask, in whole pixels (pixel edges included)."""
    x0, y0, x1, y1 = (int(v) for v in mask_extents(mask[None])[0])
    return [x0, y0, x1 - x0, y1 - y0]


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Keep images as a list: they differ in size and the detector batches them itself."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)
