"""Semantic segmentation datasets: VOC2012 layout (optionally SBD-augmented), masks built from COCO
instances (cached), and the built-in shapes in VOC layout, behind one data module interface
(``tasks.data.base.TaskDataModule``). File formats and checks: ``tasks.data.formats.semantic``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tasks.data.augment import Pipeline, longest_side_resize, segmentation_transforms
from tasks.data.base import TaskDataModule
from tasks.data.collate import collate_segmentation
from tasks.data.doctor import ERROR, Finding
from tasks.data.formats.coco import read_categories
from tasks.data.formats.semantic import (
    IGNORE_INDEX,
    SegmentationRecord,
    check_records_once,
    coco_semantic_masks,
    read_mask,
    record_problems,
    voc_segmentation_records,
)
from tasks.data.formats.voc import VOC_CLASSES
from tasks.data.images import MAX_PIXELS, read_rgb

log = logging.getLogger(__name__)


class SegmentationDataset(Dataset):
    """Items: ``(uint8 CHW image, {"mask": int64 HxW, "image_id": int})``.

    With ``eval_size`` only the image is resized (longer side); the mask keeps the file's
    resolution, so metrics are computed at full resolution.
    """

    def __init__(
        self,
        records: list[SegmentationRecord],
        class_names: Sequence[str],
        transforms: Pipeline | None = None,
        eval_size: int | None = None,
        source: str = "",
    ) -> None:
        self.records = records
        self.class_names = list(class_names)
        self.transforms = transforms
        self.resize = longest_side_resize(eval_size, upscale=True)
        self.source = source
        self.max_pixels = MAX_PIXELS  # larger files are refused from their header

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        record = self.records[index]
        image, mask = read_rgb(record.image, self.max_pixels), read_mask(record.mask)
        if self.transforms is not None:
            out = self.transforms(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.resize is not None:
            image = self.resize(image)
        mask = torch.from_numpy(np.ascontiguousarray(mask)).long()
        target = {"mask": mask, "image_id": record.image_id, "file": str(record.image)}  # file: for error reports
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), target


class SegmentationDataModule(TaskDataModule):
    """Mask-aware augmentation and the evaluation inputs of every segmentation dataset; subclasses
    list records (``_records``) and name the classes (``_read_metadata``, without touching the data).

    Preparation builds derived files and checks every image and mask once (remembered in
    ``cache_dir`` until a file changes).
    """

    collate_fn = staticmethod(collate_segmentation)
    drop_last_batch = True  # no batch of one: ASPP's pooled branch normalises over the batch

    def __init__(
        self,
        *,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 4,
        crop_size: int = 513,
        scale_range: Sequence[float] = (0.5, 2.0),
        color_jitter: bool = True,
        eval_size: int | None = None,
        **options,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, **options)
        self.crop_size, self.scale_range, self.color_jitter = crop_size, tuple(scale_range), color_jitter
        self.eval_size = eval_size

    def _records(
        self, split: str, *, build: bool
    ) -> tuple[list[SegmentationRecord], list[str], str]:  # pragma: no cover
        """Records, class names and a description of ``split``; ``build``: derived files may be written."""
        raise NotImplementedError

    def _read_metadata(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prepare(self) -> None:
        for split in ("train", "val"):
            records, names, source = self._records(split, build=True)
            if not records:
                raise ValueError(f"{source} lists no images")
            good = self._good_records(records, source, report=True)
            check_records_once(good, len(names), source, self.cache_dir)

    def _good_records(
        self, records: list[SegmentationRecord], source: str, *, report: bool
    ) -> list[SegmentationRecord]:
        keep = self.good_positions([(record.image, None, "") for record in records], source, report=report)
        return [records[i] for i in keep]

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        """The dataset doctor's report: every problem of both splits, nothing raised."""
        findings, class_names = [], []
        for split in ("train", "val"):
            try:
                records, class_names, source = self._records(split, build=True)
            except (FileNotFoundError, ValueError) as err:
                findings.append(Finding(ERROR, "layout", str(err)))
                continue
            problems = record_problems(records, len(class_names), decode=read_images, max_pixels=max_pixels)
            findings += [Finding(ERROR, "segmentation file", f"{source}: {problem}") for problem in problems]
        return findings, class_names

    def _setup(self) -> None:
        transforms = segmentation_transforms(
            train=True,
            crop_size=self.crop_size,
            scale_range=self.scale_range,
            color_jitter=self.color_jitter,
            fill_mask=IGNORE_INDEX,
        )
        for split in ("train", "val"):
            records, names, source = self._records(split, build=False)
            records = self._good_records(records, source, report=False)
            train = split == "train"
            dataset = SegmentationDataset(
                records, names, transforms if train else None, None if train else self.eval_size, source
            )
            dataset.max_pixels = self.max_pixels
            setattr(self, f"{split}_set", dataset)

    @cached_property
    def class_names(self) -> list[str]:
        return list(self._read_metadata())

    def inference_preprocessing(self) -> dict:
        return {"resize_longest": self.eval_size, "upscale": True}  # LongestMaxSize enlarges too

    def evaluation_inputs(self) -> dict:
        """What a segmentation evaluator needs: the class names (mask values 0..K-1) and the ignored value."""
        return {"class_names": self.class_names, "ignore_index": IGNORE_INDEX}


