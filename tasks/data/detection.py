"""LightningDataModules for detection: COCO-format data and PASCAL VOC behind one interface."""

from __future__ import annotations

import logging
from functools import cached_property

import numpy as np

from tasks.data.augment import RESIZING_PRESETS, Pipeline, detection_transforms
from tasks.data.base import TaskDataModule
from tasks.data.detection_dataset import DetectionDataset, collate_detection
from tasks.data.doctor import Finding
from tasks.data.images import MAX_PIXELS
from tasks.data.sampling import aspect_ratio_groups, repeat_factors
from tasks.data.tiling import TiledDataset, TileOptions

log = logging.getLogger(__name__)


class DetectionDataModule(TaskDataModule):
    """Augmentation and evaluation inputs shared by every detection dataset, on the shared data module.

    Subclasses say how to build a split (``_build_split``) and where the class names come from
    (``_read_metadata``, without preparing or loading the data). ``tile`` (``size``, ``overlap``,
    ``min_visible``, ``keep_empty``; ``size`` null: off) trains on tiles of the images at full
    resolution (``tasks.data.tiling``); evaluation images then keep their full resolution too.
    ``repeat_threshold`` (e.g. 0.001): LVIS's repeat-factor sampling for rare classes.
    ``augment`` names a preset of ``tasks.data.augment``; ``preset_options`` passes its
    sizes (e.g. ``multiscale_sizes``).
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
        tile: dict | None = None,
        repeat_threshold: float | None = None,
        **options,
    ) -> None:
        super().__init__(batch_size=batch_size, val_batch_size=val_batch_size, num_workers=num_workers, **options)
        tile = dict(tile or {})
        self.tile = TileOptions(**tile) if tile.get("size") else None
        self.repeat_threshold = repeat_threshold
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
        """Trained on tiles: full resolution, and the tile size (predict slices images by it)."""
        if self.tile is not None:
            return {"resize_longest": None, "upscale": False, "tile_size": self.tile.size}
        return {"resize_longest": self.resize_longest, "upscale": False}  # ShrinkLongest never enlarges

    def _build_split(
        self, split: str, transforms: Pipeline | None, *, prepared: bool
    ) -> DetectionDataset:  # pragma: no cover - abstract
        """The dataset of ``split`` (its annotations checked; its image files are checked by the caller);
        ``prepared``: ``prepare_data`` already indexed it."""
        raise NotImplementedError

    def _checked_split(self, split: str, transforms: Pipeline | None, *, prepared: bool) -> DetectionDataset:
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

    def _transforms(self, train: bool) -> Pipeline | None:
        # on tiles, evaluation images keep their full resolution: sliced inference cuts them as training did
        resize_longest = None if self.tile is not None and not train else self.resize_longest
        return detection_transforms(self.augment, train=train, resize_longest=resize_longest, **self.preset_options)

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
        if self.tile is not None:
            self.train_set = TiledDataset(self.train_set, self.tile, seed=self.sampling_seed)
            log.info(
                "training on %d tiles of %d px (overlap %.0f%%) cut from %d images",
                len(self.train_set), self.tile.size, 100 * self.tile.overlap, len(self.train_set.dataset),
            )  # fmt: skip

    def repeat_factors(self) -> np.ndarray | None:
        """LVIS's repeat-factor sampling over the training items (images or tiles) when
        ``repeat_threshold`` is set: images of rare classes appear more often in each epoch."""
        if not self.repeat_threshold:
            return None
        factors = repeat_factors(self.train_set.item_classes(), self.repeat_threshold)
        log.info(
            "repeat-factor sampling (dataset.repeat_threshold=%s): %d samples an epoch from %d items, "
            "each repeated 1 to %.2f times",
            self.repeat_threshold, round(factors.sum()), len(factors), factors.max(),
        )  # fmt: skip
        return factors

    def file_dataset(self, split: str) -> DetectionDataset:
        """Whole images, also when training on tiles."""
        dataset = super().file_dataset(split)
        return dataset.dataset if isinstance(dataset, TiledDataset) else dataset

    def training_index(self):
        """The training split's index (of whole images, also when training on tiles)."""
        self.setup()
        return self.file_dataset("train").index

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
        if not self.group_aspect_ratio:
            return None
        tiled = self.tile is not None
        return aspect_ratio_groups(self.train_set.aspect_ratios if tiled else self.train_set.index.aspect_ratios)
