"""LightningDataModules for detection: COCO-format data and PASCAL VOC behind one interface."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import albumentations as A

from tasks.data.base import TaskDataModule
from tasks.data.detection_dataset import DetectionDataset, collate_detection
from tasks.data.detection_transforms import RESIZING_PRESETS, detection_transforms
from tasks.data.doctor import ERROR, Finding
from tasks.data.formats.coco import CocoDetection, inspect_coco, read_categories, read_instances
from tasks.data.formats.voc import VOC_CLASSES, VocDetection, inspect_voc
from tasks.data.images import MAX_PIXELS
from tasks.data.sampling import aspect_ratio_groups
from tasks.data.shapes import SHAPE_CLASSES, ensure_shapes, split_spec


class DetectionDataModule(TaskDataModule):
    """Augmentation and evaluation inputs shared by every detection dataset, on the shared data module.

    Subclasses say how to build a split (``_build_split``) and where the class names come from
    (``_read_metadata``, without preparing or loading the data). ``augment`` names a preset of
    ``tasks.data.detection_transforms``; ``preset_options`` passes its sizes (e.g. ``multiscale_sizes``).
    ``group_aspect_ratio`` batches wide and tall images apart so batches pad little. ``masks``:
    items carry instance masks too (the instance segmentation task asks for them).
    """

    collate_fn = staticmethod(collate_detection)

    def __init__(
        self,
        *,
        batch_size: int = 2,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        augment: str = "hflip",
        resize_longest: int | None = None,
        preset_options: dict | None = None,
        group_aspect_ratio: bool = False,
        masks: bool = False,
        **options,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, **options)
        self.masks = masks
        self.augment = augment
        self.resize_longest = resize_longest
        self.preset_options = dict(preset_options or {})
        self.group_aspect_ratio = group_aspect_ratio

    @property
    def resizes_training_images(self) -> bool:
        """True when the training preset chooses image sizes itself (the detector must not resize again)."""
        return self.augment in RESIZING_PRESETS

    def model_metadata(self) -> dict:
        return {**super().model_metadata(), "resize_in_training": not self.resizes_training_images}

    def inference_preprocessing(self) -> dict:
        return {"resize_longest": self.resize_longest, "upscale": False}  # ShrinkLongest never enlarges

    def _build_split(
        self, split: str, transforms: A.Compose | None, *, prepared: bool
    ) -> DetectionDataset:  # pragma: no cover - abstract
        """The dataset of ``split`` (its annotations checked; its image files are checked by the caller);
        ``prepared``: ``prepare_data`` already indexed it."""
        raise NotImplementedError

    def _checked_split(self, split: str, transforms: A.Compose | None, *, prepared: bool) -> DetectionDataset:
        """``split`` without its bad image files, or a stop naming them (``keep_good_images``).

        The check runs in ``prepare_data`` (one process, reported there); the other processes read
        its remembered results in ``setup`` and leave out the same files.
        """
        dataset = self._build_split(split, transforms, prepared=prepared)
        index = dataset.index
        items = [
            (
                dataset.image_root / index.file_name(i),
                (int(index.widths[i]), int(index.heights[i])),
                f" (image_id {index.image_ids[i]})",
            )
            for i in range(len(index))
        ]
        keep = self.good_positions(items, f"{dataset.source} ({split})", report=not prepared)
        if len(keep) < len(index):
            dataset.index = index.select(keep)
        dataset.max_pixels = self.max_pixels
        return dataset

    def _read_metadata(self) -> tuple[list[int], list[str]]:  # pragma: no cover - abstract
        """Category ids and class names, read without preparing or loading the data."""
        raise NotImplementedError

    def inspect(
        self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS
    ) -> tuple[list[Finding], list[str]]:  # pragma: no cover
        """Every doctor finding for both splits, and the class names (abstract)."""
        raise NotImplementedError

    def _transforms(self, train: bool) -> A.Compose | None:
        return detection_transforms(
            self.augment, train=train, resize_longest=self.resize_longest, **self.preset_options
        )

    def _prepare(self) -> None:
        """Index both splits (cached where the format allows) and run the start-up checks, once."""
        for split in ("train", "val"):
            self._checked_split(split, None, prepared=False)

    def _setup(self) -> None:
        self.train_set = self._checked_split("train", self._transforms(train=True), prepared=True)
        self.val_set = self._checked_split("val", self._transforms(train=False), prepared=True)
        for dataset in (self.train_set, self.val_set):
            if (dataset.category_ids, dataset.class_names) != (self.category_ids, self.class_names):
                raise ValueError(
                    f"train and val declare different categories: {dataset.source} has ids {dataset.category_ids} "
                    f"({dataset.class_names}), expected {self.category_ids} ({self.class_names})"
                )

    @cached_property
    def _metadata(self) -> tuple[list[int], list[str]]:
        return self._read_metadata()

    @property
    def class_names(self) -> list[str]:
        return list(self._metadata[1])

    @property
    def category_ids(self) -> list[int]:
        return list(self._metadata[0])

    def evaluation_inputs(self) -> dict:
        """What a detection evaluator needs of the validation split: its ground truth (a function that
        loads it with pycocotools, crowd regions included), category ids and class names."""
        self.setup()
        val = self.val_set
        return {"ground_truth": val.ground_truth, "category_ids": val.category_ids, "class_names": val.class_names}

    def group_ids(self) -> list[int] | None:
        return aspect_ratio_groups(self.train_set.index.aspect_ratios) if self.group_aspect_ratio else None


class CocoDataModule(DetectionDataModule):
    """Train/val splits given as image folders and instances jsons, relative to ``root``
    (absolute paths are taken as they are, so any COCO-format pair works).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        train_images: str = "train2017",
        train_annotations: str = "annotations/instances_train2017.json",
        val_images: str = "val2017",
        val_annotations: str = "annotations/instances_val2017.json",
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser() if root else Path()
        self.splits = {"train": (train_images, train_annotations), "val": (val_images, val_annotations)}

    def _layout(self) -> str:
        return ", ".join(f"{images}/ and {ann}" for images, ann in self.splits.values())

    def _split_paths(self, split: str) -> tuple[Path, Path]:
        images, annotations = (self.root / p for p in self.splits[split])
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected a folder holding {self._layout()}"
            )
        if not annotations.is_file():
            raise FileNotFoundError(
                f"annotation file {annotations} not found (dataset.root={self.root}); expected the {split} "
                f"instances json there (COCO format), or set dataset.{split}_annotations"
            )
        if not images.is_dir():
            raise FileNotFoundError(
                f"image folder {images} not found (dataset.root={self.root}); expected the {split} images "
                f"there, or set dataset.{split}_images"
            )
        return images, annotations

    def _build_split(self, split: str, transforms: A.Compose | None, *, prepared: bool) -> DetectionDataset:
        images, annotations = self._split_paths(split)
        return CocoDetection(
            images, annotations, transforms, cache_dir=self.cache_dir, check_images=False, masks=self.masks
        )

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        """From the validation json (the smaller one; setup checks that training agrees)."""
        return read_categories(self._split_paths("val")[1])

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        findings, class_names = [], []
        for split in self.splits:
            try:
                images, annotations = self._split_paths(split)
                dataset = read_instances(annotations, keep_segmentation=self.masks)
            except (FileNotFoundError, ValueError) as err:
                findings.append(Finding(ERROR, "layout", str(err)))
                continue
            options = {"read_images": read_images, "max_pixels": max_pixels, "masks": self.masks}
            findings += inspect_coco(dataset, images, str(annotations), **options)
            categories = sorted(dataset.get("categories", []), key=lambda c: c["id"])
            class_names = class_names or [c["name"] for c in categories]
        return findings, class_names