class VocSegDataModule(SegmentationDataModule):
    """VOC2012 segmentation layout under ``root`` (the VOCdevkit folder); ``use_sbd`` trains on
    ``SegmentationClassAug`` with ``train_aug.txt`` when present (validation images left out)."""

    def __init__(
        self,
        root: str | Path,
        *,
        train_years: Sequence[str | int] = (2012,),
        train_split: str = "train",
        val_years: Sequence[str | int] = (2012,),
        val_split: str = "val",
        class_names: Sequence[str] = ("background", *VOC_CLASSES),
        use_sbd: bool = True,
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        self.splits = {"train": (list(train_years), train_split), "val": (list(val_years), val_split)}
        self.voc_class_names = list(class_names)
        self.use_sbd = use_sbd

    def _read_metadata(self) -> list[str]:
        return list(self.voc_class_names)

    def _records(self, split: str, *, build: bool) -> tuple[list[SegmentationRecord], list[str], str]:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected a VOCdevkit folder holding VOC<year>/JPEGImages, "
                "VOC<year>/SegmentationClass and VOC<year>/ImageSets/Segmentation"
            )
        years, image_set = self.splits[split]
        exclude: frozenset[str] = frozenset()
        if split == "train":  # never train on a validation image (SBD's list overlaps VOC val)
            val_years, val_set = self.splits["val"]
            val_records = voc_segmentation_records(self.root, val_years, val_set, use_sbd=False)
            exclude = frozenset(r.image.stem for r in val_records)
        records = voc_segmentation_records(self.root, years, image_set, use_sbd=self.use_sbd, exclude=exclude)
        return records, self.voc_class_names, f"{self.root} VOC{'+'.join(map(str, years))} {image_set}"


class CocoSegDataModule(SegmentationDataModule):
    """Semantic masks built from COCO instances (``categories``: ``all`` or ``voc``), cached under
    ``cache_dir`` (by default ``root/semantic_masks``) by ``prepare_data``, in ``mask_workers``
    processes (default: one per CPU)."""

    def __init__(
        self,
        root: str | Path,
        *,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        categories: str = "all",
        cache_dir: str | Path | None = None,
        mask_workers: int | None = None,
        **options,
    ) -> None:
        self.root = Path(root).expanduser()
        super().__init__(cache_dir=cache_dir or self.root / "semantic_masks", **options)
        self.splits = {"train": (train_images, train_annotations), "val": (val_images, val_annotations)}
        if categories not in ("all", "voc"):
            raise ValueError(f"categories={categories!r} must be 'all' or 'voc'")
        self.categories = categories
        self.mask_workers = mask_workers or os.cpu_count() or 1

    def _paths(self, split: str) -> tuple[Path, Path]:
        images, annotations = (self.root / p for p in self.splits[split])
        for path, what in ((annotations, "instances json"), (images, "image folder")):
            if not path.exists():
                raise FileNotFoundError(f"{what} {path} not found (dataset.root={self.root})")
        return images, annotations

    def _read_metadata(self) -> list[str]:
        if self.categories == "voc":
            return ["background", *VOC_CLASSES]
        _, names = read_categories(self._paths("val")[1])
        return ["background", *names]

    def _records(self, split: str, *, build: bool) -> tuple[list[SegmentationRecord], list[str], str]:
        images, annotations = self._paths(split)
        folder = self.cache_dir / f"{split}_{self.categories}"
        records, names = coco_semantic_masks(
            images, annotations, folder, self.categories, build=build, workers=self.mask_workers
        )
        return records, names, str(annotations)