class VocDataModule(DetectionDataModule):
    """PASCAL VOC under ``root`` (the ``VOCdevkit`` folder), e.g. VOC07+12 trainval / VOC07 test.

    Reports VOC07 11-point and VOC2010+ area mAP next to the COCO-style stats.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        train_years: Sequence[str | int] = (2007, 2012),
        train_split: str = "trainval",
        val_years: Sequence[str | int] = (2007,),
        val_split: str = "test",
        class_names: Sequence[str] = VOC_CLASSES,
        use_difficult: bool = False,
        **options,
    ) -> None:
        super().__init__(**options)
        self.root = Path(root).expanduser()
        self.splits = {"train": (list(train_years), train_split), "val": (list(val_years), val_split)}
        self.voc_class_names = list(class_names)
        self.use_difficult = use_difficult

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        return list(range(1, len(self.voc_class_names) + 1)), list(self.voc_class_names)

    def _build_split(self, split: str, transforms: A.Compose | None, *, prepared: bool) -> DetectionDataset:
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"dataset.root={self.root} does not exist; expected a VOCdevkit folder holding "
                "VOC<year>/Annotations, VOC<year>/JPEGImages and VOC<year>/ImageSets/Main"
            )
        if self.masks:
            raise ValueError(
                "PASCAL VOC detection data (dataset=voc) carries no instance masks; instance segmentation "
                "reads COCO-format instances jsons with polygons or RLE (dataset=coco or dataset=coco_custom)"
            )
        years, image_set = self.splits[split]
        # difficult objects are never trained on in evaluation splits; they are ignore regions there
        use_difficult = self.use_difficult and split == "train"
        return VocDetection(
            self.root,
            years,
            image_set,
            transforms,
            class_names=self.voc_class_names,
            use_difficult=use_difficult,
            check_images=False,
        )

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS) -> tuple[list[Finding], list[str]]:
        findings = []
        for years, image_set in self.splits.values():
            findings += inspect_voc(
                self.root, years, image_set, self.voc_class_names, read_images=read_images, max_pixels=max_pixels
            )
        return findings, self.voc_class_names

    def evaluation_inputs(self) -> dict:
        """Also each image's boxes with VOC's difficult flags: VOC AP is reported next to COCO's stats."""
        return {**super().evaluation_inputs(), "voc_ground_truth": self.val_set.voc_ground_truth}


class ShapesDataModule(CocoDataModule):
    """The COCO data module over the generated shapes folder (generated on first use, by
    ``prepare_data``: on one process while the others wait).

    Keyword options named like ``ShapesSpec`` fields (``num_train``, ``image_size``, ``seed``, ...)
    set the generation; the others go to ``CocoDataModule``.
    """

    def __init__(self, root: str | Path, **options) -> None:
        self.spec, loader_options = split_spec(options)
        super().__init__(root, **loader_options)

    def _read_metadata(self) -> tuple[list[int], list[str]]:
        return list(range(1, len(SHAPE_CLASSES) + 1)), list(SHAPE_CLASSES)

    def prepare_data(self) -> None:
        ensure_shapes(self.root, self.spec)
        super().prepare_data()

    def inspect(self, *, read_images: bool = True, max_pixels: int = MAX_PIXELS):
        ensure_shapes(self.root, self.spec)
        return super().inspect(read_images=read_images, max_pixels=max_pixels)
